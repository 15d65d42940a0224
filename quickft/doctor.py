"""`quickft doctor`: one screen to paste into a bug report, layer by layer, ending with the backend verdict.

Never imports unsloth in this process (importing it patches other libraries); it is tried in a subprocess.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from quickft import cpu
from quickft.cpu_speed import matmul_peak
from quickft.hardware import UnslothStatus, choose, cpu_precision_plan, describe, detect, unsloth_status
from quickft.report import Reporter
from quickft.stack import check, read_stack, version


def unsloth_import_check(timeout: float = 180) -> str | None:
    """None if `import unsloth` works in a fresh process, else the reason (its last error line)."""
    code = "import os; os.environ.setdefault('UNSLOTH_DISABLE_STATISTICS', '1'); import unsloth"
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"import took longer than {timeout:.0f} s"
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"


def four_bit_check(device: str) -> str | None:
    """None if bitsandbytes can quantize and dequantize NF4 on this device, else why not."""
    try:
        import bitsandbytes.functional as F
        import torch

        x = torch.randn(64, 64, device=device, dtype=torch.float32)
        q, state = F.quantize_4bit(x, quant_type="nf4")
        err = (F.dequantize_4bit(q, state) - x).abs().mean().item()
        return None if err < 0.2 else f"NF4 round trip error {err:.3f} is too large"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def collect(*, check_unsloth_import: bool = True, reporter=None) -> dict:
    reporter = reporter or Reporter(quiet=True)
    with reporter.phase("importing torch and reading the GPU"):
        import torch

        hw = detect()
    status = unsloth_status()
    if status.installed and check_unsloth_import:
        with reporter.phase("importing unsloth in a fresh process (--fast skips this)"):
            status = replace(status, import_error=unsloth_import_check())
    gpus = []
    if hw.device == "cuda":
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {"name": p.name, "capability": f"{p.major}.{p.minor}", "vram_gib": round(p.total_memory / 2**30, 1)}
            )
    stack = read_stack()
    runnable = check(hw, stack, needs_4bit=True)
    bnb_error = "not tried"
    if _can_try_4bit(runnable):
        with reporter.phase("trying a bitsandbytes 4-bit round trip"):
            bnb_error = four_bit_check("cuda" if hw.device == "cuda" else "cpu")
    verdict = choose(hw, status)
    with reporter.phase("measuring the CPU's matrix-multiply peak in fp32 and bf16 (about a second)"):
        cpu_layer = cpu_facts(hw, verdict)
    precision = verdict.precision
    if hw.device == "cpu" and verdict.precision_reason and verdict.precision_reason.startswith("fp32 or bf16"):
        precision = "fp32 or bf16"
    return {
        "python": {"version": platform.python_version(), "platform": platform.platform()},
        "numeric core": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpu threads": torch.get_num_threads(),
        },
        "cpu": cpu_layer,
        "gpu": {"device": describe(hw), "gpus": gpus},
        "stack": {
            "torch build": f"{stack.torch} (CUDA {stack.cuda})" if stack.cuda else f"{stack.torch} (CPU only)",
            "torch kernels": " ".join(stack.torch_archs) or "none (CPU-only build)",
            "bitsandbytes library": stack.bnb_library or "-",
            "bitsandbytes kernels": " ".join(stack.bnb_archs) if stack.bnb_archs else "-",
            "verdict": runnable.status,
            "why": runnable.reason,
            "fix": runnable.fix,
        },
        "framework": {p: version(p) for p in ("transformers", "datasets", "accelerate", "tokenizers")},
        "efficient fine-tuning": {
            "peft": version("peft"),
            "trl": version("trl"),
            "bitsandbytes": version("bitsandbytes"),
            "4-bit here": "works" if bnb_error is None else f"no: {bnb_error}",
            "unsloth": status.version,
            "unsloth imports": _unsloth_state(status, check_unsloth_import),
            "unsloth CPU mode": "yes" if status.has_cpu_mode else "no (needs 2026.10.9+)",
            "xformers": version("xformers"),
        },
        "verdict": {
            "backend": verdict.backend if runnable.status != "cannot-run" else "none: this stack cannot run here",
            "precision": precision,
            "why": verdict.reason if runnable.status != "cannot-run" else f"{runnable.reason}; fix: {runnable.fix}",
        },
    }


PEAK_S = 0.5
"""Seconds of multiplies per dtype: doctor's one-second probe of the CPU's peak."""


def cpu_facts(hw, verdict) -> dict:
    """The CPU layer: its instructions, cores and threads, OpenMP's settings, its matrix-multiply peak per dtype
    (quickft.cpu_speed.matmul_peak, PEAK_S each) and the precision precision=auto trains in on it."""
    import torch

    found = hw.cpu or cpu.read_cpu()
    fp32, bf16 = (matmul_peak(dtype, seconds=PEAK_S) for dtype in ("float32", "bfloat16"))
    _, why = cpu_precision_plan(found, requested="auto", mode="lora", backend="peft")
    return {
        "model": found.name,
        "cores": f"{found.physical_cores} physical, {found.usable_cores} usable by this process; torch runs "
        f"{torch.get_num_threads()} threads",
        "instructions": ", ".join(found.features) or ("none of " + ", ".join(cpu.ISA.values())),
        "bf16 matrix instructions": found.bf16_instructions or "none",
        "torch's kernels": torch.backends.cpu.get_cpu_capability(),
        "OpenMP": cpu.openmp_text(cpu.openmp_state()),
        "matmul fp32 GFLOP/s": round(fp32["flops_per_s"] / 1e9, 1),
        "matmul bf16 GFLOP/s": round(bf16["flops_per_s"] / 1e9, 1),
        "bf16 / fp32": round(bf16["flops_per_s"] / fp32["flops_per_s"], 2),
        "precision=auto trains in": why if hw.device == "cpu" else f"{verdict.precision} (on the {hw.device})",
    }


def _can_try_4bit(runnable) -> bool:
    """A 4-bit round trip is worth trying only where bitsandbytes is installed and has kernels for this GPU."""
    return version("bitsandbytes") is not None and runnable.status != "cannot-run"


def _unsloth_state(status: UnslothStatus, checked: bool) -> str:
    if not status.installed:
        return "not installed"
    if not checked:
        return "not checked (--fast)"
    return "yes" if status.import_error is None else f"no: {status.import_error}"


def print_report(info: dict, console: Console) -> None:
    table = Table(title="quickft doctor", show_header=False)
    table.add_column("layer", style="bold")
    table.add_column("item")
    table.add_column("state")
    for layer, items in info.items():
        first = True
        for key, value in items.items():
            if key == "gpus":
                value = "; ".join(f"{g['name']} (cc {g['capability']}, {g['vram_gib']} GiB)" for g in value) or "none"
            table.add_row(layer if first else "", key, "-" if value is None else str(value))
            first = False
        table.add_section()
    console.print(table)
    stack, v = info["stack"], info["verdict"]
    if stack["verdict"] == "cannot-run":
        console.print(f"[bold red]cannot train here:[/bold red] {stack['why']}", highlight=False)
        console.print(f"  fix: {stack['fix']}", highlight=False)
        return
    console.print(f"[bold]auto picks:[/bold] {v['backend']} in {v['precision']} — {v['why']}", highlight=False)


def main(*, as_json: bool = False, check_unsloth_import: bool = True, console: Console | None = None) -> dict:
    console = console or Console()
    # what it is doing, while it does it: on stderr, so --json keeps stdout to the JSON
    info = collect(check_unsloth_import=check_unsloth_import, reporter=Reporter(Console(stderr=True)))
    if as_json:
        import json

        print(json.dumps(info, indent=2, default=str))
    else:
        print_report(info, console)
    return info
