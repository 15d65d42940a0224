"""Bad input never crashes or destroys anything; Ctrl-C loses nothing; out-of-memory recovers."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quickft.cli import main
from tests.conftest import PROMPT, ROOT, write_recipe


def snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, sums_file):
    """Files for every bad-input case, plus a finished run that no case may touch."""
    d = tmp_path_factory.mktemp("catalog")
    files = {
        "empty": "",
        "latin1": b"Pregunta: \xe9\nRespuesta: x",
        "badjson": '{"instruction": "a", "output": "b"}\n{"instruction": ',
        "noout": '{"instruction": "a", "input": ""}\n',
        "noassistant": '{"messages": [{"role": "user", "content": "hola"}]}\n',
        "badrole": '{"messages": [{"role": "robot", "content": "hola"}, {"role": "assistant", "content": "x"}]}\n',
        "cols": "q,a\nhola,adiós\n",
        "noanswer": "Pregunta: a\nRespuesta: b\n###\nPregunta: sin respuesta\n",
        "long": "\n###\n".join(f"Pregunta: {i}\nRespuesta: {'muy ' * 30}larga" for i in range(5)),
        "emptyanswers": "Pregunta: a\nRespuesta:\n###\nPregunta: b\nRespuesta: \n",
    }
    suffix = {"badjson": ".jsonl", "noout": ".jsonl", "noassistant": ".jsonl", "badrole": ".jsonl", "cols": ".csv"}
    paths = {}
    for name, content in files.items():
        p = d / f"{name}{suffix.get(name, '.txt')}"
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        paths[name] = p
    (d / "noweights").mkdir()
    (d / "noweights" / "config.json").write_text("{}")
    notok = d / "notokenizer"
    notok.mkdir()
    for f in tiny_model_dir.iterdir():
        if not f.name.startswith("tokenizer"):
            (notok / f.name).write_bytes(f.read_bytes())
    (d / "afile").write_text("not a directory")
    (d / "plain").mkdir()
    unfinished = d / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.json").write_text("{}")
    (unfinished / "status.json").write_text('{"status": "failed"}')
    good = write_recipe(
        d / "good.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}),
                        lora=LoRA(r=2, alpha=4), max_seq_length=32, micro_batch_size=8, max_steps=2)
        """,
    )
    finished = d / "finished"
    assert main(["run", str(good), "--output-dir", str(finished), "--quiet"]) == 0
    return {
        "dir": d,
        "paths": paths,
        "model": tiny_model_dir,
        "data": sums_file,
        "good": good,
        "finished": finished,
        "unfinished": unfinished,
    }


def recipe_with(world, name: str, body: str) -> Path:
    header = f"MODEL = {str(world['model'])!r}\nDATA = {str(world['data'])!r}\nP = {PROMPT!r}\n"
    return write_recipe(world["dir"] / f"{name}.py", header + body + "\n")


def data_recipe(world, name: str, extra: str = "") -> Path:
    return recipe_with(
        world,
        f"r_{name}",
        f"recipe = Recipe(model=MODEL, data=Data(path={str(world['paths'][name])!r}, "
        f"prompt_template=P{extra}), max_seq_length=32)",
    )


