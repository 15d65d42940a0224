"""Measuring: parameters, memory, real (non-padding) tokens, and the end-of-run summary arithmetic.

Every figure the report prints is computed here from measured values, so tests can recompute it independently.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource

from quickft.hardware import Hardware, describe, emulate

MB = 2**20


class TokenCounter:
    """Counts what the training steps really consumed (filled in by the trainer's training_step).

    On a GPU the batch's counts are device tensors: reading one waits for the GPU, so `add` only keeps them and the
    totals are settled when read (at logging steps and at the end), never inside every step.
    """

    def __init__(self):
        self._tokens = self._samples = self._padding = self._generated = 0
        self._pending: list = []
        self._pending_generated: list = []
        self.seconds: dict[str, float] = {}
        """Wall time inside parts of the steps, by name (GRPO's generation_s and reward_s)."""

    def add_generated(self, tokens) -> None:
        """Tokens a generation sampled (GRPO's completions), kept unread like `add`'s counts."""
        self._pending_generated.append(tokens)

    def timed(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @property
    def generated(self) -> int:
        self._generated += sum(int(t) for t in self._pending_generated)
        self._pending_generated.clear()
        return self._generated

    def add(self, inputs: dict) -> None:
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            real = inputs["attention_mask"].sum()
            samples = ids.shape[0]
        else:  # padding-free batch: examples concatenated in one row, each starting at position 0
            real = ids.numel()
            samples = (inputs["position_ids"] == 0).sum()
        self._pending.append((real, samples, ids.numel()))

    def _settle(self) -> None:
        for real, samples, total in self._pending:
            real, samples = int(real), int(samples)
            self._tokens += real
            self._samples += samples
            self._padding += total - real
        self._pending.clear()

    @property
    def tokens(self) -> int:
        """Non-padding tokens."""
        self._settle()
        return self._tokens

    @property
    def samples(self) -> int:
        self._settle()
        return self._samples

    @property
    def padding(self) -> int:
        """Padding tokens in the padded batches (the share of compute spent on nothing)."""
        self._settle()
        return self._padding


# Peak dense tensor-core throughput for 16-bit training, FLOP/s, from the vendors' data sheets, all by one definition:
# bf16 (fp16 where the card has no bf16: T4, V100) multiplied with FP32 accumulation, as training runs it, without
# sparsity. GeForce cards (and the A10G, L40) accumulate in FP32 at half their FP16-accumulate rate, the figure their
# spec pages lead with: the RTX 3060's 51 TFLOPS is FP16-accumulate, 25.5 FP32-accumulate. Keyed by the model in
# torch.cuda.get_device_name(), matched whole: "NVIDIA L40" is not an L4, "H100 NVL" not an H100 SXM, "Quadro T400"
# not a T4. tests/test_flops.py recomputes each entry from SMs x boost clock x the architecture's rate per SM.
PEAK_FLOPS = {
    r"H200 NVL": 835e12,
    r"H200": 989e12,
    r"H100 NVL": 835e12,
    r"H100 PCIe": 756e12,
    r"H100( 80GB HBM3| SXM5?.*)?": 989e12,
    r"A100[- ](SXM4|PCIE|80GB|40GB).*|A100": 312e12,
    r"A10G": 70e12,
    r"A10": 125e12,
    r"L40S": 362e12,
    r"L40": 181e12,
    r"L4": 121e12,
    r"RTX 4090": 165e12,
    r"RTX 3090": 71e12,
    r"RTX 3060": 25.5e12,
    r"T4": 65e12,
    r"V100-PCIE.*": 112e12,
    r"V100(-SXM2.*|-SXM3.*)?": 125e12,
}


def peak_flops(gpu_name: str | None) -> float | None:
    """The card's peak 16-bit rate, or None for a card not in the table."""
    if not gpu_name:
        return None
    model = re.sub(r"^(NVIDIA |Tesla |Quadro )?(GeForce )?", "", gpu_name.strip())
    return next((value for key, value in PEAK_FLOPS.items() if re.fullmatch(key, model)), None)


def flop_counts(model) -> dict:
    """What the FLOPs formula needs, read from the model: the weights that multiply activations (every linear layer
    of the base, output head included; embedding lookups are not matmuls), the output head's share of them, the LoRA
    adapter being trained and TRL's frozen "ref" copy of it (DPO, KTO and GRPO keep one: the reference model), layers
    and width."""
    head = model.get_output_embeddings()
    matmul = head_n = 0
    adapters: dict[str, int] = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "Conv1D":  # GPT-2's projections
            n = module.weight.numel()
        elif hasattr(module, "in_features") and hasattr(module, "out_features") and not hasattr(module, "base_layer"):
            n = module.in_features * module.out_features  # nn.Linear and bitsandbytes' Linear4bit (packed weights)
        else:
            continue
        if "lora_" in name:  # ...lora_A.<adapter name>
            adapter = name.rsplit(".", 1)[-1]
            adapters[adapter] = adapters.get(adapter, 0) + n
        else:
            matmul += n
            head_n += n if module is head else 0
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {
        "matmul_parameters": matmul,
        "head_parameters": head_n,
        "adapter_parameters": sum(n for name, n in adapters.items() if name != "ref"),
        "reference_adapter_parameters": adapters.get("ref", 0),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
    }


PASSES = {
    "training": "policy forward and backward",
    "reference": "reference forward",
    "kl": "KL estimate's policy and reference forwards",
    "generation": "generating the answers",
}
"""The passes over the data a step can run, as the report names them (each trainer's `passes()` says which it runs
besides training: DPO, KTO and GRPO with beta > 0 the reference's, KTO's loss "kto" the KL estimate's, GRPO
generation)."""


def flops_by_pass(
    counts: dict,
    mode: str,
    seq_len: float,
    *,
    reference: bool = False,
    kl: bool = False,
    generation: bool = False,
    answer_share: float = 1.0,
) -> dict[str, float]:
    """Model FLOPs per token trained, by pass (recomputation under gradient checkpointing is not counted).

    A matmul weight costs 2 FLOPs per token forward, 2 backward for the activations' gradient, and 2 more for its
    own gradient, which only trained weights need. Attention (PaLM's estimate, no causal discount) costs
    4 x layers x width x seq_len forward and twice that backward. Per token trained, with W the matmul weights a
    token meets (the base's, N, less the output head's positions where no logits are computed):
      training:   full: 6 W + 12 L d T;  lora, qlora: 4 W + 6 A + 12 L d T   (frozen base; 4-bit dequantization
                  not counted)
      reference:  2 W + 2 R + 4 L d T   (DPO, KTO, GRPO with beta > 0: the base, TRL's frozen adapter copy R, or a
                  second copy of the model, forward only)
      kl:         2 N + 2 A + 4 L d T, and the reference's 2 N + 2 R + 4 L d T (KTO: the policy and the reference
                  read each prompt with another answer of its micro-batch: as many tokens as the answers)
      generation: 2 W + 2 A + 4 L d T   (GRPO: the prompts read once and each answer token generated once)
    A = the trained adapter's weights, L = layers, d = width, T = the mean sequence length. `answer_share`: the share
    of positions whose logits are computed, GRPO's answer tokens (TRL computes its logits over the answers only, and
    generation samples one token per answer position); 1 for the other methods.
    """
    n, a, r = counts["matmul_parameters"], counts["adapter_parameters"], counts["reference_adapter_parameters"]
    w = n - counts["head_parameters"] * (1 - answer_share)
    attention = 4 * counts["layers"] * counts["hidden_size"] * seq_len
    out = {"training": (6 * w if mode == "full" else 4 * w + 6 * a) + 3 * attention}
    if reference:
        out["reference"] = 2 * w + 2 * r + attention
    if kl:
        out["kl"] = (2 * n + 2 * a + attention) + (2 * n + 2 * r + attention)
    if generation:
        out["generation"] = 2 * w + 2 * a + attention
    return out


def mfu(
    flops_per_token: float, tokens_per_s: float, gpu_name: str | None, *, precision: str = "bf16", processes: int = 1
) -> float | None:
    """Model FLOPs utilization: FLOPs per token trained (every pass included: flops_by_pass) x tokens/s of one card
    (`tokens_per_s` is the sum over `processes`, one card each), divided by the card's peak 16-bit tensor rate. None
    when the card's peak is unknown (and on CPU), and for fp32 training, which the 16-bit peak does not measure."""
    peak = peak_flops(gpu_name)
    if not peak or precision == "fp32":
        return None
    return flops_per_token * tokens_per_s / max(processes, 1) / peak


def flops_figures(
    counts: dict,
    mode: str,
    passes: dict,
    *,
    tokens: int,
    samples: int,
    generated: int,
    tokens_per_s: float,
    gpu_name: str | None,
    precision: str,
    processes: int,
    cuda: bool,
    cpu_peak: float | None = None,
) -> dict:
    """The report's FLOPs figures: FLOPs per token trained (every pass a step runs: `passes`, from the trainer), by
    pass, for `tokens` trained in `samples` sequences of which `generated` were generated (GRPO's logits are computed
    over its answers only); the FLOP/s they make at tokens/s (per process: one card each); MFU on a GPU against the
    card's data-sheet peak, on a CPU against `cpu_peak`, the matrix-multiply rate measured on it in the precision
    trained (quickft.cpu_speed.matmul_peak)."""
    share = generated / tokens if passes.get("generation") and tokens else 1.0
    seq_len = tokens / samples if samples else 0.0
    by_pass = flops_by_pass(counts, mode, seq_len, answer_share=share, **passes)
    per_token = sum(by_pass.values())
    per_s = per_token * tokens_per_s / max(processes, 1)
    if cuda:
        peak, utilization = (
            peak_flops(gpu_name),
            mfu(per_token, tokens_per_s, gpu_name, precision=precision, processes=processes),
        )
        source = "the card's peak dense 16-bit rate" if peak else None
    else:
        peak, utilization = cpu_peak, per_s / cpu_peak if cpu_peak else None
        source = f"this CPU's {precision} matrix-multiply rate, measured as the run began" if cpu_peak else None
    return {
        "flops_per_token": per_token,
        "flops_by_pass": by_pass,
        "flops_per_s": per_s,
        "peak_flops": peak,
        "peak_source": source,
        "mfu": utilization,
    }


def parameter_counts(model) -> tuple[int, int]:
    """(total, trainable) parameters; 4-bit weights are counted as the parameters they stand for."""
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT models account for packed 4-bit weights
        trainable, total = model.get_nb_trainable_parameters()
        return total, trainable
    total = trainable = 0
    for p in model.parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def describe_hardware(choice) -> str:
    return describe(choice.hardware) if choice.hardware else choice.device


class PhasePeaks:
    """Training's GPU memory peak apart from evaluation's and answering's. torch keeps one high-water mark per process,
    so a phase reads it (it belongs to training so far), resets it, runs, reads its own peak and resets it again."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.training = (0.0, 0.0)
        self.phases: dict[str, tuple[float, float]] = {}

    def _take(self) -> tuple[float, float]:
        import torch

        peaks = (torch.cuda.max_memory_allocated() / MB, torch.cuda.max_memory_reserved() / MB)
        torch.cuda.reset_peak_memory_stats()
        return peaks

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.cuda:
            yield
            return
        self.training = _larger(self.training, self._take())
        try:
            yield
        finally:
            self.phases[name] = _larger(self.phases.get(name, (0.0, 0.0)), self._take())

    def retry(self) -> None:
        """Training starts again after an out-of-memory retry: the failed attempt's peak is its own phase, and
        training's peak is the retry's alone."""
        if not self.cuda:
            return
        failed = _larger(self.training, self._take())
        self.phases["failed_attempt"] = _larger(self.phases.get("failed_attempt", (0.0, 0.0)), failed)
        self.training = (0.0, 0.0)

    def training_so_far(self) -> dict:
        """Training's peak allocated / reserved to now, in MB, evaluations and answering left out and nothing reset:
        what a metrics row quotes (torch's own mark restarts after each phase); {} on CPU."""
        if not self.cuda:
            return {}
        import torch

        now = (torch.cuda.max_memory_allocated() / MB, torch.cuda.max_memory_reserved() / MB)
        allocated, reserved = _larger(self.training, now)
        return {"gpu_peak_allocated_mb": allocated, "gpu_peak_reserved_mb": reserved}

    def report(self) -> dict:
        """Peak allocated / reserved of training (to now) and of each phase, in MB; {} on CPU."""
        if not self.cuda:
            return {}
        self.training = _larger(self.training, self._take())
        out = {"gpu_peak_allocated_mb": self.training[0], "gpu_peak_reserved_mb": self.training[1]}
        for name, (allocated, reserved) in self.phases.items():
            out[f"{name}_peak_allocated_mb"], out[f"{name}_peak_reserved_mb"] = allocated, reserved
        return out


def _larger(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return max(a[0], b[0]), max(a[1], b[1])


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work (a no-op on CPU, where nothing is queued)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def card_bytes() -> int:
    """The GPU's memory, or the emulated card's (QUICKFT_GPU_MEMORY_GB): what the reports quote as the card's."""
    import torch

    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return emulate(Hardware("cuda", p.name, (p.major, p.minor), p.total_memory), os.environ).vram_bytes


def memory(device: str) -> dict:
    """Memory now: torch's own counters on a GPU; this process's resident memory on CPU (MB)."""
    if device == "cuda":
        import torch

        return {
            "gpu_allocated_mb": torch.cuda.memory_allocated() / MB,
            "gpu_reserved_mb": torch.cuda.memory_reserved() / MB,
            "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated() / MB,
            # reserved (allocated + the caching allocator's free blocks) is what runs a 4 GB card out of memory
            "gpu_peak_reserved_mb": torch.cuda.max_memory_reserved() / MB,
            "gpu_total_mb": card_bytes() / MB,
        }
    import psutil

    rss = psutil.Process().memory_info().rss / MB
    return {"rss_mb": rss, "peak_rss_mb": max(peak_rss_mb(), rss)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB).

    Linux counts resident pages in per-CPU counters: /proc (psutil's current size) sums them exactly (since Linux
    6.16), getrusage's high-water mark takes the running total without the per-CPU parts not yet folded in. Read one
    right after the other, the peak trailed the current size by up to 0.1 MB here (kernel 6.18), enough to print
    "RSS 1,300 MB (peak 1,299 MB)". A peak quoted beside a current reading is the larger of the two (memory())."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def memory_text(row: dict) -> str:
    if "gpu_allocated_mb" in row:
        pct = 100 * row["gpu_peak_allocated_mb"] / row["gpu_total_mb"]
        return (
            f"GPU {row['gpu_allocated_mb']:,.0f} MB alloc / {row['gpu_reserved_mb']:,.0f} MB reserved / "
            f"{row['gpu_peak_allocated_mb']:,.0f} MB peak ({pct:.0f}% of {row['gpu_total_mb']:,.0f} MB)"
        )
    return f"RSS {row['rss_mb']:,.0f} MB (peak {row['peak_rss_mb']:,.0f} MB)"


def memory_summary_text(mem: dict) -> str:
    """The end report's memory line. On a GPU, the block Unsloth's notebooks print: the card, reserved before
    training, peak reserved, the part of it training added, and the share of the card."""
    if "gpu_peak_allocated_mb" in mem:
        start = mem.get("gpu_reserved_at_start_mb")
        training = (
            f" · training added {mem['gpu_peak_reserved_mb'] - start:,.2f} MB to the {start:,.2f} MB reserved at start"
            if start is not None
            else ""
        )
        share = 100 * mem["gpu_peak_reserved_mb"] / mem["gpu_total_mb"]
        phases = "".join(
            f" · {name.replace('_', ' ')} peak reserved {mem[f'{name}_peak_reserved_mb']:,.2f} MB"
            for name in ("evaluation", "answering", "failed_attempt")
            if f"{name}_peak_reserved_mb" in mem
        )
        return (
            f"training: peak reserved {mem['gpu_peak_reserved_mb']:,.2f} MB ({share:.1f}% of the card's "
            f"{mem['gpu_total_mb']:,.0f} MB){training} · peak allocated {mem['gpu_peak_allocated_mb']:,.2f} MB{phases}"
        )
    return f"peak RSS {mem['peak_rss_mb']:,.1f} MB (process resident memory; no GPU)"


def loss_summary(rows: list[dict], total_steps: int) -> dict | None:
    """Initial, final, min, max loss, improvement %, and the share of the improvement made in each third of the steps.

    The thirds compare the logged loss at the last logged step of each third (steps <= total/3, <= 2 total/3, all);
    they are left empty when the loss did not improve or fewer than 6 steps were logged.
    """
    logged = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    losses = [(s, v) for s, v in logged if math.isfinite(v)]  # a NaN / inf step is counted, not averaged
    if not losses:
        return None
    initial, final = losses[0][1], losses[-1][1]
    values = [v for _, v in losses]
    improvement = initial - final
    by_third = []
    if improvement > 0 and len(losses) >= 6:  # fewer points than that make the thirds noise
        marks = [initial]
        for k in (1, 2):
            within = [v for s, v in losses if s <= total_steps * k / 3]
            marks.append(within[-1] if within else initial)
        marks.append(final)
        by_third = [100 * (marks[i] - marks[i + 1]) / improvement for i in range(3)]
    return {
        "initial": initial,
        "final": final,
        "min": min(values),
        "max": max(values),
        "improvement_pct": 100 * improvement / initial if initial else 0.0,
        "improvement_by_third_pct": by_third,
        "non_finite_steps": [s for s, v in logged if not math.isfinite(v)],
    }


def summarize(
    *,
    rows,
    runtime_s,
    steps_time_s,
    session_steps,
    setup_s,
    setup_phases,
    session,
    earlier,
    steps,
    epochs,
    total_flos,
    mem,
) -> dict:
    """The end-of-run numbers, each with one definition.

    Rates (tokens/s, samples/s, steps/s) are this session's counts over steps_time_s, the time inside this session's
    optimizer steps: not the setup, nor the evaluation, checkpoints and logging between steps (other_s), nor a resumed
    run's earlier sessions. Totals (steps, epochs, tokens, samples, padding) are the whole run's: `earlier` (what the
    run counted before a resume; zeros otherwise) plus this `session`'s; session_* keep this session's apart. Setup
    is from the verb's start to the first step (imports and model load included), broken down by setup_phases.
    `mem` is memory() as training ended: its peaks are training's (evaluation during training included)."""
    tokens, samples = earlier["tokens"] + session["tokens"], earlier["samples"] + session["samples"]
    padding = earlier["padding"] + session["padding"]
    return {
        "train": {
            "steps": steps,
            "session_steps": session_steps,
            "epochs": epochs,
            "runtime_s": runtime_s,
            "steps_time_s": steps_time_s,
            "other_s": runtime_s - steps_time_s,
            "setup_s": setup_s,
            "setup_phases": setup_phases,
            "tokens": tokens,
            "samples": samples,
            "padding_tokens": padding,
            "padding_share": padding / (padding + tokens) if tokens else 0.0,
            "session_tokens": session["tokens"],
            "session_samples": session["samples"],
            "tokens_per_s": session["tokens"] / steps_time_s,
            "samples_per_s": session["samples"] / steps_time_s,
            "steps_per_s": session_steps / steps_time_s,
            "total_flos": total_flos,
        },
        "memory": mem,
        "loss": loss_summary(rows, steps),
    }


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    mins, s = divmod(rest, 60)
    return f"{h}h{mins:02d}m{s:02d}s" if h else f"{mins}m{s:02d}s"
