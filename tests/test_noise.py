"""Library messages known to be harmless stay off the screen, and --debug shows them, marked (quickft/noise.py).

Each is caused for real: bitsandbytes' import in `doctor`, transformers' warning on resuming a tied model, llama.cpp's
log of a GGUF export."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PROMPT, ROOT, write_recipe
from tests.test_export import requires_gguf

MARK = "[quickft: known harmless, hidden without --debug:"


def quickft(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "quickft", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_doctor_leaves_out_bitsandbytes_missing_optional_kernels():
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import on a CPU with
    AVX512-BF16 when the optional `kernels` package is missing, and then runs its own kernel."""
    said = "Failed to load CPU gemm_4bit_forward from kernels-community"
    plain = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, timeout=300)
    if said not in plain.stderr:
        pytest.skip("bitsandbytes says nothing of it here (no AVX512-BF16 CPU, or the kernels package is installed)")
    assert said not in quickft("doctor", "--fast").stderr
    shown = [line for line in quickft("--debug", "doctor", "--fast").stderr.splitlines() if said in line]
    assert len(shown) == 1 and MARK in shown[0] and "uses its own" in shown[0]


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory, tiny_model_dir, sums_file):
    """A full fine-tune of the tiny Llama, whose output head is its input embedding (tied): 4 steps, a checkpoint
    every 2; then the same run as a stop after step 2 leaves it (its last checkpoint gone, status interrupted)."""
    from quickft.cli import main

    tmp = tmp_path_factory.mktemp("tied")
    recipe = write_recipe(
        tmp / "full.py",
        f"""
        recipe = Recipe(model={str(tiny_model_dir)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}),
                        mode="full", max_seq_length=32, micro_batch_size=8, learning_rate=1e-3, max_steps=4,
                        save_every=2, max_new_tokens=4)
        """,
    )
    whole = tmp / "whole"
    assert main(["run", str(recipe), "--output-dir", str(whole), "--quiet"]) == 0
    assert json.loads((tiny_model_dir / "config.json").read_text())["tie_word_embeddings"]
    stopped = {}
    for name in ("quiet", "debug"):
        stopped[name] = tmp / name
        shutil.copytree(whole, stopped[name])
        shutil.rmtree(stopped[name] / "checkpoints" / "checkpoint-4")
        status = json.loads((stopped[name] / "status.json").read_text()) | {"status": "interrupted"}
        (stopped[name] / "status.json").write_text(json.dumps(status))
    return recipe, whole, stopped


def rows(run_dir) -> list[dict]:
    every = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in every if "loss" in r]


def test_resuming_a_tied_model_leaves_out_the_missing_tied_copy_and_trains_as_before(tied_run):
    """transformers saves a tied weight once and, resuming, warns that lm_head.weight is missing: hidden (shown under
    --debug, marked), and harmless indeed: the resumed steps are the uninterrupted run's."""
    recipe, whole, stopped = tied_run
    said = "There were missing keys in the checkpoint model loaded: ['lm_head.weight']"
    quiet = quickft("run", str(recipe), "--resume", str(stopped["quiet"]))
    assert "missing keys" not in quiet.stderr + quiet.stdout
    debug = quickft("--debug", "run", str(recipe), "--resume", str(stopped["debug"]))
    shown = [line for line in (debug.stderr + debug.stdout).splitlines() if said in line]
    assert len(shown) == 1 and MARK in shown[0] and "lm_head.weight: tied to another weight" in shown[0]
    for run in stopped.values():
        assert [r["loss"] for r in rows(run)] == pytest.approx([r["loss"] for r in rows(whole)], abs=1e-4)


def test_tied_copies_are_the_weights_that_share_a_tensor(tiny_model_dir):
    """Only a key that is the same tensor as another is a tied copy: an untied model has none."""
    import torch
    from transformers import AutoModelForCausalLM

    from quickft.noise import tied_copies

    tied = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert tied_copies(tied) == {"lm_head.weight"}
    untied = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, tie_word_embeddings=False)
    assert tied_copies(untied) == set()


@requires_gguf
def test_llama_cpp_log_of_a_gguf_export_is_shown_only_under_debug(tied_run, tmp_path):
    """llama.cpp's converter logs every tensor it writes on stderr (INFO:hf-to-gguf:...), in a process of its own:
    a successful export leaves it out; --debug shows it, marked."""
    _, whole, _ = tied_run
    quiet = quickft("export", str(whole), "--to", "gguf", "--out", str(tmp_path / "quiet"))
    assert "hf-to-gguf" not in quiet.stderr and "llama.cpp's converter's stderr" not in quiet.stderr
    debug = quickft("--debug", "export", str(whole), "--to", "gguf", "--out", str(tmp_path / "debug"))
    assert "[quickft --debug: llama.cpp's converter's stderr, hidden without --debug]" in debug.stderr
    after = debug.stderr.split("llama.cpp's converter's stderr, hidden without --debug]", 1)[1]
    assert "hf-to-gguf" in after
