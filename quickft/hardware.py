"""What machine is this, and what should train on it: backend, precision, 4-bit — as a pure function of a description.

`choose()` imports nothing, so the policy is testable as a table of machines (CPU, GTX 1050 Ti, T4, A100, ...).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from quickft.cpu import read_cpu
from quickft.errors import UserError

if TYPE_CHECKING:
    from quickft.cpu import Cpu

UNSLOTH_MIN_CAPABILITY = (7, 0)  # Unsloth's Triton kernels; Pascal (6.x) fails with GPUTooOldForTriton
BF16_MIN_CAPABILITY = (8, 0)
UNSLOTH_CPU_MODE = (2026, 10, 9)  # first unsloth release that trains without an accelerator


@dataclass
class Hardware:
    """The facts the backend decision depends on."""

    device: Literal["cuda", "mps", "cpu"]
    gpu_name: str | None = None
    capability: tuple[int, int] | None = None
    vram_bytes: int | None = None
    physical_capability: tuple[int, int] | None = None
    """Set when this card stands in for a smaller or older one (emulate()): then capability and vram_bytes are the
    emulated card's, which every decision uses, and these two the card's own, whose kernels run."""
    physical_vram_bytes: int | None = None
    cpu: Cpu | None = None
    """The CPU (quickft.cpu.read_cpu): its bf16 instructions and cores decide the precision and threads on a CPU."""

    @property
    def emulated(self) -> bool:
        return self.physical_capability is not None

    @property
    def kernel_capability(self) -> tuple[int, int] | None:
        """The capability whose kernels run: the physical card's, emulated or not."""
        return self.physical_capability or self.capability


EMULATION_VARIABLES = ("QUICKFT_GPU_MEMORY_GB", "QUICKFT_GPU_CAPABILITY")


def emulate(hw: Hardware, env) -> Hardware:
    """The card $QUICKFT_GPU_MEMORY_GB and $QUICKFT_GPU_CAPABILITY describe, standing on this one: a 4 GB GTX 1050 Ti
    on an H100 is QUICKFT_GPU_MEMORY_GB=4 QUICKFT_GPU_CAPABILITY=6.1. The backend, precision and attention are then
    chosen as for that card (fp16 and PEFT below 7.0, no flash attention below 8.0), torch's memory is capped at its
    size (less this process's CUDA context, see backends.cap_gpu_memory), and every report quotes its memory. The
    kernels and their speed stay the physical card's. Unchanged when neither is set, or on no GPU."""
    memory, capability = (env.get(k) or None for k in EMULATION_VARIABLES)
    if hw.device != "cuda" or not (memory or capability):
        return hw

    vram = hw.vram_bytes
    if memory:
        try:
            vram = min(hw.vram_bytes, int(float(memory) * 2**30))
        except ValueError:
            vram = 0
        if vram <= 0:
            raise UserError(
                f"QUICKFT_GPU_MEMORY_GB={memory!r} is not a positive number of GiB", hint="e.g. QUICKFT_GPU_MEMORY_GB=4"
            )
    cc = hw.capability
    if capability:
        found = re.fullmatch(r"\s*(\d+)\.(\d)\s*", capability)
        if not found:
            raise UserError(
                f"QUICKFT_GPU_CAPABILITY={capability!r} is not a compute capability",
                hint="e.g. QUICKFT_GPU_CAPABILITY=6.1 (GTX 10xx), 7.0 (V100), 7.5 (T4), 8.0 (A100)",
            )
        cc = min(hw.capability, (int(found[1]), int(found[2])))  # a newer card than this one cannot be emulated
    return Hardware("cuda", hw.gpu_name, cc, vram, physical_capability=hw.capability, physical_vram_bytes=hw.vram_bytes)


