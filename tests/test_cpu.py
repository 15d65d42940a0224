"""Training at the CPU's speed, on real models: the precision probe and what a bf16 pick trains with (the real
model's losses against fp32's), the CPU's matrix-multiply peak behind MFU, OpenMP's settings before torch loads, and
the warning when other processes keep the cores busy. Only the CPU's flags are ever faked (a cpuinfo file of another
CPU); every timing is real, and no test asserts a speed: the decisions are checked against the timings they were
made from."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from conftest import PROMPT, ROOT, write_recipe
from test_hardware import HASWELL, SAPPHIRE_RAPIDS, cpuinfo

from quickft import cpu, cpu_speed
from quickft.backends import load_peft
from quickft.cli import main
from quickft.hardware import Choice, pick_cpu_precision
from quickft.recipe import Data, LoRA, Recipe

FP32 = Choice("peft", "", "fp32", False, "cpu")
BF16 = Choice("peft", "", "bf16", False, "cpu")


def tiny_lora(tiny_model_dir, choice=FP32):
    recipe = Recipe(model=str(tiny_model_dir), data=Data(path="unused"), lora=LoRA(r=4, alpha=8, dropout=0.1))
    return load_peft(recipe, choice, str(tiny_model_dir), local=True)


def batch_of(tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return dict(batch)


def test_the_probe_times_both_precisions_and_leaves_the_model_as_it_was(tiny_model_dir):
    loaded = tiny_lora(tiny_model_dir)
    model = loaded.model
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    batch = batch_of(loaded.tokenizer, ["Pregunta: ¿Cuánto es 3 + 4?\nRespuesta: 7", "Pregunta: 1 + 1\nRespuesta: 2"])
    began = time.perf_counter()
    timing = cpu_speed.time_passes(model, batch, cast=True)
    elapsed = time.perf_counter() - began
    assert timing["fp32_s"] == min(timing["passes"]["fp32"]) and timing["bf16_s"] == min(timing["passes"]["bf16"])
    assert len(timing["passes"]["fp32"]) == len(timing["passes"]["bf16"]) >= cpu_speed.PROBE_ROUNDS[0]
    assert sum(timing["passes"]["fp32"]) + sum(timing["passes"]["bf16"]) + sum(timing["warmup_s"].values()) < elapsed
    assert timing["batch_shape"] == list(batch["input_ids"].shape)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert timing["frozen_cast"] == frozen  # every frozen weight of a tiny Llama (none kept in fp32)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training and torch.equal(torch.random.get_rng_state(), rng)
    assert not any(m._forward_hooks for m in model.modules())  # the probe's fp32-sum hooks are gone


def test_a_bf16_pick_holds_the_model_as_loading_it_in_bf16_does(tiny_model_dir):
    """The probe's pick casts the loaded fp32 model in place (lora_in_bf16); precision=bf16 loads it in bf16: the
    same frozen weights bit for bit, the adapter in fp32 in both (PEFT initializes a bf16 model's adapter in bf16
    before it upcasts it: the same draw, rounded), and both keep the LoRA sums in fp32 under autocast while
    answering in plain bf16 without it."""
    picked, loaded = tiny_lora(tiny_model_dir).model, tiny_lora(tiny_model_dir, BF16).model
    as_loaded = {k: v.clone() for k, v in picked.state_dict().items()}
    in_fp32 = cpu_speed.lora_in_bf16(picked)
    ours, theirs = picked.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert value.dtype == theirs[name].dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name
        if "lora_" in name:
            assert torch.equal(value.to(torch.bfloat16).float(), theirs[name]), name
        else:
            assert torch.equal(value, theirs[name]), name
    ids, seen = torch.tensor([[5, 17, 42, 9, 33, 2]]), {}

    def note(module, args, out) -> None:
        seen["out"] = out.dtype

    for model in (picked, loaded):
        model.base_model.model.model.layers[0].self_attn.q_proj.register_forward_hook(note)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids)
        assert seen.pop("out") == torch.float32  # the sum of base and adapter, kept
        with torch.no_grad():
            model(input_ids=ids)
        assert seen.pop("out") == torch.bfloat16  # answering: plain bf16
    in_fp32()  # the pick, after training: back to the fp32 weights it was loaded with, to answer as chat loads it
    assert all(torch.equal(v, as_loaded[k]) and v.dtype == as_loaded[k].dtype for k, v in picked.state_dict().items())
    decoder = picked.base_model.model.model
    assert not decoder._forward_hooks and not decoder.layers[0].self_attn.q_proj.base_layer._forward_hooks


def losses_of(model, tokenizer, recipe, choice, rows, out) -> list[float]:
    from quickft.pipeline import make_trainer, to_dataset

    trainer = make_trainer(recipe, choice, model, tokenizer, to_dataset(rows), out)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


LOSS_TOLERANCE = 0.02
"""How far a bf16 run's loss may be from fp32's at each of the first steps (absolute; the losses are 1.9-3.0, so
under 1%). Measured on this test's steps (2 x 128 tokens): at most 0.011 with the LoRA sums in fp32, 0.035-0.043
from the first update on without; on 8 steps of 4 x 256 tokens, at most 0.007 and 0.03-0.07."""


@pytest.fixture(scope="module")
def smollm2_losses(smollm2_dense, tmp_path_factory):
    """The real model's first 6 steps (LoRA r=16 on every linear layer, 2 sequences of up to 128 tokens of the
    tutor data, packed) in fp32, as a bf16 pick trains them, and in bf16 with the LoRA sums left in bf16."""
    from quickft.data import read_examples
    from quickft.data.encode import prepare
    from quickft.pipeline import training_tokenizer

    out = tmp_path_factory.mktemp("losses")
    data = Data(path=str(ROOT / "data/tutor_matematicas.txt"), prompt_template=PROMPT, batching="packed")
    recipe = Recipe(
        model=str(smollm2_dense[1].path), data=data, lora=LoRA(r=16, alpha=32, dropout=0.0),
        max_seq_length=128, micro_batch_size=2, max_steps=6, logging_steps=1, learning_rate=2e-4,
    )  # fmt: skip
    losses = {}
    for kind in ("fp32", "bf16", "bf16-sums"):
        loaded = load_peft(recipe, FP32, recipe.model, local=True)
        if kind == "bf16":
            cpu_speed.lora_in_bf16(loaded.model)
        elif kind == "bf16-sums":
            cpu_speed.cast_frozen(loaded.model, torch.bfloat16)  # the frozen weights alone: PEFT's sums stay bf16
        examples = read_examples(data.path, data)[:60]
        training_tokenizer(loaded.tokenizer, recipe, examples)
        rows = prepare(examples, loaded.tokenizer, recipe).rows
        losses[kind] = losses_of(loaded.model, loaded.tokenizer, recipe, FP32 if kind == "fp32" else BF16, rows, out)
    return losses


def test_the_real_models_bf16_losses_match_fp32s(smollm2_losses):
    """What a bf16 pick trains with: every one of the first 6 steps' losses within LOSS_TOLERANCE of fp32's."""
    fp32, bf16 = smollm2_losses["fp32"], smollm2_losses["bf16"]
    assert len(fp32) == len(bf16) == 6
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) <= LOSS_TOLERANCE, (fp32, bf16)


def test_without_fp32_sums_the_first_updates_are_rounded_away(smollm2_losses):
    """The control that shows the tolerance can fail: with the adapter's output added in bf16, the loss stays above
    fp32's from the first update on (step 1, before any update, agrees)."""
    fp32, sums = smollm2_losses["fp32"], smollm2_losses["bf16-sums"]
    assert abs(fp32[0] - sums[0]) <= LOSS_TOLERANCE
    assert max(b - a for a, b in zip(fp32[1:], sums[1:], strict=True)) > LOSS_TOLERANCE, (fp32, sums)


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """Make quickft read another CPU's flags (the only fake: everything that runs on them is real)."""

    def use(flags: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo(flags, cores=os.cpu_count()))
        monkeypatch.setattr(cpu, "CPUINFO", str(path))

    return use


