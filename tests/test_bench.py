"""`quickft bench` on the shipped demo recipe: Unsloth (its CPU mode) vs PEFT, each in its own process."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, requires_unsloth


def bench(*args, env_extra=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quickft", "bench", "recipes/tiny_math.py", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env=os.environ | (env_extra or {}),
    )


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    result = bench("--steps", "4", "--warmup", "1", "--repeat", "2", "--isolate", "--output-dir", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout), result


@requires_unsloth
def test_both_backends_ran_in_their_own_processes(bench_result):
    out, data, proc = bench_result
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"unsloth", "peft", "peft+gc"}
    assert all("error" not in r for r in rows.values()), rows
    pids = [p for r in rows.values() for p in r["pids"]]
    assert len(set(pids)) == len(pids) == 6 and data["parent_pid"] not in pids, (
        "one fresh process per variant and repeat"
    )
    assert "unsloth" in rows["unsloth"]["imported"]
    assert "unsloth" not in rows["peft"]["imported"] and "unsloth" not in rows["peft+gc"]["imported"]
    assert "peft" in rows["peft"]["imported"]
    assert rows["peft+gc"]["gradient_checkpointing"] and not rows["peft"]["gradient_checkpointing"]
    assert data["note"].startswith("On CPU the backends are expected to be about even")
    assert json.loads((out / "bench.json").read_text())["rows"] == data["rows"]
    md = (out / "bench.md").read_text()
    assert "| unsloth |" in md and "| peft |" in md and "about even" in md


@requires_unsloth
def test_like_for_like_rows_ran_the_same_settings(bench_result):
    """Read back from each live trainer and model: the real Unsloth CPU path and the real PEFT path ran alike."""
    _, data, proc = bench_result
    rows = {r["variant"]: r for r in data["rows"]}
    assert data["mode"] == "like for like"
    assert rows["unsloth"]["settings"] == rows["peft"]["settings"] and rows["unsloth"]["differs"] == {}
    settings = rows["peft"]["settings"]
    assert settings["optimizer"].startswith("AdamW") and settings["loss"] == "ForCausalLMLoss"
    assert settings["compute_dtype"] == "fp32" and settings["linear4bit_layers"] == 0
    # set explicitly on both rows, where TRL's and Unsloth's defaults differ on a GPU (bench.LIKE_FOR_LIKE)
    assert (settings["loss_type"], settings["padding_free"]) == ("nll", False)
    assert (settings["nan_inf_filter"], settings["empty_cache_steps"]) == (True, None)
    assert rows["peft+gc"]["differs"] == {
        "gradient_checkpointing": [False, True],
        "checkpointing_kind": ["none", "recompute"],
    }


@requires_unsloth
def test_as_shipped_rows_differ_and_say_how(tmp_path):
    result = bench(
        "--steps", "2", "--warmup", "0", "--repeat", "1", "--as-shipped", "--output-dir", str(tmp_path / "s"), "--json"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    rows = {r["variant"]: r for r in data["rows"]}
    assert data["mode"] == "as shipped"
    # Unsloth's CPU mode picks the fused AdamW and its chunked cross-entropy when left to itself
    assert rows["unsloth"]["differs"]["optimizer"][1] == "AdamW (fused)"
    assert rows["unsloth"]["differs"]["loss"] == ["ForCausalLMLoss", "Unsloth's chunked cross-entropy"]
    md = (tmp_path / "s" / "bench.md").read_text()
    assert "as shipped" in md and "optimizer: " in md and "Unsloth's chunked cross-entropy" in md


@requires_unsloth
def test_bench_arithmetic_reruns_from_json(bench_result):
    out, _, _ = bench_result
    data = json.loads((out / "bench.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    base = rows[data["baseline"]]
    assert data["baseline"] == "peft"
    for r in rows.values():
        assert r["measured_steps"] == 2 * 4  # warm-up excluded, both repeats counted
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["measured_time_s"])
        assert r["samples_per_s"] == pytest.approx(r["samples"] / r["measured_time_s"])
        assert r["samples"] == 2 * 4 * 64  # micro-batch 64, no partial batch in the first steps
        assert r["step_time_min_s"] <= r["step_time_median_s"] <= r["step_time_max_s"]
        assert r["step_time_mean_s"] == pytest.approx(r["measured_time_s"] / r["measured_steps"])
        # the spread is the repeats' own tokens/s, each over its own steps
        assert len(r["repeat_tokens_per_s"]) == 2
        assert min(r["repeat_tokens_per_s"]) <= r["tokens_per_s"] <= max(r["repeat_tokens_per_s"])
        spread = (max(r["repeat_tokens_per_s"]) - min(r["repeat_tokens_per_s"])) / r["tokens_per_s"]
        assert r["spread"] == pytest.approx(spread)
        assert any(w.startswith(f"{r['variant']}: its repeats ran at") for w in data["warnings"]) == (spread > 0.10)
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / base["tokens_per_s"])
        assert r["memory_saving"] == pytest.approx(1 - r["peak_memory_mb"] / base["peak_memory_mb"])
        assert r["peak_memory_mb"] == r["memory"]["peak_rss_mb"]
        assert len(r["losses"]) == 4
        assert r["max_loss_diff"] == pytest.approx(
            max(abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True))
        )


def test_table_is_printed(tmp_path):
    result = bench(
        "max_steps=100",
        "--backends",
        "peft",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--repeat",
        "1",
        "--output-dir",
        str(tmp_path / "t"),
    )
    assert result.returncode == 0, result.stderr
    assert "quickft bench" in result.stdout and "peft (baseline)" in result.stdout and "1.00×" in result.stdout
    out = " ".join(result.stdout.split())
    assert "replaces the recipe's max_steps=100 with 2, logging_steps=50 with 1, eval.every=300 with off" in out
    assert "noise: one repeat: no spread measured" in out
    assert "peft: run 1/1 in a fresh process: done in" in out
    assert (
        "effective settings" in result.stdout
        and "ForCausalLMLoss" in result.stdout
        and "like for like" in result.stdout
    )


@requires_unsloth
def test_a_variant_that_cannot_run_is_a_reason_row(tmp_path):
    """Unsloth told not to fall back to its CPU mode fails to import here: a row that says why, not a crash."""
    result = bench(
        "--steps",
        "2",
        "--warmup",
        "0",
        "--repeat",
        "1",
        "--output-dir",
        str(tmp_path / "r"),
        "--json",
        env_extra={"UNSLOTH_DISABLE_CPU_FALLBACK": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(result.stdout)["rows"]}
    assert "unsloth failed to import" in rows["unsloth"]["error"]
    assert "error" not in rows["peft"] and rows["peft"]["speedup"] == 1.0


def test_bad_variant_names_are_refused(tmp_path):
    result = bench("--backends", "unsloth,vllm", "--output-dir", str(tmp_path / "x"))
    assert result.returncode == 2 and "unknown backend 'vllm'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("checkpointing", [True, False])
def test_effective_settings_read_what_the_trainer_and_model_run(tmp_path, tiny_model_dir, sums_file, checkpointing):
    """The settings table shows the loss type, the NaN filter, the cache emptying, full 16-bit evaluation, where the
    embedding is and which checkpointing the layers run, from the live trainer and model (a real PEFT trainer)."""
    from quickft.backends import load_peft
    from quickft.bench import effective_settings
    from quickft.data import read_examples
    from quickft.data.encode import prepare
    from quickft.hardware import Choice
    from quickft.pipeline import make_trainer, to_dataset
    from quickft.recipe import Data, Recipe

    data = Data(path=str(sums_file), prompt_template="Pregunta: {prompt}\nRespuesta: ")
    recipe = Recipe(
        model=str(tiny_model_dir), data=data, max_seq_length=32, gradient_checkpointing=checkpointing, max_steps=1
    )
    choice = Choice("peft", "", "fp32", False, "cpu")
    loaded = load_peft(recipe, choice, str(tiny_model_dir), local=True)
    rows = prepare(read_examples(sums_file, data)[:16], loaded.tokenizer, recipe).rows
    trainer = make_trainer(recipe, choice, loaded.model, loaded.tokenizer, to_dataset(rows), tmp_path)
    settings = effective_settings(trainer, loaded.model)
    args = trainer.args
    assert settings["loss_type"] == args.loss_type and settings["nan_inf_filter"] == args.logging_nan_inf_filter
    assert settings["empty_cache_steps"] == args.torch_empty_cache_steps and settings["full_16bit_eval"] is False
    assert settings["embedding_device"] == "cpu"
    assert settings["checkpointing_kind"] == ("recompute" if checkpointing else "none")