@dataclass
class UnslothStatus:
    installed: bool
    version: str | None = None
    import_error: str | None = None
    """Why `import unsloth` failed, when it was tried (None: it imported, or it was not tried)."""
    triton: bool = True
    """Whether triton is installed: Unsloth's GPU kernels are Triton kernels."""

    @property
    def has_cpu_mode(self) -> bool:
        try:
            return tuple(int(p) for p in (self.version or "0").split(".")[:3]) >= UNSLOTH_CPU_MODE
        except ValueError:
            return False


@dataclass
class Choice:
    """What quickft will train with, and why. Saved in every run directory as backend.json."""

    backend: Literal["unsloth", "peft"]
    reason: str
    precision: Literal["bf16", "fp16", "fp32"]
    load_in_4bit: bool
    device: str
    hardware: Hardware | None = None
    """The machine the decision was made for (saved with it, shown in the report's header)."""
    stack: dict | None = None
    """The installed stack and its verdict for this machine (quickft.stack), when it was checked."""
    precision_reason: str | None = None
    """Why this precision, where the machine decided it (on a CPU: its bf16 instructions and the probe's timings)."""
    cpu: dict | None = None
    """On a CPU: the precision probe's timings, the matrix-multiply peak of the precision trained (MFU's
    denominator), the threads and how busy other processes kept the cores (quickft.cpu)."""

    def summary(self, mode: str | None = None) -> str:
        quant = "bitsandbytes 4-bit" if self.load_in_4bit else "16/32-bit weights"
        if self.backend == "unsloth":
            name = "Unsloth"
        else:  # a full fine-tune has no adapter: PEFT is not involved, transformers trains every weight
            name = "transformers (full fine-tune, no adapter)" if mode == "full" else "PEFT"
        return f"{name} + {quant}, {self.precision} on {self.device}"

    def to_dict(self) -> dict:
        return asdict(self)


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"
"""Where Linux's NVIDIA kernel module says its version ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01 ...")."""
DRIVER_FLOOR = {13: 580, 12: 525, 11: 450}
"""The oldest Linux driver (major version) each CUDA major release runs on, with CUDA's minor-version compatibility."""


def driver_problem(cuda_available: bool, torch_cuda: str | None, driver_text: str | None) -> str | None:
    """Why a machine with an NVIDIA driver gets no GPU from this torch, or None. Without this a driver older than
    the torch build's CUDA needs means torch.cuda.is_available() is False, and training runs on the CPU in silence."""
    if cuda_available or not driver_text:
        return None
    found = re.search(r"Kernel Module(?: for [\w]+)?\s+(\d+)\.(\d+)", driver_text)
    if not found:
        return None
    driver = f"{found[1]}.{found[2]}"
    if torch_cuda is None:
        return f"an NVIDIA driver ({driver}) is installed, but this torch is a CPU-only build"
    needed = DRIVER_FLOOR.get(int(torch_cuda.split(".")[0]))
    if needed and int(found[1]) < needed:
        return (
            f"the NVIDIA driver is {driver}, and this torch (CUDA {torch_cuda}) needs driver {needed} or newer, so "
            "torch sees no GPU"
        )
    return f"an NVIDIA driver ({driver}) is installed, but torch (CUDA {torch_cuda}) cannot use the GPU"


def detect() -> Hardware:
    """Read the hardware through torch (imports torch, never unsloth). A GPU that torch cannot use (an NVIDIA driver
    too old for this torch's CUDA, a CPU-only torch) stops here with exit 2 and both fixes, instead of training on
    the CPU; CUDA_VISIBLE_DEVICES="" is how to mean the CPU on such a machine."""
    import torch

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        try:
            text = open(NVIDIA_DRIVER_FILE, encoding="utf-8").read()
        except OSError:
            text = None
        problem = driver_problem(torch.cuda.is_available(), torch.version.cuda, text)
        if problem:
            raise UserError(
                problem,
                hint="update the NVIDIA driver (CUDA 13 builds need 580+), or install the torch 2.7.1 + CUDA 12.6 "
                "stack that runs on drivers from 525 (`make install-old-gpu`, also the one for Pascal and Volta "
                'cards); to train on the CPU anyway, set CUDA_VISIBLE_DEVICES=""',
            )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return emulate(Hardware("cuda", props.name, (props.major, props.minor), props.total_memory), os.environ)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Hardware("mps", "Apple GPU (MPS)")

    return Hardware("cpu", cpu=read_cpu())


