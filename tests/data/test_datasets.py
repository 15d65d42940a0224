"""Data that lives in `datasets` formats: save_to_disk folders, .arrow files, parquet, and hub ids (offline here).

The datasets are made in the tests with `datasets` itself, from the repository's fixtures (the shapes big projects
publish), so what is read back can be compared with the same records read from their JSON files.
"""

from __future__ import annotations

import json

import pytest

from quickft.cli import main
from quickft.data import is_hub_id, read_data
from quickft.errors import UserError
from quickft.recipe import Data
from tests.conftest import PROMPT, ROOT, SUMS, write_recipe

FIXTURES = ROOT / "tests" / "fixtures" / "data"


def records(name: str) -> list[dict]:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines() if line]


@pytest.mark.parametrize(("name", "shape"), [("alpaca_zh.json", "alpaca"), ("sharegpt.json", "sharegpt")])
def test_a_save_to_disk_folder_reads_as_its_json_does(tmp_path, name, shape):
    from datasets import Dataset

    folder = tmp_path / "ds"
    Dataset.from_list(records(name)).save_to_disk(str(folder))
    fmt, examples, _ = read_data(folder, Data(path=str(folder)))
    _, from_json, _ = read_data(FIXTURES / name, Data(path=str(FIXTURES / name)))
    assert fmt == shape and len(examples) == len(from_json)
    for got, want in zip(examples, from_json, strict=True):
        assert (got.prompt, got.response, got.messages) == (want.prompt, want.response, want.messages)
    assert examples[0].where == f"{folder} (row 1)"


def test_a_dataset_dict_reads_the_split_asked_for(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"prompt": f"{a} + {b}", "completion": str(a + b)} for a, b in SUMS[:30]]
    folder = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list(rows[:20]), "test": Dataset.from_list(rows[20:])}).save_to_disk(folder)
    assert len(read_data(folder, Data(path=str(folder)))[1]) == 20
    test = read_data(folder, Data(path=str(folder), split="test"))[1]
    assert [e.prompt for e in test] == [r["prompt"] for r in rows[20:]]
    with pytest.raises(UserError, match=r"no split 'validation' in this dataset \(splits: train, test\)"):
        read_data(folder, Data(path=str(folder), split="validation"))


def test_an_arrow_file_and_a_plain_folder(tmp_path):
    from datasets import Dataset

    table = Dataset.from_list(records("text_corpus.jsonl"))
    table.save_to_disk(str(tmp_path / "ds"))
    arrow = next((tmp_path / "ds").glob("*.arrow"))
    fmt, examples, _ = read_data(arrow, Data(path=str(arrow)))
    assert fmt == "text" and all(e.document for e in examples) and len(examples) == len(table)
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="is a folder, not a data file or a dataset saved with save_to_disk"):
        read_data(tmp_path / "plain", Data(path=str(tmp_path / "plain")))
    (tmp_path / "bad.arrow").write_text("not arrow")
    with pytest.raises(UserError, match="cannot read it as a datasets arrow file"):
        read_data(tmp_path / "bad.arrow", Data(path=str(tmp_path / "bad.arrow")))


def test_hub_ids_are_told_apart_from_missing_files():
    assert is_hub_id("tatsu-lab/alpaca") and is_hub_id("HuggingFaceH4/ultrachat_200k")
    assert not is_hub_id("data/sumas.txt") and not is_hub_id("./org/name") and not is_hub_id("a/b/c")
    assert not is_hub_id("alpaca")


def test_a_hub_dataset_offline_fails_before_anything_loads(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on these machines; the conftest sets it for the session too
    recipe = write_recipe(
        tmp_path / "hub.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path="tatsu-lab/alpaca"), max_steps=2)
        """,
    )
    for verb in ("data", "run"):
        assert main([verb, str(recipe), *(["--output-dir", str(tmp_path / "out")] if verb == "run" else [])]) == 2
        err = capsys.readouterr().err
        assert "data.path 'tatsu-lab/alpaca': no such file here, and as a hub dataset id it needs the hub" in err
        assert "save_to_disk(DIR), then set data.path=DIR" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_save_to_disk_and_parquet_data_train(tmp_path, tiny_model_dir):
    from datasets import Dataset

    rows = [{"question": f"¿Cuánto es {a} + {b}?", "answer": str(a + b)} for a, b in SUMS[:120]]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "sums.parquet"))
    for path in (tmp_path / "ds", tmp_path / "sums.parquet"):
        recipe = write_recipe(
            tmp_path / f"{path.name}.py",
            f"""
            recipe = Recipe(
                model={str(tiny_model_dir)!r}, data=Data(path={str(path)!r}, prompt_template={PROMPT!r}, holdout=2),
                lora=LoRA(r=4, alpha=8), max_seq_length=32, micro_batch_size=8, max_steps=3, logging_steps=1,
                max_new_tokens=3, backend="peft",
            )
            """,
        )
        run = tmp_path / f"run-{path.name}"
        assert main(["run", str(recipe), "--output-dir", str(run), "--quiet"]) == 0
        summary = json.loads((run / "summary.json").read_text())
        assert summary["data"]["read"] == 120 and summary["data"]["kept_for_training"] == 118
        assert json.loads((run / "recipe.json").read_text())["data"]["format"] == "pairs"
