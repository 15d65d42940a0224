"""Measuring this CPU's speed and training in bf16 on it: its matrix-multiply peak per dtype (MFU's denominator),
the probe that times the run's own forward and backward passes in fp32 and in bf16, and what a bf16 LoRA run holds
(frozen weights in bf16, the adapter and the LoRA sums in fp32), and what two of a recipe's settings cost a CPU
(step_notes). torch is imported inside each function.
"""

from __future__ import annotations

import math
import time

from quickft.data.batching import padding_share

MATMUL_SHAPE = (1024, 2048, 2048)
"""(m, k, n) of the peak probe's multiply: large enough for the matrix units' full rate, 8.6 GFLOP each."""


def matmul_peak(dtype: str, seconds: float = 0.5, shape: tuple[int, int, int] = MATMUL_SHAPE) -> dict:
    """This CPU's matrix-multiply rate in `dtype` ("float32", "bfloat16"), with torch's threads as they are: the
    fastest of the multiplies run for `seconds` after two warm-up ones (the best, since other processes only slow a
    multiply down). Returns FLOP/s, the FLOPs of one multiply, how many ran and the seconds they took in all."""
    import torch

    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(getattr(torch, dtype))
    b = torch.randn(k, n, generator=gen).to(getattr(torch, dtype))
    flops = 2 * m * k * n
    for _ in range(2):
        torch.mm(a, b)
    best, count, began = math.inf, 0, time.perf_counter()
    while count < 2 or time.perf_counter() - began < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
        count += 1
    return {
        "dtype": dtype,
        "flops_per_s": flops / best,
        "flops": flops,
        "multiplies": count,
        "seconds": time.perf_counter() - began,
    }


def frozen_fp32(model) -> list:
    """The frozen floating-point weights a bf16 LoRA run holds in bf16: every fp32 parameter that does not train,
    except adapters (PEFT keeps every adapter in fp32, TRL's frozen "ref" copy included) and those the model keeps
    in fp32 whatever the dtype it is loaded in (transformers' _keep_in_fp32_modules)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep = [
        *(getattr(base, "_keep_in_fp32_modules", None) or []),
        *(getattr(base, "_keep_in_fp32_modules_strict", None) or []),
    ]
    seen, out = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or p.requires_grad or p.dtype != torch.float32 or "lora_" in name:
            continue
        seen.add(id(p))
        if not any(k in name.split(".") for k in keep):
            out.append(p)
    return out


def cast_frozen(model, dtype) -> int:
    """Hold the frozen weights (frozen_fp32) in `dtype` from now on, as loading the model in it would (the same
    rounding); the adapter stays fp32. Returns the weights cast."""
    params = frozen_fp32(model)
    for p in params:
        p.data = p.data.to(dtype)
    return sum(p.numel() for p in params)


def keep_lora_sums_fp32(model) -> list:
    """Under bf16 autocast, each LoRA layer adds its adapter's output to its frozen layer's; in bf16 (8 bits of
    mantissa) an adapter's change smaller than half the last bit of that output is rounded away, so the first
    steps' updates barely reach the loss (SmolLM2, 8 steps: the loss 0.04-0.07 above fp32's from the first update on;
    with the sums in fp32, within 0.01: docs/benchmarks.md). A hook on each adapted layer's frozen base hands its
    output on in fp32 while autocast is on: the sum keeps the change, and so does what follows (the residual stream);
    the multiplies stay bf16, and the last hidden state goes to the output head in bf16, as autocast would multiply
    it. Without autocast (generating answers) they do nothing: answers are plain bf16, as chat's are. Returns the
    hooks' handles."""
    import torch

    def upcast(module, args, output):
        if output.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"):
            return output.float()
        return None

    def head_input_in_bf16(module, args, output):
        # the output head multiplies in bf16 under autocast anyway; handed fp32, TRL's chunked loss converts the
        # head's (bf16) weight to fp32 for every chunk, which autocast then converts back: 7% of a SmolLM2 step
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is not None and hidden.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
            output.last_hidden_state = hidden.to(torch.bfloat16)
        return output

    adapted = [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    hooks = [m.base_layer.register_forward_hook(upcast) for m in adapted]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if adapted and decoder is not None and decoder is not base:
        hooks.append(decoder.register_forward_hook(head_input_in_bf16))
    return hooks


def lora_in_bf16(model):
    """A LoRA model loaded in fp32, made to train as a bf16 LoRA run on a CPU does: frozen weights in bf16 (as loading
    it in bf16 would), the adapter in fp32, and the LoRA sums in fp32 under autocast (keep_lora_sums_fp32). Returns
    the function that puts it back as it was loaded (its fp32 weights, kept meanwhile, and no hooks): a run trained so
    answers in fp32, as quickft chat, eval and export then load it."""
    import torch

    frozen = frozen_fp32(model)
    fp32 = [p.data for p in frozen]
    for p in frozen:
        p.data = p.data.to(torch.bfloat16)
    hooks = keep_lora_sums_fp32(model)

    def restore() -> None:
        for p, data in zip(frozen, fp32, strict=True):
            p.data = data
        for hook in hooks:
            hook.remove()

    return restore


PROBE_ROUNDS = (2, 25)
"""Timed rounds of the precision probe (one pass in each precision per round): at least 2, and on until
PROBE_MIN_S has passed, so that fast passes get enough samples for their fastest to be their real speed."""
PROBE_MIN_S = 0.5
PROBE_BUDGET_S = 20.0
"""No new round starts past this many seconds (at least one runs): a large model's passes take seconds each."""


def time_passes(model, batch: dict, *, cast: bool, budget_s: float = PROBE_BUDGET_S) -> dict:
    """Seconds per forward and backward pass of `batch` (a micro-batch as training feeds it, labels included) through
    `model`, in fp32 and in bf16: autocast, and with `cast` the frozen weights in bf16 as well, as a bf16 LoRA run
    holds them (a full fine-tune keeps fp32 master weights under autocast). One warm-up pass each (oneDNN builds its
    kernels), then rounds of one timed pass each, alternating which goes first (PROBE_ROUNDS, PROBE_MIN_S,
    `budget_s`). The fastest pass of each counts: other processes only ever slow a pass down. The model is left as
    it was: fp32 weights, no gradients, its train/eval mode, and torch's random state (dropout) untouched."""
    import torch

    frozen = frozen_fp32(model) if cast else []
    hooks = keep_lora_sums_fp32(model) if cast else []  # as a bf16 LoRA run trains (inactive without autocast)
    fp32_data = [p.data for p in frozen]
    bf16_data = None
    was_training = model.training

    def one(precision: str) -> float:
        nonlocal bf16_data
        if frozen and precision == "bf16" and bf16_data is None:
            bf16_data = [d.to(torch.bfloat16) for d in fp32_data]  # once, as the run would: not timed
        if frozen:
            for p, d in zip(frozen, bf16_data if precision == "bf16" else fp32_data, strict=True):
                p.data = d
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch, use_cache=False).loss  # as TRL's trainers call it
        loss.backward()
        elapsed = time.perf_counter() - began
        model.zero_grad(set_to_none=True)
        return elapsed

    times = {"fp32": [], "bf16": []}
    model.train()  # as training runs it: dropout, and gradient checkpointing (which applies in training mode only)
    try:
        with torch.random.fork_rng(devices=[]):
            warmup = {p: one(p) for p in ("fp32", "bf16")}
            began, fewest, most = time.perf_counter(), *PROBE_ROUNDS
            for i in range(most):
                spent = time.perf_counter() - began
                if (i >= fewest and spent >= PROBE_MIN_S) or (i and spent >= budget_s):
                    break
                for precision in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
                    times[precision].append(one(precision))
    finally:
        for p, d in zip(frozen, fp32_data, strict=True):
            p.data = d
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    ids = batch["input_ids"]
    return {
        "fp32_s": min(times["fp32"]),
        "bf16_s": min(times["bf16"]),
        "passes": times,
        "warmup_s": warmup,
        "batch_shape": list(ids.shape),
        "frozen_cast": sum(p.numel() for p in frozen),
    }