def run_tiny(tmp_path, tiny_model_dir, sums_file, capsys, *extra) -> tuple[dict, dict, str]:
    recipe = write_recipe(
        tmp_path / "r.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=2),
            lora=LoRA(r=4, alpha=8, dropout=0.0), max_seq_length=32, micro_batch_size=8, max_steps=3,
            max_new_tokens=4, backend="peft",
        )
        """,
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), *extra]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    return json.loads((run / "backend.json").read_text()), json.loads((run / "recipe.json").read_text()), out


def test_a_cpu_without_bf16_instructions_trains_in_fp32_without_a_probe(
    tmp_path, tiny_model_dir, sums_file, capsys, fake_cpu
):
    fake_cpu(HASWELL)
    backend, recipe, out = run_tiny(tmp_path, tiny_model_dir, sums_file, capsys)
    assert backend["precision"] == "fp32" and "probe" not in backend["cpu"]
    assert backend["hardware"]["cpu"]["features"] == ["AVX2"]
    assert "no bf16 matrix instructions (it has AVX2)" in backend["precision_reason"]
    assert backend["cpu"]["peak"]["dtype"] == "float32" and recipe["precision"] == "auto"
    assert "precision fp32: this CPU has no bf16 matrix instructions" in plain(out)


@pytest.fixture(scope="module")
def wide_model_dir(sums_file):
    """A 2-layer Llama 512 wide: matrices large enough that on a CPU with bf16 instructions bf16 usually wins the
    probe (this machine's AVX512-BF16: about 1.4x), so the bf16 path runs end to end here; elsewhere fp32's does."""
    from quickft.data import read_examples
    from quickft.data.encode import training_text
    from quickft.models.scratch import build_scratch
    from quickft.recipe import Scratch

    data = Data(path=str(sums_file), prompt_template=PROMPT)
    corpus = [training_text(ex, data) for ex in read_examples(sums_file, data)]
    spec = Scratch(hidden_size=512, num_layers=2, num_heads=8, intermediate_size=1376, vocab_size=320)
    return build_scratch(spec, corpus, seed=0)


def test_a_cpu_with_bf16_instructions_picks_by_the_probes_own_timings(
    tmp_path, wide_model_dir, sums_file, capsys, fake_cpu
):
    """A faked AMX CPU: the probe runs on this run's own micro-batch, and the pick, what the trainer runs, the
    weights, the header and the saved recipe follow its timings by the rule (whichever way they fall here)."""
    fake_cpu(SAPPHIRE_RAPIDS)
    backend, recipe, out = run_tiny(tmp_path, wide_model_dir, sums_file, capsys)
    probe = backend["cpu"]["probe"]
    picked, why = pick_cpu_precision(cpu.Cpu("x", ("AMX-BF16",)), probe["fp32_s"], probe["bf16_s"])
    assert backend["precision"] == picked and backend["precision_reason"] == why and "AMX-BF16" in why
    args = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert args.bf16 is (picked == "bf16")  # the trainer built again for a bf16 pick: autocast
    assert probe["batch_shape"][0] == 8  # a micro-batch of the recipe's 8 sequences
    assert recipe["precision"] == "auto"  # how it trains, not how it answers: chat, eval and export load it in fp32
    assert backend["model"]["weight_dtypes"].keys() == ({"bfloat16", "float32"} if picked == "bf16" else {"float32"})
    assert backend["cpu"]["peak"]["dtype"] == ("bfloat16" if picked == "bf16" else "float32")
    assert f"precision {picked}: " in out and "per forward and backward pass" in plain(out)
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0  # the run's own answers were given in fp32 too
    scored = json.loads(capsys.readouterr().out)
    saved = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert saved and [c["answer"] for c in scored["answers"]] == [s["answer"] for s in saved]


def test_the_matmul_peak_is_the_multiplys_flops_over_its_own_time():
    """The FLOPs one multiply does, as torch's FlopCounterMode counts them, and a rate no lower than their total over
    our own clock of the whole probe (the peak is the fastest multiply, so it can only be higher)."""
    from torch.utils.flop_counter import FlopCounterMode

    m, k, n = cpu_speed.MATMUL_SHAPE
    with FlopCounterMode(display=False) as counter:
        torch.mm(torch.ones(m, k), torch.ones(k, n))
    for dtype in ("float32", "bfloat16"):
        began = time.perf_counter()
        peak = cpu_speed.matmul_peak(dtype, seconds=0.2)
        elapsed = time.perf_counter() - began
        assert peak["flops"] == counter.get_total_flops() and peak["dtype"] == dtype
        assert peak["flops_per_s"] >= peak["flops"] * peak["multiplies"] / elapsed


def test_mfu_on_a_cpu_is_the_steps_flops_over_the_peak_of_the_precision_trained(
    tmp_path, tiny_model_dir, sums_file, capsys, fake_cpu
):
    fake_cpu(HASWELL)
    run_tiny(tmp_path, tiny_model_dir, sums_file, capsys)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["train"]
    peak = json.loads((tmp_path / "run" / "backend.json").read_text())["cpu"]["peak"]
    assert (
        summary["peak_flops"] == peak["flops_per_s"]
        and "this CPU's fp32 matrix-multiply rate" in (summary["peak_source"])
    )
    assert summary["mfu"] == pytest.approx(summary["flops_per_s"] / peak["flops_per_s"])


OPENMP = """
import json, os, sys
from quickft.cpu import set_openmp
state = set_openmp()
import torch
print(json.dumps({"policy": os.environ["OMP_WAIT_POLICY"], "threads": os.environ["OMP_NUM_THREADS"],
                  "torch_threads": torch.get_num_threads(), "by_us": state.set_by_quickft,
                  "loaded": state.torch_was_loaded}))
"""


def test_openmp_waits_passively_on_the_usable_cores_unless_the_environment_says_otherwise():
    from quickft.cpu import read_cpu

    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    ours = json.loads(subprocess.check_output([sys.executable, "-c", OPENMP], env=env, cwd=ROOT, text=True))
    usable = read_cpu().usable_cores
    assert ours == {
        "policy": "PASSIVE",
        "threads": str(usable),
        "torch_threads": usable,  # torch read them as it loaded
        "by_us": ["OMP_WAIT_POLICY", "OMP_NUM_THREADS"],
        "loaded": False,
    }
    env |= {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}  # a user's (or torchrun's) own
    theirs = json.loads(subprocess.check_output([sys.executable, "-c", OPENMP], env=env, cwd=ROOT, text=True))
    assert theirs["policy"] == "ACTIVE" and theirs["torch_threads"] == 1 and theirs["by_us"] == []


def plain(out: str) -> str:
    """The console's text without the panel's borders, in one line: a header note wrapped over lines reads whole."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", out).split())


