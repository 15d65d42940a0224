"""The preference and RL demos, as their recipes run them: the demo's SFT model stopped early, then DPO and GRPO from
it, each scored on the demo's 1,000 unseen sums. About 6 minutes on the project's 2-core CPU, so marked slow: `make
test` and CI skip them; `make test-demos` runs them (README, "Tests")."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from quickft.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def early_model(tmp_path_factory):
    """The demo's SFT model at 600 of its 2,100 steps, as the recipes' comments make it (26.1% exact here)."""
    out = tmp_path_factory.mktemp("demos") / "tiny_math_early"
    here = os.getcwd()
    os.chdir(ROOT)  # the recipes' data paths are the repository's
    try:
        assert main(["run", "recipes/tiny_math.py", "max_steps=600", "--output-dir", str(out), "--quiet"]) == 0
    finally:
        os.chdir(here)
    return out, json.loads((out / "summary.json").read_text())["test_cases"]["score"]


def score_from(recipe: str, early_model, *overrides: str, tmp_path) -> float:
    model, _ = early_model
    out = tmp_path / "run"
    args = ["run", str(ROOT / recipe), f"model={model}", *overrides, "--output-dir", str(out), "--quiet"]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())["test_cases"]["score"]


def test_grpo_raises_the_early_models_exact_match(early_model, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's data paths are the repository's
    before = early_model[1]
    after = score_from("recipes/tiny_math_grpo.py", early_model, "eval.every=0", tmp_path=tmp_path)
    assert after > before + 0.03, (before, after)


def test_dpo_with_the_sft_loss_raises_the_early_models_exact_match(early_model, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = early_model[1]
    after = score_from("recipes/tiny_math_dpo.py", early_model, "eval.every=0", tmp_path=tmp_path)
    assert after > before + 0.05, (before, after)