def probe_batch(recipe, trainer, prepared, sequences: int | None) -> dict:
    """A micro-batch of the run's own shape for the CPU precision probe: SFT's is real, rows spread over the
    training set put through the trainer's collator (padded, or packed, as training sees them); the other methods'
    trainers read pairs or prompts, so theirs is `sequences` (as many as a micro-batch's forward pass holds: the
    method's room says, methods.<room>.probe_sequences), of their mean length in tokens, labelled as language
    modelling."""
    import torch

    if sequences is None:  # the method's trainer collates its own rows (SFT): the probe uses them
        rows = trainer.train_dataset
        n = min(recipe.micro_batch_size, len(rows))
        return trainer.data_collator([rows[i * (len(rows) // n)] for i in range(n)])
    length = round(prepared.tokens / max(1, len(prepared.rows) * (sequences // recipe.micro_batch_size)))
    length = max(8, min(recipe.max_seq_length, length))
    config = trainer.model.config
    vocab = (config.get_text_config() if hasattr(config, "get_text_config") else config).vocab_size
    ids = torch.randint(0, vocab, (sequences, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


PADDING_NOTE = 0.2
"""A CPU run whose padded batches would be at least this share padding gets a note."""


def step_notes(recipe, prepared) -> list[str]:
    """On a CPU, what two of the recipe's settings cost there, and the setting that saves it: gradient checkpointing
    (a third more compute per step, for memory a CPU machine seldom lacks), and padded batches of uneven examples
    (a padding token costs the CPU as much as a real one)."""
    notes = []
    if recipe.gradient_checkpointing:
        notes.append(
            "gradient checkpointing on (the recipe's gradient_checkpointing=True): on a CPU it recomputes every "
            "layer's forward pass during the backward, about a third more compute per step, to hold fewer "
            "activations; set gradient_checkpointing=false unless memory runs short"
        )
    lengths = [len(r["input_ids"]) for r in prepared.rows if "input_ids" in r]
    if recipe.micro_batch_size > 1 and recipe.data.batching == "padded" and lengths:  # SFT's rows (input_ids)
        share, grouped = (
            padding_share(lengths, recipe.micro_batch_size, mode, recipe.seed) for mode in ("padded", "grouped")
        )
        if share >= PADDING_NOTE:
            notes.append(
                f"{share:.0%} of the padded batches' tokens are padding ({grouped:.0%} with "
                'data.batching="grouped", none with "packed"): on a CPU a padding token costs as much as a real one'
            )
    return notes
