"""`quickft run` end to end on a tiny real model, through the real CLI entry point."""

import json
import os
import subprocess
import sys

import pytest
import torch

from quickft.cli import main
from tests.conftest import ROOT, write_recipe


def run_cli(*args, capsys=None) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


@pytest.fixture
def finished_run(tmp_path, lora_recipe, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("run", str(lora_recipe), "--output-dir", str(run_dir), capsys=capsys)
    assert code == 0, err
    return run_dir, out


def test_run_writes_a_complete_run_directory(finished_run, tiny_model_dir):
    run_dir, out = finished_run
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "recipe.json",
        "backend.json",
        "status.json",
        "metrics.jsonl",
        "summary.json",
        "samples.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    recipe = json.loads((run_dir / "recipe.json").read_text())
    assert recipe["model"] == str(tiny_model_dir) and recipe["lora"]["r"] == 4
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert rows[-1]["loss"] < rows[0]["loss"], "the loss fell"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["prompt"].startswith("Pregunta: ¿Cuánto es") for s in samples)
    assert "test cases (exact)" in out and str(run_dir) in out


def test_end_report_marks_answers_lists_files_and_says_what_to_run_next(finished_run):
    run_dir, out = finished_run
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    marked = [line for line in out.splitlines() if line.startswith(("✓ ", "✗ "))]
    assert marked, out
    for line in marked:
        sample = next(s for s in samples if repr(s["prompt"]) in line)
        assert line.startswith("✓ " if sample["correct"] else "✗ ") and repr(sample["answer"]) in line
        assert (f"(expected {sample['reference']!r})" in line) == (not sample["correct"])
    written = next(line for line in out.splitlines() if line.startswith("written "))
    for name in ("summary.json", "metrics.csv", "loss.png", "adapter_model.safetensors", "samples.jsonl"):
        assert f" {name}" in written and (run_dir / name).is_file(), name
    assert f"quickft chat {run_dir}" in out and f"quickft eval {run_dir}" in out
    assert f"quickft export {run_dir} --to ollama" in out


