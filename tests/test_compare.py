"""`quickft compare`: two real runs' figures side by side, each ratio recomputed from their summary.json."""

import io
import json
import re

import pytest
from rich.console import Console

from quickft.cli import main
from quickft.compare import main as compare_main
from quickft.compare import ratio_text


def test_compare_two_real_runs(tmp_path, lora_recipe, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(lora_recipe), "max_steps=4", "--output-dir", str(a), "--quiet"]) == 0
    assert main(["run", str(lora_recipe), "max_steps=8", "--output-dir", str(b), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert [r["steps"] for r in rows] == [4, 8]
    assert rows[1]["ratios"]["runtime_s"]["ratio"] == pytest.approx(sb["train"]["runtime_s"] / sa["train"]["runtime_s"])
    assert rows[1]["ratios"]["total_flos"]["ratio"] == pytest.approx(2.0, rel=0.2)
    assert rows[1]["ratios"]["total_flos"]["text"].endswith("× as much")  # work done, neither better nor worse
    assert not re.search("faster|slower", rows[1]["ratios"]["runtime_s"]["text"])  # a longer run is not slower
    assert rows[1]["settings"] == {"max_steps": 8} and rows[0]["settings"] == {"max_steps": 4}
    for row, summary in zip(rows, (sa, sb), strict=True):  # the test-case score and eval loss of each run
        assert row["case_score"] == summary["test_cases"]["score"]
        assert row["eval_loss"] == (summary["evaluation"] or {}).get("final_eval_loss")
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "quickft compare" in table and "tokens/s" in table and "as much" in table
    assert "test cases right" in table and f"{sa['test_cases']['score']:.1%}" in table
    assert re.search(r"differ.*max_steps\s*│\s*4\s*│\s*8", table, re.S)
    assert "different numbers of steps: compare the rates" in table
    assert not re.search("faster|slower", table)


def test_compare_names_runs_by_the_part_of_their_path_that_differs(tmp_path, lora_recipe, capsys):
    """On an 80-column terminal each run's column is headed by its distinct tail, whole; the whole paths are printed
    once above the table. Peak memory says a small difference as a share, never "1.0× less memory"."""
    shared = tmp_path / "a_folder_with_a_long_name_shared_by_every_run" / "experiments"
    a, b = shared / "lora_four_steps", shared / "lora_six_steps"
    for run, steps in ((a, 4), (b, 6)):
        assert main(["run", str(lora_recipe), f"max_steps={steps}", "--output-dir", str(run), "--quiet"]) == 0
    out = io.StringIO()
    rows = compare_main([str(a), str(b)], console=Console(file=out, width=80))
    table = out.getvalue()
    assert "A: lora_four_steps" in table and "B: lora_six_steps" in table and "…" not in table
    assert f"A {a}\n" in table and f"B {b}\n" in table
    assert [r["name"] for r in rows] == ["lora_four_steps", "lora_six_steps"]
    peaks = [json.loads((d / "summary.json").read_text())["memory"]["peak_rss_mb"] for d in (a, b)]
    text = rows[1]["ratios"]["peak_memory_mb"]["text"]
    assert not re.search(r"\b1\.0× (less|more)", text)
    if share := re.fullmatch(r"(\d+)% (less|more) memory", text):
        assert int(share[1]) == pytest.approx(100 * abs(peaks[1] / peaks[0] - 1), abs=0.5)
        assert (share[2] == "less") == (peaks[1] < peaks[0])


def test_memory_ratios_in_words():
    assert ratio_text("peak_memory_mb", "lower", 1000.0, 960.0)[1] == "4% less memory"
    assert ratio_text("peak_memory_mb", "lower", 1000.0, 1040.0)[1] == "4% more memory"
    assert ratio_text("peak_memory_mb", "lower", 1000.0, 250.0)[1] == "4.0× less memory"
    assert ratio_text("peak_memory_mb", "lower", 1000.0, 1002.0)[1] == "same"
    assert ratio_text("total_flos", "neutral", None, 1e9) == (None, "n/a (not measured in both runs)")
    assert ratio_text("case_score", "points", 0.111, 0.097)[1] == "-1.4 points"


def test_compare_refuses_what_is_not_a_finished_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "is not a quickft run directory" in err and "Traceback" not in err