def test_the_header_says_who_set_openmp_and_warns_when_other_processes_keep_the_cores_busy(
    tmp_path, tiny_model_dir, sums_file
):
    """A real `quickft run` in a process of its own, beside busy processes (one per usable core, each a spinning
    Python loop)."""
    from quickft.cpu import read_cpu

    recipe = write_recipe(
        tmp_path / "r.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}, holdout=0),
            lora=LoRA(r=4, alpha=8), max_seq_length=32, micro_batch_size=8, max_steps=2, backend="peft",
        )
        """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    spin = [sys.executable, "-c", "while True: pass"]
    busy = [subprocess.Popen(spin) for _ in range(read_cpu().usable_cores)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quickft", "run", str(recipe), "--output-dir", str(tmp_path / "run")],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
        )  # fmt: skip
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "backend.json").read_text())["cpu"]
    assert record["others_busy_cores"] >= 0.5 * read_cpu().usable_cores
    header = plain(done.stdout)
    assert "OpenMP wait policy PASSIVE (OMP_WAIT_POLICY and OMP_NUM_THREADS set by quickft before torch loaded)" in (
        header
    )
    assert "warning: the CPU is busy: other processes kept" in header


def test_others_busy_is_the_machines_busy_time_less_this_processs_own():
    """Two snapshots around a second of this process spinning alone: its own time is not counted as others'."""
    start = cpu.busy_snapshot()
    began = time.monotonic()
    while time.monotonic() - began < 1.2:
        pass
    now = cpu.busy_snapshot()
    own = now[2] - start[2]
    assert 0 < own <= now[0] - start[0] + 0.02  # one thread spinning: at most the window (clock ticks are 10 ms)
    others = ((now[1] - start[1]) - own) / (now[0] - start[0])  # can round to -1e-12 when nobody else ran
    assert cpu.others_busy(start, now) == pytest.approx(max(0.0, others))
    assert cpu.others_busy(start, (start[0] + 0.5, start[1], start[2])) is None  # under a second: no figure
    assert cpu.busy_warning(cpu.Cpu("x", (), 2, 2), 0.4) is None
    assert "kept 1.5 of its 2 cores busy" in cpu.busy_warning(cpu.Cpu("x", (), 2, 2), 1.5)