CASES = {
    # recipe files
    "syntax error": (
        lambda w: [recipe_with(w, "syntax", "recipe = Recipe(\n  model=MODEL,,\n)")],
        r"syntax.py:7: syntax error",
    ),
    "no recipe object": (lambda w: [recipe_with(w, "norecipe", "x = 1")], "no `recipe` defined"),
    "wrong object type": (
        lambda w: [recipe_with(w, "wrongtype", "recipe = dict(model=MODEL)")],
        "is a dict, not a quickft Recipe",
    ),
    "unknown field": (
        lambda w: [recipe_with(w, "unknown", "recipe = Recipe(model=MODEL, data=Data(path=DATA), lr=1e-4)")],
        "Recipe has no field 'lr'",
    ),
    "wrong type": (
        lambda w: [recipe_with(w, "wt", "recipe = Recipe(model=MODEL, data=Data(path=DATA), max_steps='ten')")],
        "max_steps: expected int or None",
    ),
    "negative learning rate": (lambda w: [w["good"], "learning_rate=-0.1"], "learning_rate: must be > 0"),
    "max_steps=0": (lambda w: [w["good"], "max_steps=0"], "max_steps: must be > 0"),
    "LoRA rank 0": (lambda w: [w["good"], "lora.r=0"], "lora.r: LoRA rank must be > 0"),
    "longer than the model supports": (
        lambda w: [w["good"], "max_seq_length=4096"],
        "max_seq_length: 4096 is longer than",
    ),
    "scratch model with LoRA": (
        lambda w: [recipe_with(w, "scr", "recipe = Recipe(model=Scratch(), data=Data(path=DATA), mode='lora')")],
        "a Scratch model has random weights",
    ),
    "early stopping without eval": (lambda w: [w["good"], "eval.patience=2"], "early stopping needs eval loss"),
    "unknown override": (lambda w: [w["good"], "lora.rank=8"], "unknown key 'lora.rank'"),
    "override of the wrong type": (lambda w: [w["good"], "micro_batch_size=big"], "expected an integer"),
    "missing recipe file": (lambda w: [w["dir"] / "nope.py"], "recipe file not found"),
    # data files
    "missing data file": (
        lambda w: [recipe_with(w, "md", "recipe = Recipe(model=MODEL, data=Data(path='missing.txt'))")],
        "data file not found: missing.txt",
    ),
    "empty data file": (lambda w: [data_recipe(w, "empty")], "the file is empty"),
    "not UTF-8": (lambda w: [data_recipe(w, "latin1", ", format='blocks'")], "not UTF-8"),
    "bad JSONL record": (lambda w: [data_recipe(w, "badjson")], "badjson.jsonl:2: invalid JSON Lines record"),
    "Alpaca without output": (lambda w: [data_recipe(w, "noout")], "noout.jsonl:1: 'instruction' without an answer"),
    "chat without assistant": (
        lambda w: [data_recipe(w, "noassistant")],
        "noassistant.jsonl:1: conversation without an assistant",
    ),
    "chat with unknown role": (lambda w: [data_recipe(w, "badrole")], "badrole.jsonl:1: unknown role 'robot'"),
    "CSV without the columns": (lambda w: [data_recipe(w, "cols")], "CSV without prompt and answer columns"),
    "block without Respuesta": (lambda w: [data_recipe(w, "noanswer")], "noanswer.txt:4: block has no 'Respuesta:'"),
    "every example too long": (lambda w: [data_recipe(w, "long")], "no example fits max_seq_length=32"),
    "only empty answers": (lambda w: [data_recipe(w, "emptyanswers")], "every response is empty"),
    # models
    "model directory missing": (lambda w: [w["good"], "model=./no/such/model"], "model directory not found"),
    "model without weights": (lambda w: [w["good"], f"model={w['dir'] / 'noweights'}"], "no weights"),
    "model without tokenizer": (lambda w: [w["good"], f"model={w['dir'] / 'notokenizer'}"], "no tokenizer files"),
    "hub id while offline": (lambda w: [w["good"], "model=someone/not-cached-model"], "is not on this machine"),
    # output directory
    "output directory not writable": (
        lambda w: [w["good"], "--output-dir", str(w["dir"] / "afile" / "run")],
        "cannot write to the output directory",
    ),
    "output directory holds a run": (lambda w: [w["good"], "--output-dir", str(w["finished"])], "never overwrites"),
}
OTHER_VERBS = {
    "chat on a plain directory": (
        lambda w: ["chat", str(w["dir"] / "plain"), "--prompt", "x"],
        "is not a quickft run directory",
    ),
    "eval on an unfinished run": (lambda w: ["eval", str(w["unfinished"])], "the run is failed, not completed"),
    "compare with a missing run": (
        lambda w: ["compare", str(w["finished"]), str(w["dir"] / "gone")],
        "run directory not found",
    ),
    "resume a run without checkpoints": (
        lambda w: ["run", str(w["good"]), "--resume", str(w["unfinished"])],
        "no checkpoint to resume from",
    ),
}


