"""Experiment tracking through transformers' own integrations (recipe.track): what the tracker holds is what
metrics.jsonl says, under the same names."""

from __future__ import annotations

import json

import pytest

from quickft.cli import main
from tests.conftest import PROMPT, write_recipe


def recipe_with(tmp_path, tiny_model_dir, sums_file, track: str):
    return write_recipe(
        tmp_path / f"track_{track}.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=2),
            eval=Eval(every=3, fraction=0.1),
            lora=LoRA(r=4, alpha=8), max_seq_length=32, micro_batch_size=8, max_steps=6, logging_steps=2,
            max_new_tokens=3, backend="peft", track={track!r},
        )
        """,
    )


def test_tensorboard_holds_the_losses_and_rates_of_metrics_jsonl(tmp_path, tiny_model_dir, sums_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(recipe_with(tmp_path, tiny_model_dir, sums_file, "tensorboard")),
                "--output-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for name in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "samples_per_s", "step_time_s", "loss_smoothed"):
        logged = {e.step: e.value for e in events.Scalars(f"train/{name}")}
        assert logged == pytest.approx({r["step"]: r[name] for r in train}, rel=1e-6), name
    eval_loss = {e.step: e.value for e in events.Scalars("eval/loss")}
    assert set(eval_loss) == {r["step"] for r in rows if "eval_loss" in r}
    assert eval_loss == pytest.approx({r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}, rel=1e-6)


def test_a_tracker_that_is_not_installed_is_named_before_anything_loads(tmp_path, tiny_model_dir, sums_file, capsys):
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    out = tmp_path / "out"
    recipe = recipe_with(tmp_path, tiny_model_dir, sums_file, "mlflow")
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert "track=mlflow: the mlflow package is not installed" in captured.err and "pip install mlflow" in captured.err
    assert "importing torch" not in captured.out and not out.exists()
