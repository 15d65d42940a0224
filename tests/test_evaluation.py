"""Evaluation during training, early stopping, test-case targets and `quickft eval` (with the hints it and `quickft
data` give; `quickft data`'s figures are test_datareport.py's)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quickft.cli import main
from tests.conftest import PROMPT, ROOT, SUMS, write_recipe


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_early_stopping_keeps_the_best_adapter(tmp_path, tiny_model_dir, sums_file, capsys):
    recipe = write_recipe(
        tmp_path / "stop.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=0),
            eval=Eval(every=2, fraction=0.2, patience=1),
            lora=LoRA(r=4, alpha=8), max_seq_length=32, micro_batch_size=8,
            learning_rate=0.3, max_grad_norm=0.0, max_steps=40, logging_steps=1,  # far too high: eval loss must rise
        )
        """,
    )
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    s = summary(run_dir)
    ev = s["evaluation"]
    assert ev["stopped"].startswith("early stop at step") and "early stop" in out
    assert s["train"]["steps"] < 40
    history = ev["history"]
    assert [h["step"] for h in history] == list(range(2, s["train"]["steps"] + 1, 2))
    best = min(history, key=lambda h: h["eval_loss"])
    assert (ev["best_step"], ev["best_eval_loss"]) == (best["step"], best["eval_loss"])
    assert history[-1]["eval_loss"] > ev["best_eval_loss"]
    assert (run_dir / "best" / "adapter_model.safetensors").is_file()
    metric_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in metric_rows if "eval_loss" in r] == history
    assert (run_dir / "loss.png").is_file()

    # the best adapter really is the one with the lowest eval loss: evaluate both saved adapters afresh
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quickft.data.encode import prepare
    from quickft.hardware import Choice
    from quickft.pipeline import make_trainer, read_data, to_dataset
    from quickft.recipe import load_recipe

    r, split = read_data(load_recipe(recipe))
    tok = AutoTokenizer.from_pretrained(run_dir)
    eval_set = to_dataset(prepare(split.eval, tok, r).rows)
    losses = {}
    for name, path in (("best", run_dir / "best"), ("last", run_dir)):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path)
        trainer = make_trainer(
            r, Choice("peft", "", "fp32", False, "cpu"), model, tok, eval_set, tmp_path / name, eval_dataset=eval_set
        )
        losses[name] = trainer.evaluate()["eval_loss"]
    assert losses["best"] == pytest.approx(ev["best_eval_loss"], rel=1e-4)
    assert losses["best"] < losses["last"]


def test_demo_stops_at_its_target_and_eval_agrees(tiny_math_run):
    s = summary(tiny_math_run)
    ev = s["evaluation"]
    assert ev["stopped"].startswith("target reached at step"), ev
    last = ev["history"][-1]
    assert last["case_score"] >= 0.95 and s["train"]["steps"] == last["step"]
    assert s["test_cases"]["score"] == pytest.approx(last["case_score"])
    result = subprocess.run(
        [sys.executable, "-m", "quickft", "eval", str(tiny_math_run), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[:2] == ["loading the model ...", "answering 1000 test cases ..."]
    recomputed = json.loads(result.stdout)
    assert recomputed["n"] == 1000 and recomputed["score"] == pytest.approx(s["test_cases"]["score"])


def test_eval_with_a_cases_file(tiny_math_run, tmp_path, capsys):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "\n".join(
            json.dumps({"instruction": f"¿Cuánto es {a} + {b}?", "output": str(a + b)})
            for a, b in [(23, 45), (10, 10), (51, 38)]
        ),
        encoding="utf-8",
    )
    assert main(["eval", str(tiny_math_run), "--cases", str(cases)]) == 0
    out = capsys.readouterr().out
    assert "of 3 test cases correct (exact match)" in out


@pytest.fixture(scope="module")
def response_run(tmp_path_factory, tiny_model_dir):
    """A short LoRA run on prompt/response records (the keys of many published sets), 4 held out as test cases."""
    tmp = tmp_path_factory.mktemp("response_run")
    records = [{"prompt": f"¿Cuánto es {a} + {b}?", "response": str(a + b)} for a, b in SUMS[:60]]
    data = tmp / "sums.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    recipe = write_recipe(
        tmp / "r.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(data)!r}, prompt_template={PROMPT!r}, holdout=4),
                        lora=LoRA(r=4, alpha=8), max_seq_length=32, micro_batch_size=8, max_steps=2, max_new_tokens=3)
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run", records


