"""Sharding (recipe distributed="fsdp") through the real launcher: torchrun starts 2 CPU processes on gloo, and
accelerate's FSDP2 shards the model across them. accelerate dispatches FSDP on accelerators only, so on CPU
processes quickft hands it the plugin itself (quickft.distributed.fsdp_on_cpu); everything after that is accelerate's,
transformers' and torch's own: fsdp2_prepare_model, the sharded steps, saving the weights gathered whole.

What sharding must not change: the losses of one process with the same effective batch (to 1e-4), the counts, the
answers. What it must change: each process holds its share of the weights, the shares adding up to the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import check_eval_and_merged_export, write_recipe

from quickft.cli import main


@pytest.fixture
def fsdp_recipe(tmp_path, tiny_model_dir, sums_file) -> Path:
    return write_recipe(
        tmp_path / "fsdp.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template="Pregunta: {{prompt}}\\nRespuesta: ", holdout=4),
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            eval=Eval(every=6, fraction=0.05),
            distributed="fsdp",
            max_seq_length=32,
            micro_batch_size=4,
            learning_rate=5e-3,
            max_steps=12,
            logging_steps=2,
            save_every=6,
            max_new_tokens=4,
            backend="peft",
        )
        """,
    )


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def torchrun(recipe: Path, run_dir: Path, *overrides: str) -> str:
    """The recipe on 2 processes (micro-batch 4 each); returns the console."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*launcher, "-m", "quickft", "run", str(recipe), *overrides, "--output-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    return done.stdout


def check_same_training(baseline: Path, two: Path) -> dict:
    """The same losses (to 1e-4) and counts, step by step; each process held a share of the weights (their sum: the
    model's weights, counted before sharding), not all of them. Returns the sharded run's summary."""
    alone, sharded = rows_of(baseline), rows_of(two)
    assert [r["step"] for r in sharded] == [r["step"] for r in alone]
    for a, b in zip(alone, sharded, strict=True):
        for key in ("loss", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (key, a["step"])
        assert (b.get("tokens"), b.get("samples"), b.get("case_score")) == (
            a.get("tokens"),
            a.get("samples"),
            a.get("case_score"),
        )
    summary = json.loads((two / "summary.json").read_text())
    total = summary["model"]["parameters_total"]
    held = [p["weights_held"] for p in summary["processes"]["per_process"]]
    assert sum(held) == total and all(0 < h < total for h in held), (held, total)
    assert json.loads((two / "status.json").read_text())["status"] == "completed"
    return summary


def test_fsdp_lora_trains_what_ddp_trains(fsdp_recipe, tmp_path, capsys):
    """LoRA sharded against LoRA data-parallel (DDP), both on 2 processes: the same losses, eval losses (evaluated
    in the same batches) and test-case scores (answered during training: under FSDP every process answers, in
    step), a checkpoint and an adapter saved whole, which quickft eval and a merged export load in one process and
    answer with as the sharded run did."""
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(fsdp_recipe, ddp, "distributed=ddp")
    out = torchrun(fsdp_recipe, fsdp)
    summary = check_same_training(ddp, fsdp)
    assert [r["step"] for r in rows_of(fsdp) if "eval_loss" in r] == [6, 12]
    # data-parallel: each process holds the whole model
    held = [p["weights_held"] for p in json.loads((ddp / "summary.json").read_text())["processes"]["per_process"]]
    assert held == [summary["model"]["parameters_total"]] * 2
    assert "sharding        FSDP2 (accelerate): weights, gradients and optimizer state split across 2 processes" in out
    assert "× 2 processes (gloo) = 8 effective" in out
    assert (fsdp / "checkpoints" / "checkpoint-12" / "adapter_model.safetensors").is_file()
    check_eval_and_merged_export(fsdp, tmp_path / "merged", capsys)


def test_fsdp_full_fine_tune_trains_what_one_process_trains(fsdp_recipe, tmp_path, capsys):
    """A full fine-tune sharded against one process with the same effective batch (micro-batch 8): the same losses;
    the whole model saved from its shards loads in one process and answers as the sharded run did."""
    one, two = tmp_path / "one", tmp_path / "two"
    settings = ["mode=full", "learning_rate=1e-3", "eval.every=0"]
    assert main(["run", str(fsdp_recipe), *settings, "micro_batch_size=8", "--output-dir", str(one), "--quiet"]) == 0
    capsys.readouterr()
    torchrun(fsdp_recipe, two, *settings)
    summary = check_same_training(one, two)
    assert summary["model"]["parameters_trainable"] == summary["model"]["parameters_total"]
    assert (two / "model.safetensors").is_file() and not (two / "adapter_model.safetensors").exists()
    assert main(["eval", str(two), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    saved = [json.loads(line) for line in (two / "samples.jsonl").read_text().splitlines()]
    assert saved and [c["answer"] for c in scored["answers"]] == [s["answer"] for s in saved]


def test_fsdp_with_one_process_says_there_is_nothing_to_shard(fsdp_recipe, tmp_path, capsys):
    assert main(["run", str(fsdp_recipe), "max_steps=2", "--output-dir", str(tmp_path / "run")]) == 0
    assert "distributed='fsdp' with one process: nothing to shard, trained as usual" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["mode=qlora"], "'fsdp' cannot shard mode='qlora' with this stack"),
        (["method=kto"], "'fsdp' is run with method='sft' only"),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard(fsdp_recipe, tmp_path, overrides, said, capsys):
    """QLoRA: FSDP2 gathers each shard back as a plain tensor, without bitsandbytes' quantization state, so accelerate
    leaves 4-bit weights whole in every process (no memory saved). Refused with exit 2 before anything loads."""
    assert main(["run", str(fsdp_recipe), *overrides, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "distributed: " in err and said in err
    assert not (tmp_path / "run").exists()