@pytest.mark.parametrize("case", list(CASES) + list(OTHER_VERBS))
def test_bad_input_catalog(world, case, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make, message = CASES.get(case) or OTHER_VERBS[case]
    args = [str(a) for a in make(world)]
    if case in CASES:
        args = ["run", *args] + ([] if "--output-dir" in args else ["--output-dir", str(world["dir"] / "out")])
    before = snapshot(world["finished"])
    started = time.perf_counter()
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, f"{case}: exit {code}\n{err}"
    assert message in err, err
    assert "fix:" in err or "\n  - " in err, "the message says how to fix it"
    assert "Traceback" not in out + err
    assert snapshot(world["finished"]) == before, "an existing run is never modified"
    assert not (world["dir"] / "out").exists(), "bad input leaves no run directory behind"
    assert time.perf_counter() - started < 60


def test_catalog_is_big_enough():
    assert len(CASES) + len(OTHER_VERBS) >= 25


def test_debug_shows_the_traceback(world, capsys):
    assert main(["--debug", "run", str(world["good"]), "lora.r=0"]) == 2
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- interrupts


@pytest.fixture
def long_recipe(tmp_path, tiny_model_dir, sums_file):
    return write_recipe(
        tmp_path / "long.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=0),
                        lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=32, micro_batch_size=4, learning_rate=3e-3,
                        max_steps=400, logging_steps=1, save_every=50, keep_checkpoints=2)
        """,
    )


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "quickft", "run", *map(str, args)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_rows(metrics: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not get going")


def test_sigint_saves_everything_and_resume_matches_an_uninterrupted_run(tmp_path, long_recipe):
    reference = tmp_path / "reference"
    assert main(["run", str(long_recipe), "--output-dir", str(reference), "--quiet"]) == 0

    run_dir = tmp_path / "interrupted"
    proc = start(long_recipe, "--output-dir", run_dir)
    wait_for_rows(run_dir / "metrics.jsonl", 120, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert f"resume with: quickft run {long_recipe} --resume {run_dir}" in err
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert 120 <= stopped_at < 400, "a checkpoint at the step where it stopped"
    assert len(checkpoints) <= 2, "only the newest keep_checkpoints are kept"
    partial = json.loads((run_dir / "summary.json").read_text())
    assert partial["interrupted"] and partial["train"]["steps"] == stopped_at
    assert "quickft report" in out
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "loss.png").is_file(), "an interrupted run has them too"

    assert main(["run", str(long_recipe), "--resume", str(run_dir), "--quiet"]) == 0
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, 401))
    assert rows[-1]["loss"] == pytest.approx(ref_rows[-1]["loss"], abs=1e-4)
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, ref_rows, strict=True)) < 1e-4
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["loss"]["initial"] == rows[0]["loss"] and final["train"]["steps"] == 400, (
        "the report spans the whole run"
    )
    t = final["train"]  # rates are this session's: its steps over its own time, not the whole run's steps
    assert t["session_steps"] == 400 - stopped_at
    assert t["steps_per_s"] == pytest.approx(t["session_steps"] / t["steps_time_s"])
    assert t["tokens_per_s"] == pytest.approx(t["session_tokens"] / t["steps_time_s"])
    # counters go on across the resume: the whole run counted the same tokens as the uninterrupted one
    reference_summary = json.loads((reference / "summary.json").read_text())["train"]
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in ref_rows]
    assert (t["tokens"], t["samples"]) == (reference_summary["tokens"], reference_summary["samples"])
    assert t["session_tokens"] == t["tokens"] - rows[stopped_at - 1]["tokens"]
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed), "the run's clock goes on from the checkpoint"
    from quickft.plots import figures

    marks = [line.get_label() for line in figures(rows)["loss.png"].axes[0].get_lines()]
    assert f"resumed at step {stopped_at}" in marks

    assert main(["run", str(long_recipe), "--resume", str(run_dir)]) == 0  # completed: says so, changes nothing


def test_resume_of_a_completed_run_does_nothing(world, capsys):
    before = snapshot(world["finished"])
    assert main(["run", str(world["good"]), "--resume", str(world["finished"])]) == 0
    assert "already completed: nothing to resume" in capsys.readouterr().out
    assert snapshot(world["finished"]) == before


def test_second_sigint_stops_at_once_without_corrupting_files(tmp_path, long_recipe):
    run_dir = tmp_path / "twice"
    proc = start(long_recipe, "--output-dir", run_dir)
    wait_for_rows(run_dir / "metrics.jsonl", 20, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert not list(run_dir.glob(".*.json.*")), "no temporary files left behind"


def test_sigterm_is_handled_like_ctrl_c(tmp_path, long_recipe):
    run_dir = tmp_path / "term"
    proc = start(long_recipe, "--output-dir", run_dir)
    wait_for_rows(run_dir / "metrics.jsonl", 20, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "SIGTERM" in err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"


def test_status_file_survives_an_interrupt_while_being_written(tmp_path):
    from quickft import rundir

    rundir.set_status(tmp_path, "running")

    class Boom:
        def __str__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rundir.set_status(tmp_path, "completed", note=Boom())  # the interrupt arrives mid-serialization
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "running"
    assert os.listdir(tmp_path) == ["status.json"]


# ---------------------------------------------------------------------------------------------- out of memory


def inject_oom(monkeypatch, at_step: int, when_batch: int):
    """The one fake here: a CUDA out-of-memory error at a chosen step (a real one needs a GPU)."""
    import torch
    import transformers

    original = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        if self.state.global_step == at_step and inputs["input_ids"].shape[0] == when_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)


def test_out_of_memory_without_auto_batch_says_what_to_do(tmp_path, world, monkeypatch, capsys):
    inject_oom(monkeypatch, at_step=1, when_batch=8)
    assert main(["run", str(world["good"]), "--output-dir", str(tmp_path / "oom")]) == 2
    err = capsys.readouterr().err
    assert "out of GPU memory at step 1 (lora, micro-batch 8, max_seq_length 32, fp32)" in err
    fix = err[err.index("fix:") :]
    order = [fix.index(s) for s in ("micro_batch_size", "gradient_checkpointing=true", "mode=qlora", "max_seq_length")]
    assert order == sorted(order) and "Traceback" not in err
    assert json.loads((tmp_path / "oom" / "status.json").read_text())["status"] == "failed"


def test_auto_batch_halves_the_micro_batch_and_carries_on(tmp_path, world, monkeypatch, capsys):
    inject_oom(monkeypatch, at_step=3, when_batch=8)
    run_dir = tmp_path / "auto"
    assert (
        main(
            [
                "run",
                str(world["good"]),
                "auto_batch=true",
                "max_steps=6",
                "logging_steps=1",
                "--output-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed"
    assert status["retries"] == [
        {
            "step": 3,
            "error": "CUDA out of memory. Tried to allocate 2.00 GiB",
            "micro_batch_size": [8, 4],
            "gradient_accumulation": [1, 2],
        }
    ]
    recipe = json.loads((run_dir / "recipe.json").read_text())
    assert (recipe["micro_batch_size"], recipe["gradient_accumulation"]) == (4, 2)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["train"]["steps"] == 6 and s["train"]["samples"] == 6 * 8, "the same effective batch throughout"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("micro", "smaller"), [(8, 4), (6, 3), (3, 1), (5, 1), (9, 3), (2, 1)])
def test_auto_batch_keeps_the_effective_batch_exactly(micro, smaller):
    from quickft.recovery import smaller_micro_batch

    assert smaller_micro_batch(micro) == smaller and micro % smaller == 0  # accumulation x (micro / smaller)


def test_out_of_memory_answering_halves_the_generation_batch_not_the_run(tiny_model_dir, monkeypatch):
    """The one fake: generate() runs out of memory above 2 prompts at a time; the answers come out the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quickft.generation import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    prompts = [f"Pregunta: ¿Cuánto es {a} + 3?\nRespuesta: " for a in range(7)]
    expected = generate(model, tok, prompts, max_new_tokens=3, batch_size=8)
    original, sizes = model.generate, []

    def tight(**batch):
        sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(**batch)

    monkeypatch.setattr(model, "generate", tight)
    assert generate(model, tok, prompts, max_new_tokens=3, batch_size=8) == expected
    assert sizes[:3] == [7, 4, 2] and max(sizes[3:]) <= 2


def test_out_of_memory_in_evaluation_halves_the_eval_batch_only(tmp_path, world, monkeypatch, capsys):
    import torch
    import transformers

    original, seen = transformers.Trainer.evaluate, []

    def evaluate(self, *args, **kwargs):
        seen.append((self.args.per_device_eval_batch_size, self.args.per_device_train_batch_size))
        if self.args.per_device_eval_batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "evaluate", evaluate)
    run_dir = tmp_path / "evaloom"
    args = ["run", str(world["good"]), "eval.every=2", "eval.fraction=0.2", "max_steps=4", "--output-dir", str(run_dir)]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert [s for s in seen[:3]] == [(8, 8), (4, 8), (2, 8)]  # the eval batch halves; the training batch stays
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]


@pytest.mark.parametrize(
    ("message", "oom"),
    [
        ("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 3.94 GiB", True),
        ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
        ("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`", True),
        ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
        ("Error named symbol not found at line 90 in file /src/csrc/ops.cu", False),
        ("CUDA error: an illegal memory access was encountered", False),
    ],
)
def test_out_of_memory_is_recognised_in_the_words_small_cards_fail_with(message, oom):
    """A 4 GB card's first backward usually fails creating a cuBLAS handle, not with torch's OutOfMemoryError."""
    from quickft.errors import is_out_of_memory

    assert is_out_of_memory(RuntimeError(message)) is oom