def test_a_cpu_run_says_what_checkpointing_and_padding_cost_it():
    from quickft.cpu_speed import step_notes
    from quickft.data.encode import Prepared

    rows = [{"input_ids": [1] * n} for n in (10, 10, 10, 30)]  # one micro-batch of 4: 120 tokens, 60 of them padding
    recipe = Recipe(model="m", data=Data(path="d"), micro_batch_size=4, gradient_checkpointing=True)
    checkpointing, padding = step_notes(recipe, Prepared(rows))
    assert "gradient checkpointing on (the recipe's gradient_checkpointing=True)" in checkpointing
    assert padding.startswith("50% of the padded batches' tokens are padding (50% with")
    packed = Recipe(model="m", data=Data(path="d", batching="packed"), micro_batch_size=4)
    assert step_notes(packed, Prepared(rows)) == []


def test_doctor_shows_the_cpu_it_reads_and_what_precision_auto_does_there(fake_cpu):
    from quickft.doctor import collect

    fake_cpu(HASWELL)
    info = collect(check_unsloth_import=False)
    layer = info["cpu"]
    assert layer["instructions"] == "AVX2" and layer["bf16 matrix instructions"] == "none"
    assert layer["precision=auto trains in"].startswith("fp32: this CPU has no bf16 matrix instructions")
    assert info["verdict"]["precision"] == "fp32"
    assert layer["matmul fp32 GFLOP/s"] > 0 and layer["matmul bf16 GFLOP/s"] > 0  # both measured, whatever the flags
    fake_cpu(SAPPHIRE_RAPIDS)
    info = collect(check_unsloth_import=False)
    assert info["cpu"]["bf16 matrix instructions"] == "AMX-BF16" and info["verdict"]["precision"] == "fp32 or bf16"