def unsloth_status() -> UnslothStatus:
    """Whether unsloth is installed, without importing it (importing it patches transformers, trl and peft)."""
    try:
        importlib.metadata.version("triton")
        triton = True
    except importlib.metadata.PackageNotFoundError:
        triton = False
    try:
        return UnslothStatus(True, importlib.metadata.version("unsloth"), triton=triton)
    except importlib.metadata.PackageNotFoundError:
        return UnslothStatus(False, triton=triton)


def describe(hw: Hardware) -> str:
    if hw.device == "cuda" and hw.emulated:
        cc, own = (f"{c[0]}.{c[1]}" for c in (hw.capability, hw.physical_capability))
        return (
            f"an emulated {hw.vram_bytes / 2**30:.1f} GiB card of compute capability {cc}, on {hw.gpu_name} "
            f"({hw.physical_vram_bytes / 2**30:.1f} GiB, {own}; QUICKFT_GPU_MEMORY_GB / QUICKFT_GPU_CAPABILITY): "
            f"memory capped and backend, precision and attention chosen as for {cc}; the kernels and their speed are "
            f"the {hw.gpu_name}'s"
        )
    if hw.device == "cuda":
        return (
            f"{hw.gpu_name} (compute capability {hw.capability[0]}.{hw.capability[1]}, {hw.vram_bytes / 2**30:.1f} GiB)"
        )
    if hw.device == "mps":
        return "Apple GPU (MPS)"
    if hw.cpu is None:
        return f"CPU ({os.cpu_count()} cores)"
    cores = f"{hw.cpu.physical_cores} physical cores" + (
        f", {hw.cpu.usable_cores} usable" if hw.cpu.usable_cores < hw.cpu.physical_cores else ""
    )
    isa = ", ".join(hw.cpu.features[:2]) if hw.cpu.features else "instruction sets unknown"
    return f"CPU: {hw.cpu.name} ({cores}; {isa})"


def choose(
    hw: Hardware,
    unsloth: UnslothStatus,
    *,
    requested: Literal["auto", "unsloth", "peft"] = "auto",
    mode: Literal["lora", "qlora", "full"] = "lora",
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto",
    unsloth_refuses: str | None = None,
    processes: int = 1,
) -> Choice:
    """Pick backend, precision and quantization for this machine. Raises ValueError when a request can't work here.

    `unsloth_refuses` is Unsloth's reason for not taking this architecture, when it is already known. `processes` > 1
    (started by torchrun or accelerate launch): data-parallel training, which quickft runs on the PEFT path only.
    """
    choice = _choose(hw, unsloth, requested, mode, precision, unsloth_refuses, processes)
    if hw.device == "cpu":
        _, why = cpu_precision_plan(hw.cpu, requested=precision, mode=mode, backend=choice.backend, processes=processes)
        choice.precision_reason = why
    return choice