def test_eval_reads_a_prompt_response_cases_file_as_the_run_read_its_own(response_run, tmp_path, capsys):
    run_dir, records = response_run
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    held_out = [r for r in records if PROMPT.format(prompt=r["prompt"]) in {s["prompt"] for s in samples}]
    assert len(held_out) == len(samples) == 4
    cases = tmp_path / "held_out.jsonl"
    cases.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held_out), encoding="utf-8")
    assert main(["eval", str(run_dir), "--cases", str(cases), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "--cases: 'prompt' as the prompt, 'response' as the answer" in err
    result = json.loads(out)
    assert result["read_as"] == "--cases: 'prompt' as the prompt, 'response' as the answer"
    by_prompt = {s["prompt"]: s for s in samples}  # the run's own answers to the same prompts, greedy: the same
    assert [(a["reference"], a["answer"]) for a in result["answers"]] == [
        (by_prompt[a["prompt"]]["reference"], by_prompt[a["prompt"]]["answer"]) for a in result["answers"]
    ]
    # keys of its own: named by the settings a recipe takes, given after the run directory
    custom = tmp_path / "propias.csv"
    custom.write_text("pregunta,respuesta\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in held_out))
    assert main(["eval", str(run_dir), "--cases", str(custom), "--json"]) == 2
    assert "data.question_column=" in capsys.readouterr().err
    settings = ["data.question_column=pregunta", "data.answer_column=respuesta"]
    assert main(["eval", str(run_dir), "--cases", str(custom), *settings, "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert [a["answer"] for a in named["answers"]] == [a["answer"] for a in result["answers"]]


def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Cases files and settings eval refuses: (eval's arguments after RUN_DIR, what the message says)."""
    from datasets import Dataset, DatasetDict

    def write(name: str, text: str) -> str:
        (tmp / name).write_text(text, encoding="utf-8")
        return str(tmp / name)

    DatasetDict({"train": Dataset.from_list([{"prompt": "a", "response": "b"}])}).save_to_disk(str(tmp / "dd"))
    (tmp / "plain").mkdir(exist_ok=True)
    return {
        "unknown keys": (["--cases", write("foo.jsonl", '{"foo": 1}\n')], "cannot tell the format"),
        "two pairs fit": (
            ["--cases", write("both.jsonl", '{"question": "q", "answer": "a", "response": "r"}\n')],
            "2 pairs of keys fit",
        ),
        "a prompt without answer": (["--cases", write("q.jsonl", '{"query": "q"}\n')], "without an answer key"),
        "CSV of other columns": (["--cases", write("c.csv", "p,r\nx,y\n")], "CSV without prompt and answer columns"),
        "documents": (["--cases", write("t.jsonl", '{"text": "un documento"}\n')], "no test cases"),
        "not JSON": (["--cases", write("n.json", "Pregunta: a\nRespuesta: b\n")], "not JSON"),
        "a record unlike the first": (
            ["--cases", write("m.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')],
            "m.jsonl:2: record without 'response'",
        ),
        "hub id offline": (["--cases", "org/held-out"], "as a hub dataset id it needs the hub"),
        "plain folder": (["--cases", str(tmp / "plain")], "is a folder, not a data file"),
        "missing split": (["--cases", str(tmp / "dd"), "data.split=test"], "no split 'test'"),
        "a setting eval does not take": (
            ["--cases", write("ok.jsonl", '{"prompt": "a", "response": "b"}\n'), "max_new_tokens=3"],
            "takes only the settings that say how to read the --cases file",
        ),
        "a bad value": (["--cases", str(tmp / "ok.jsonl"), "data.format=yaml"], "data.format='yaml'"),
        "settings without a file": (["data.question_column=pregunta"], "none was given"),
    }


def _named(text: str) -> tuple[set[str], set[str]]:
    """(recipe keys, command-line options) a message names."""
    keys = set(re.findall(r"\b(?:data|eval|lora|grpo|dpo|kto)\.[a-z_]+", text))
    return keys, set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def test_every_hint_names_only_what_the_command_accepts(response_run, tmp_path, capsys, monkeypatch):
    """eval's messages name only eval's options and the reading settings it takes; the same files as a recipe's
    data.test_path name recipe keys `quickft data` takes as overrides."""
    import typer.main

    from quickft.cli import app
    from quickft.evaluate import READING_KEYS
    from quickft.recipe import field_paths

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commands = typer.main.get_command(app).commands
    options = {verb: {o for p in commands[verb].params for o in p.opts if o.startswith("--")} for verb in commands}
    run_dir, _ = response_run
    for case, (args, says) in _bad_cases(tmp_path).items():
        assert main(["eval", str(run_dir), *args]) == 2, case
        err = capsys.readouterr().err
        assert says in err and "fix:" in err and "Traceback" not in err, (case, err)
        keys, flags = _named(err)
        assert keys <= set(READING_KEYS) and flags <= options["eval"], (case, err)
        if args[0] != "--cases" or len(args) > 2 or case == "documents":
            continue  # eval's own settings; documents in data.test_path make no test cases, and no error
        recipe = write_recipe(
            tmp_path / "r.py",
            f"recipe = Recipe(model='m', data=Data(path={str(tmp_path / 'ok.jsonl')!r}, test_path={args[1]!r}))\n",
        )
        assert main(["data", str(recipe)]) == 2, case
        err = capsys.readouterr().err
        keys, flags = _named(err)
        assert keys <= set(field_paths()) and flags <= options["data"], (case, err)
        assert "--cases" not in err, (case, err)


def test_number_match_scores_gsm8k_style_test_cases_read_by_their_keys(tiny_math_run, tmp_path, capsys):
    """Eval.match="number" on SFT test cases whose answers end with GSM8K's "#### N" (data.test_path) or MetaMathQA's
    "The answer is: N" (eval --cases): the demo's model answers a sum with the number alone, and each answer is
    scored right exactly where that number is the final one, recomputed here with a pattern of our own."""

    def gsm8k(a, b):
        return {"question": f"¿Cuánto es {a} + {b}?", "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}

    def metamathqa(a, b):
        return {"query": f"¿Cuánto es {a} + {b}?", "response": f"{a} + {b} = {a + b}. The answer is: {a + b}"}

    def write(name, records):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return str(tmp_path / name)

    held_out = [(23, 45), (10, 10), (51, 38), (7, 8), (40, 59), (66, 21), (12, 34), (88, 11)]
    recipe = write_recipe(
        tmp_path / "gsm.py",
        f"""
        recipe = Recipe(
            model={str(tiny_math_run)!r},
            data=Data(path={write("train.jsonl", [gsm8k(a, b) for a, b in SUMS[:16]])!r},
                      test_path={write("test.jsonl", [gsm8k(a, b) for a, b in held_out])!r}, prompt_template={PROMPT!r}),
            eval=Eval(match="number"), lora=LoRA(r=4, alpha=8), learning_rate=1e-6, max_steps=1, micro_batch_size=8,
            max_seq_length=60, max_new_tokens=4, backend="peft",
        )
        """,
    )
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()

    def recomputed(rows, mark):
        return [
            bool(found := re.search(r"\d+", row["answer"]))
            and found.group() == row["reference"].split(mark)[-1].strip()
            for row in rows
        ]

    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    right = recomputed(samples, "####")
    assert len(samples) == len(held_out) and sum(right) >= 6  # the demo's model gets most sums right
    assert [s["correct"] for s in samples] == right
    scored = summary(run_dir)["test_cases"]
    assert (scored["n"], scored["correct"], scored["match"]) == (len(held_out), sum(right), "number")
    assert not any(s["answer"] == s["reference"] for s in samples)  # an exact match would score none
    cases = write("metamathqa.jsonl", [metamathqa(a, b) for a, b in held_out])
    assert main(["eval", str(run_dir), "--cases", cases, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [a["correct"] for a in result["answers"]] == recomputed(result["answers"], "The answer is:")
    assert [a["answer"] for a in result["answers"]] == [s["answer"] for s in samples]  # the same prompts


def test_number_and_contains_matching():
    from quickft.scoring import first_number, matches

    assert first_number("La respuesta es 1.234,5 euros") == 1234.5 and first_number("x = -3") == -3.0
    assert first_number("0,75") == 0.75 and first_number("sin números") is None
    assert matches("Son 68 manzanas.", "68", "number") and not matches("Son 67.", "68", "number")
    assert matches("El resultado es 68", "resultado es 68", "contains") and not matches("68", "69", "exact")
    gsm8k, metamathqa = "2 + 3 = <<2+3=5>>5 manzanas\n#### 5", "Tiene 2 + 3 = 5.\nThe answer is: 5"
    for reference in (gsm8k, metamathqa):  # the final answer, not the worked solution's first number
        assert matches("5", reference, "number") and matches("#### 5", reference, "number")
        assert not matches("2", reference, "number") and not matches("5", reference, "exact")


@pytest.fixture(scope="module")
def varied_lengths(tmp_path_factory):
    """Answers from 1 to 60 characters: random batches waste much padding, grouped ones little."""
    path = tmp_path_factory.mktemp("varied") / "v.txt"
    path.write_text(
        "\n###\n".join(f"Pregunta: repite {i}\nRespuesta: {'ab ' * (i % 20)}{i}" for i in range(160)), encoding="utf-8"
    )
    return path


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_batching_switch_really_lowers_measured_padding(tmp_path, tiny_model_dir, varied_lengths, batching):
    shares = {}
    for mode in ("padded", batching):
        recipe = write_recipe(
            tmp_path / f"{mode}.py",
            f"""
            recipe = Recipe(model={str(tiny_model_dir)!r},
                            data=Data(path={str(varied_lengths)!r}, prompt_template={PROMPT!r}, holdout=0, batching={mode!r}),
                            lora=LoRA(r=4, alpha=8), max_seq_length=64, micro_batch_size=8, epochs=1, logging_steps=5)
            """,
        )
        assert main(["run", str(recipe), "--output-dir", str(tmp_path / mode), "--quiet"]) == 0
        shares[mode] = summary(tmp_path / mode)["train"]
        # the plan (and so the ETA) counts the sequences the trainer really has: fewer than examples when packed
        assert summary(tmp_path / mode)["model"]["planned_steps"] == shares[mode]["steps"]
    assert shares["padded"]["padding_share"] > 0.2
    assert shares[batching]["padding_share"] < shares["padded"]["padding_share"] / 2
    if batching == "packed":
        assert shares["packed"]["padding_tokens"] == 0
    assert shares[batching]["tokens"] == shares["padded"]["tokens"], "the same real tokens, in fewer padded ones"


def test_demo_plots_its_test_case_score(tiny_math_run):
    import matplotlib.image

    pixels = matplotlib.image.imread(tiny_math_run / "test_cases.png")
    assert pixels.std() > 0.01