def test_packed_examples_attend_to_themselves_alone_computed_one_by_one(tiny_model_dir):
    """A packed training row (position ids restarting at each example) through the per-example attention: the same
    logits and gradients as each example alone, and as transformers' block-diagonal mask gives; padded batches and
    generation go to SDPA as before."""
    from quickft.backends import SDPA

    recipe = Recipe(model=str(tiny_model_dir), data=Data(path="unused", batching="packed"), mode="full")
    masked = load_peft(recipe, FP32, str(tiny_model_dir), local=True, for_training=False).model  # as chat loads it
    ours = load_peft(recipe, FP32, str(tiny_model_dir), local=True).model
    assert ours.config._attn_implementation == SDPA and masked.config._attn_implementation == "sdpa"
    examples = [torch.tensor([[5, 17, 42, 9, 33, 2, 8]]), torch.tensor([[7, 3, 11]]), torch.tensor([[4, 19, 6, 21]])]
    ids = torch.cat(examples, dim=1)
    positions = torch.cat([torch.arange(e.shape[1]) for e in examples])[None]
    logits = {}
    for name, model in (("ours", ours), ("masked", masked)):
        out = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        out.float().pow(2).mean().backward()
        logits[name] = (out.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    alone = torch.cat([masked(input_ids=e, use_cache=False).logits.detach() for e in examples], dim=1)
    assert torch.allclose(logits["ours"][0], alone, atol=1e-5)
    assert torch.allclose(logits["ours"][0], logits["masked"][0], atol=1e-5)
    assert torch.allclose(logits["ours"][1], logits["masked"][1], atol=1e-5)
    batch = torch.tensor([[5, 17, 42, 9], [7, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    padded = (m(input_ids=batch, attention_mask=mask, use_cache=False).logits for m in (ours, masked))
    assert torch.allclose(*padded, atol=1e-5)
    ours.eval()
    masked.eval()
    generated = (m.generate(examples[0], max_new_tokens=4, do_sample=False) for m in (ours, masked))
    assert torch.equal(*generated)


def test_attention_under_bf16_autocast_runs_in_fp32_on_a_cpu(tiny_model_dir):
    """torch's CPU attention is slower in bf16 than in fp32; under autocast quickft's attention takes fp32 inputs and
    gives fp32 out, where transformers' SDPA casts them to bf16."""
    import torch.nn.functional as F

    ours = load_peft(Recipe(model=str(tiny_model_dir), data=Data(path="d")), FP32, str(tiny_model_dir), local=True)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        seen.append(query.dtype)
        return real(query, *args, **kwargs)

    ids = torch.tensor([[5, 17, 42, 9, 33, 2]])
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours.model(input_ids=ids, use_cache=False)
        ours.model(input_ids=ids, use_cache=False)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    layers = len(ours.model.base_model.model.model.layers)
    assert seen == [torch.float32] * layers * 2