def _choose(hw, unsloth, requested, mode, precision, unsloth_refuses, processes) -> Choice:
    resolved_precision = _precision(hw, precision)
    load_in_4bit = mode == "qlora"
    four_bit_note = ""
    if load_in_4bit and hw.device == "mps":
        load_in_4bit = False
        four_bit_note = "; bitsandbytes 4-bit does not run on MPS, so qlora runs with 16/32-bit weights"
    elif load_in_4bit and hw.device == "cpu":
        four_bit_note = "; 4-bit on CPU runs through bitsandbytes' CPU backend (works, but slowly)"

    why_not = why_not_unsloth(hw, unsloth, unsloth_refuses, processes)
    if requested == "peft":
        return Choice(
            "peft", "PEFT requested (--backend peft)" + four_bit_note, resolved_precision, load_in_4bit, hw.device, hw
        )
    if requested == "unsloth":
        cpu_mode_ok = (
            hw.device == "cpu" and unsloth.installed and unsloth.has_cpu_mode and not unsloth.import_error
        ) and processes == 1
        if why_not and not cpu_mode_ok:
            raise ValueError(f"Unsloth cannot run here: {why_not}")
        reason = "Unsloth requested (--backend unsloth)"
        if hw.device == "cpu":
            reason += f"; running in Unsloth's CPU mode (unsloth {unsloth.version}), which brings no speedup on CPU"
        return Choice("unsloth", reason + four_bit_note, resolved_precision, load_in_4bit, hw.device, hw)
    if why_not is None:
        return Choice(
            "unsloth", f"Unsloth: {describe(hw)} is supported", resolved_precision, load_in_4bit, hw.device, hw
        )
    quant = "bitsandbytes 4-bit" if load_in_4bit else "16/32-bit weights"
    plain = "transformers (full fine-tune)" if mode == "full" else "PEFT"
    return Choice(
        "peft",
        f"Unsloth not used: {why_not} — using {plain} + {quant}, {_precision_text(hw, precision, mode, processes)}"
        f"{four_bit_note}",
        resolved_precision,
        load_in_4bit,
        hw.device,
        hw,
    )


def why_not_unsloth(hw: Hardware, unsloth: UnslothStatus, refuses: str | None = None, processes: int = 1) -> str | None:
    """Why Unsloth's GPU path cannot run here, or None if nothing stops it."""
    if processes > 1:
        return (
            f"{processes} processes (torchrun / accelerate launch): quickft trains data-parallel (DDP) on the "
            "PEFT path only"
        )
    if hw.device == "cpu":
        return "no GPU found (on CPU Unsloth brings no speedup)"
    if hw.device == "mps":
        return "Apple GPUs (MPS) are not supported by Unsloth"
    if hw.capability < UNSLOTH_MIN_CAPABILITY:
        major, minor = hw.capability
        card = "the emulated card" if hw.emulated else hw.gpu_name
        return f"{card} is compute capability {major}.{minor}; Unsloth's kernels need ≥ 7.0"
    if not unsloth.installed:
        return "unsloth is not installed (pip install 'quickft[unsloth]', or `make install`)"
    if not unsloth.triton:
        return "triton is not installed, and Unsloth's GPU kernels are Triton kernels"
    if unsloth.import_error:
        return f"unsloth failed to import: {unsloth.import_error}"
    if refuses:
        return f"Unsloth does not support this model: {refuses}"
    return None


def _precision_text(hw: Hardware, requested: str, mode: str, processes: int) -> str:
    """The precision as the backend's reason names it: on a CPU that the probe decides for, both candidates."""
    resolved = _precision(hw, requested)
    if (
        hw.device == "cpu"
        and cpu_precision_plan(hw.cpu, requested=requested, mode=mode, backend="peft", processes=processes)[0]
    ):
        return "fp32 or bf16 (a probe of the run's own passes picks)"
    return resolved


def _precision(hw: Hardware, requested: str) -> str:
    bf16_ok = hw.device == "cuda" and hw.capability >= BF16_MIN_CAPABILITY
    if requested == "auto":
        if hw.device == "cuda":
            return "bf16" if bf16_ok else "fp16"
        return "fp32"
    if requested == "bf16" and hw.device == "cuda" and not bf16_ok:
        raise ValueError(f"precision=bf16 needs compute capability ≥ 8.0; {hw.gpu_name} has {hw.capability}: use fp16")
    if requested == "fp16" and hw.device == "cpu":
        raise ValueError("precision=fp16 does not train on CPU: use fp32 or bf16")
    return requested


