"""Shared fixtures: tiny real models and data built once per test session, on CPU, with no download."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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
def sums_file(tmp_path_factory) -> Path:
    return write_blocks(tmp_path_factory.mktemp("data") / "sums.txt", SUMS)


@pytest.fixture(scope="session")
def tiny_model_dir(sums_file) -> Path:
    """A tiny random Llama saved with save_pretrained, plus a tokenizer trained on the sums."""
    from quickft.data import read_examples, training_text
    from quickft.recipe import Data, Scratch
    from quickft.scratch import build_scratch

    data = Data(path=str(sums_file), prompt_template=PROMPT)
    corpus = [training_text(ex, data) for ex in read_examples(sums_file, data)]
    spec = Scratch(
        hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=320, max_position_embeddings=64
    )
    return build_scratch(spec, corpus, seed=0)


def write_recipe(path: Path, body: str) -> Path:
    path.write_text("from quickft import Data, LoRA, Recipe, Scratch\n\n" + textwrap.dedent(body), encoding="utf-8")
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
