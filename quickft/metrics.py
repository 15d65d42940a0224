"""Measuring: parameters, memory, real (non-padding) tokens, and the end-of-run summary arithmetic.

Every figure the report prints is computed here from measured values, so tests can recompute it independently.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

MB = 2**20


@dataclass
class TokenCounter:
    """Counts what the training steps really consumed (filled in by the trainer's training_step)."""

    tokens: int = 0
    """Non-padding tokens."""
    samples: int = 0
    padding: int = 0
    """Padding tokens in the padded batches (the share of compute spent on nothing)."""

    def add(self, inputs: dict) -> None:
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            real = int(inputs["attention_mask"].sum())
            self.samples += ids.shape[0]
        else:  # padding-free batch: examples concatenated in one row, each starting at position 0
            real = ids.numel()
            self.samples += int((inputs["position_ids"] == 0).sum())
        self.tokens += real
        self.padding += ids.numel() - real


# Peak dense tensor-core throughput for 16-bit training (bf16, or fp16 where the card has no bf16), FLOP/s, from
# the vendors' data sheets (without sparsity). Matched by substring of torch.cuda.get_device_name().
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "RTX 3060": 51e12,
    "T4": 65e12,
    "V100": 125e12,
}


def peak_flops(gpu_name: str | None) -> float | None:
    for key, value in PEAK_FLOPS.items():  # ordered: "H100 PCIe" before "H100"
        if gpu_name and key in gpu_name:
            return value
    return None


def mfu(parameters: int, tokens_per_s: float, gpu_name: str | None) -> float | None:
    """Model FLOPs utilization: 6 x parameters x tokens/s (forward + backward of a dense transformer) divided by the
    card's peak 16-bit tensor rate. None when the card's peak is unknown (and on CPU)."""
    peak = peak_flops(gpu_name)
    return 6 * parameters * tokens_per_s / peak if peak else None


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
    from quickft.hardware import describe

    return describe(choice.hardware) if choice.hardware else choice.device


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def memory(device: str) -> dict:
    """Memory now: torch's own counters on a GPU; this process's resident memory on CPU (MB)."""
    if device == "cuda":
        import torch

        return {
            "gpu_allocated_mb": torch.cuda.memory_allocated() / MB,
            "gpu_reserved_mb": torch.cuda.memory_reserved() / MB,
            "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated() / MB,
            "gpu_total_mb": torch.cuda.get_device_properties(0).total_memory / MB,
        }
    import psutil

    return {"rss_mb": psutil.Process().memory_info().rss / MB, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
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
    if "gpu_peak_allocated_mb" in mem:
        return (
            f"allocated {mem['gpu_allocated_mb']:,.2f} MB · reserved {mem['gpu_reserved_mb']:,.2f} MB · "
            f"max allocated {mem['gpu_peak_allocated_mb']:,.2f} MB of {mem['gpu_total_mb']:,.0f} MB"
        )
    return f"peak RSS {mem['peak_rss_mb']:,.1f} MB (process resident memory; no GPU)"


def loss_summary(rows: list[dict], total_steps: int) -> dict | None:
    """Initial, final, min, max loss, improvement %, and the share of the improvement made in each third of the steps.

    The thirds compare the logged loss at the last logged step of each third (steps <= total/3, <= 2 total/3, all);
    they are left empty when the loss did not improve or fewer than 6 steps were logged.
    """
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
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
    }


def summarize(*, rows, runtime_s, setup_s, tokens, padding, samples, steps, epochs, total_flos, device) -> dict:
    """The end-of-run numbers. Rates are over runtime_s, the training loop (first step to last), not the setup."""
    mem = memory(device)
    return {
        "train": {
            "steps": steps,
            "epochs": epochs,
            "runtime_s": runtime_s,
            "setup_s": setup_s,
            "tokens": tokens,
            "samples": samples,
            "padding_tokens": padding,
            "padding_share": padding / (padding + tokens) if tokens else 0.0,
            "tokens_per_s": tokens / runtime_s,
            "samples_per_s": samples / runtime_s,
            "steps_per_s": steps / runtime_s,
            "total_flos": total_flos,
        },
        "memory": mem,
        "loss": loss_summary(rows, steps),
    }