BF16_MARGIN = 0.10
"""On a CPU, bf16 is picked only when the probe's bf16 pass is at least this much faster than fp32's: it rounds every
multiply, so a tie goes to fp32."""


MIN_PROBED_WEIGHTS = 5_000_000
"""Below this many weights a LoRA run on a CPU trains in fp32 without a probe: its matrices are too small for bf16 to
pay (a 3.5M-weight Llama trained 37x slower in TRL's bf16 defaults than in fp32, shared/PLATFORM.md), and its passes
last milliseconds, too short to time reliably, so a probe would pick by noise and the same recipe could train in
either precision from one run to the next. The 6.6M-weight Llama 512 wide of tests/test_cpu.py is probed (bf16 won,
29 vs 41 ms a pass)."""


def cpu_precision_plan(
    cpu: Cpu | None, *, requested: str, mode: str, backend: str, processes: int = 1, weights: int | None = None
) -> tuple[bool, str]:
    """precision=auto on a CPU: (whether the probe times the run's own passes in fp32 and bf16, and why; or why the
    run trains in fp32 without one). A CPU without bf16 matrix instructions (AVX2 only, AVX512F without BF16)
    converts bf16 to fp32 around every multiply, so it never pays; with them, what pays depends on the model's
    shapes (small matrices lose more to the conversions than the matrix units win), so the probe measures it. Only
    LoRA is probed: its bf16 losses were checked against fp32's (tests/test_cpu.py), a full fine-tune's were not
    and came out worse."""
    if requested != "auto":
        return False, f"precision={requested}, as the recipe says"
    if backend == "unsloth":
        return False, "Unsloth's CPU mode sets its own precision"
    if mode == "qlora":
        return False, "fp32: qlora on a CPU multiplies through bitsandbytes' 4-bit CPU kernels (not probed)"
    if mode == "full":
        return False, (
            "fp32: a full fine-tune trains every weight, and bf16 autocast cost the demo its accuracy (91% of unseen "
            "sums after 2,100 steps, where fp32 reaches 95%); precision=bf16 chooses it"
        )
    if processes > 1:
        return False, f"fp32: {processes} processes share this CPU, so a probe's timings would not say which is faster"
    if cpu is not None and cpu.flags_read and not cpu.bf16_instructions:
        has = f"it has {', '.join(cpu.features)}" if cpu.features else "none of AVX2, AVX512F"
        return False, (
            f"fp32: this CPU has no bf16 matrix instructions ({has}), so bf16 would be converted to fp32 around "
            "every multiply: slower"
        )
    if weights is not None and weights < MIN_PROBED_WEIGHTS:
        return False, (
            f"fp32: a model of {weights:,} weights multiplies matrices too small for bf16 to pay, in passes too short "
            "to time (not probed below 5M weights); precision=bf16 chooses it"
        )
    has = f"this CPU has {cpu.bf16_instructions}" if cpu and cpu.bf16_instructions else "this CPU's flags are unknown"
    return True, f"fp32 or bf16, whichever a probe of this run's own passes finds faster ({has})"


def pick_cpu_precision(cpu: Cpu | None, fp32_s: float, bf16_s: float, margin: float = BF16_MARGIN) -> tuple[str, str]:
    """(precision, why) from the probe's seconds per forward and backward pass in each: bf16 when it is at least
    `margin` faster, else fp32."""
    has = f"this CPU has {cpu.bf16_instructions}" if cpu and cpu.bf16_instructions else "this CPU's flags are unknown"
    probe = f"probe {seconds(bf16_s)} vs {seconds(fp32_s)} per forward and backward pass (bf16 vs fp32)"
    if bf16_s <= (1 - margin) * fp32_s:
        return "bf16", f"bf16: {has}; {probe}"
    return "fp32", f"fp32: bf16 is not {margin:.0%} faster on this model, though {has}; {probe}"


def seconds(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{1000 * s:.0f} ms" if s >= 0.01 else f"{1000 * s:.1f} ms"