def test_a_status_line_for_each_phase_comes_before_the_model_loads(lora_recipe, tmp_path):
    """Feedback from the first second: the first lines name what quickft is doing, and the first one is printed
    before torch is even imported (a spy on Reporter.phase records whether it was)."""
    spy = (
        "import sys; import quickft.report as r; phase = r.Reporter.phase\n"
        "def spied(self, text):\n"
        "    print(f'[torch imported: {\"torch\" in sys.modules}]', flush=True)\n"
        "    return phase(self, text)\n"
        "r.Reporter.phase = spied\n"
        "from quickft.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", spy, "run", str(lora_recipe), "--output-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["[torch imported: False]", "reading the recipe and data ..."]
    order = [line for line in lines if line.endswith(" ...")]
    assert order[:2] == ["reading the recipe and data ...", "importing torch and choosing the backend ..."]
    loading = lines.index("loading the model ...")
    assert lines.index("tokenizing the data ...") > loading
    assert lines.index("building the trainer ...") < next(i for i, line in enumerate(lines) if "quickft run" in line)


def test_adapter_loads_with_plain_peft(finished_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = finished_run
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(run_dir)
    batch = tok(["Pregunta: ¿Cuánto es 3 + 4?\nRespuesta: "], return_tensors="pt")
    with torch.no_grad():
        before = base(**batch).logits
    tuned = PeftModel.from_pretrained(base, run_dir)
    with torch.no_grad():
        after = tuned(**batch).logits
    assert not torch.allclose(before, after), "the trained adapter changes the model's output"


def test_lora_training_changes_adapter_but_not_base(tmp_path, lora_recipe):
    """The trainer quickft builds updates only LoRA weights (trl's own test, on our path)."""
    from quickft.backends import load
    from quickft.data import read_examples
    from quickft.data.encode import prepare
    from quickft.hardware import Choice
    from quickft.pipeline import make_trainer, to_dataset
    from quickft.recipe import load_recipe

    recipe = load_recipe(lora_recipe, ["max_steps=3"])
    loaded = load(recipe, Choice("peft", "test", "fp32", False, "cpu"), recipe.model, local=True)
    dataset = to_dataset(prepare(read_examples(recipe.data.path, recipe.data), loaded.tokenizer, recipe).rows)
    trainer = make_trainer(
        recipe, Choice("peft", "test", "fp32", False, "cpu"), loaded.model, loaded.tokenizer, dataset, tmp_path
    )
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    trainer.train()
    after = dict(loaded.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and all(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert trainer.counter.samples == 3 * recipe.micro_batch_size


def test_a_finished_run_is_never_overwritten(tmp_path, lora_recipe, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli("run", str(lora_recipe), "max_steps=2", capsys=capsys)
    assert code == 0 and (tmp_path / "outputs/tiny_lora/summary.json").is_file()
    first = (tmp_path / "outputs/tiny_lora/summary.json").read_text()
    code, out, _ = run_cli("run", str(lora_recipe), "max_steps=2", capsys=capsys)
    assert code == 0 and "outputs/tiny_lora-2" in out
    assert (tmp_path / "outputs/tiny_lora/summary.json").read_text() == first
    # an explicit --output-dir holding a run is refused, and left as it was
    code, _, err = run_cli("run", str(lora_recipe), "--output-dir", "outputs/tiny_lora", capsys=capsys)
    assert code == 2 and "never overwrites" in err and "Traceback" not in err
    assert (tmp_path / "outputs/tiny_lora/summary.json").read_text() == first


@pytest.mark.parametrize(
    ("body", "override", "message"),
    [
        ("recipe = Recipe(model=MODEL, data=Data(path='missing.txt'))", None, "data file not found: missing.txt"),
        ("x = 1", None, "no `recipe` defined"),
        ("recipe = Recipe(model=MODEL, data=Data(path=DATA))", "lora.rank=2", "unknown key 'lora.rank'"),
        (
            "recipe = Recipe(model=MODEL, data=Data(path=DATA), max_steps='ten')",
            None,
            "max_steps: expected int or None",
        ),
        ("recipe = Recipe(model=MODEL, data=Data(path=EMPTY))", None, "the file is empty"),
        ("recipe = Recipe(model=MODEL, data=Data(path=NO_ANSWER))", None, "no_answer.txt:1: block has no 'Respuesta:'"),
        ("recipe = Recipe(model='./no/such/model', data=Data(path=DATA))", None, "model directory not found"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(tmp_path, tiny_model_dir, sums_file, capsys, body, override, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "no_answer.txt").write_text("Pregunta: ¿Cuánto es 1 + 1?\n")
    header = (
        f"MODEL = {str(tiny_model_dir)!r}\nDATA = {str(sums_file)!r}\nEMPTY = {str(tmp_path / 'empty.txt')!r}\n"
        f"NO_ANSWER = {str(tmp_path / 'no_answer.txt')!r}\n"
    )
    recipe = write_recipe(tmp_path / "bad.py", header + body + "\n")
    args = ["run", str(recipe), "--output-dir", str(tmp_path / "out")] + ([override] if override else [])
    code, out, err = run_cli(*args, capsys=capsys)
    assert code == 2
    assert message in err
    assert "fix:" in err or "\n  - " in err, "the message says how to fix it (or lists every problem)"
    assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists(), "bad input creates no run directory"


def test_help_is_fast_and_imports_no_heavy_library():
    heavy = ("torch", "transformers", "trl", "unsloth", "peft")
    code = (
        f"import sys; from quickft.cli import main; main(['--help']); print([m for m in {heavy} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip().endswith("[]")


@pytest.mark.parametrize("verb", ["run", "chat", "eval", "data", "bench", "compare", "export", "doctor"])
def test_every_verb_has_help_with_examples_and_labels_that_say_what_options_take(verb):
    env = dict(os.environ, COLUMNS="120")
    result = subprocess.run(
        [sys.executable, "-m", "quickft", verb, "--help"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0 and "Usage" in result.stdout and f"quickft {verb}" in result.stdout
    examples = result.stdout.split("Examples", 1)[1]
    assert examples.count(f"quickft {verb} ") >= 2, "two or more example commands"
    for label in ("<bool>", "<str>", "<int>", "<float>", "<list[str]>"):
        assert label not in result.stdout, f"{label}: a type name, not what the option takes"
    if verb == "run":
        assert "--resume [RUN_DIR]" in " ".join(result.stdout.split()).replace(" │", "")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run"], "Missing argument 'RECIPE'"),
        (["foo"], "No such command 'foo'"),
        (["run", "--bogus", "recipes/tiny_math.py"], "No such option: --bogus"),
        (["chat"], "Missing argument 'RUN_DIR'"),
        (["bench", "recipes/tiny_math.py", "--steps", "many"], "Invalid value for '--steps'"),
    ],
)
def test_usage_mistakes_exit_2_with_the_usage_line(argv, says):
    result = subprocess.run([sys.executable, "-m", "quickft", *argv], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Usage: quickft" in result.stderr and "--help" in result.stderr
    assert "crashed" not in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_key_suggests_the_closest(lora_recipe, capsys):
    assert main(["run", str(lora_recipe), "learning_rat=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rat'; did you mean learning_rate?" in err


@pytest.mark.parametrize(
    "chosen, flags, says",
    [
        ("fp32", {"bf16": True}, "Unsloth's trainer trains in bf16, not the fp32 quickft chose"),
        ("fp16", {}, "Unsloth's trainer trains in fp32, not the fp16 quickft chose"),
        ("bf16", {"bf16": True}, None),
    ],
)
def test_the_precision_reported_is_the_one_the_trainer_runs(tmp_path, chosen, flags, says):
    """Unsloth's trainer sets its own precision on some cards and models (no GPU here: the arguments are TRL's real
    SFTConfig, set as Unsloth's trainer leaves them); the choice the report and backend.json take is read back."""
    from trl import SFTConfig

    from quickft.hardware import Choice
    from quickft.summary import trained_precision

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, **({"bf16": False, "fp16": False} | flags))
    choice = Choice("unsloth", "Unsloth runs here", chosen, False, "cuda")
    read, notes = trained_precision(choice, args)
    if says is None:
        assert read is choice and notes == []
    else:
        assert notes == [f"{says}: the report and backend.json say {read.precision}"]
        assert read.precision == ("bf16" if flags else "fp32") and says in read.reason
