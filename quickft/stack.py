"""Can the installed stack run on this GPU? Checked before any weights load, from facts readable without a GPU.

A torch or bitsandbytes wheel carries GPU code for a fixed list of architectures. A card outside that list fails at
its first CUDA kernel ("no kernel image is available for execution on the device"), after minutes of loading.
`check()` is a pure function of a `Stack` description, so the verdict is testable as a table of machines against
the real architecture lists of the torch builds quickft supports; `read_stack()` fills that description in.

`python -m quickft.stack` prints the installed stack; `--require sm_60,sm_70` fails unless torch and bitsandbytes
both have kernels for those architectures (the old-GPU install route runs it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import mmap
import os
import re
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from quickft.errors import UserError
from quickft.hardware import Hardware, UnslothStatus, detect, why_not_unsloth

OLD_GPU_INSTALL = "make install-old-gpu"
OLD_GPU_PIP = "python -m venv .venv-old-gpu && .venv-old-gpu/bin/pip install -c constraints/old-gpu.txt -e ."
OLD_GPU_WHAT = "torch 2.7.1+cu126 (kernels sm_50 ... sm_90), bitsandbytes' CUDA 12.6 library, no Unsloth"
DEFAULT_INSTALL = "make install"


@dataclass
class Stack:
    """What the installed libraries can run on, as far as it can be read without a GPU."""

    torch: str
    cuda: str | None
    """torch.version.cuda: None for a CPU-only build."""
    torch_archs: list[str] = field(default_factory=list)
    """The build's GPU targets, e.g. ["sm_60", "sm_70", "compute_90"] (torch._C._cuda_getArchFlags())."""
    bnb: str | None = None
    """bitsandbytes version, None if not installed."""
    bnb_library: str | None = None
    """The CUDA library bitsandbytes would load under this torch, e.g. libbitsandbytes_cuda126.so."""
    bnb_archs: list[str] | None = None
    """That library's GPU targets, read from its fat binary (None: unknown)."""
    triton: str | None = None
    unsloth: str | None = None


@dataclass
class Verdict:
    """runs: everything, Unsloth included where the machine allows it; peft-only: PEFT runs, Unsloth cannot;
    cannot-run: nothing will train on this GPU with this stack (`fix` says what to install)."""

    status: Literal["runs", "peft-only", "cannot-run"]
    reason: str
    fix: str | None = None
    unsloth_blocker: str | None = None
    """Why Unsloth cannot run with this stack (None: nothing in the stack stops it)."""

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- pure rules


def parse_arch(flag: str) -> tuple[str, tuple[int, int], str]:
    """'sm_61' -> ('sm', (6, 1), ''); 'compute_90' -> ('compute', (9, 0), ''); 'sm_90a' -> ('sm', (9, 0), 'a')."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", flag.strip())
    if not m:
        raise ValueError(f"not a CUDA architecture flag: {flag!r}")
    return m.group(1), (int(m.group(2)), int(m.group(3))), m.group(4)


def runs_on(archs: list[str], capability: tuple[int, int]) -> bool:
    """Whether code built for `archs` runs on a GPU of this compute capability.

    SASS (sm_XY) runs on the same major version with an equal or higher minor (sm_60 runs on a 6.1 card);
    'a' variants (sm_90a) run only on exactly that architecture. PTX (compute_XY) is JIT-compiled by the driver for
    any capability >= X.Y.
    """
    for flag in archs:
        kind, (major, minor), suffix = parse_arch(flag)
        if kind == "compute" and capability >= (major, minor):
            return True
        if kind == "sm":
            if suffix == "a" and capability == (major, minor):
                return True
            if suffix != "a" and capability[0] == major and capability[1] >= minor:
                return True
    return False


def describe_archs(archs: list[str]) -> str:
    return " ".join(archs) if archs else "no GPU code"


def check(hw: Hardware, stack: Stack, *, needs_4bit: bool = False) -> Verdict:
    """Will this stack train on this machine, with Unsloth or with PEFT only, or not at all, and why."""
    unsloth_blocker = _unsloth_blocker(hw, stack)
    if hw.device != "cuda":
        where = "Apple GPU (MPS)" if hw.device == "mps" else "CPU"
        return Verdict("runs", f"{where}: no CUDA kernels needed; PEFT runs", unsloth_blocker=unsloth_blocker)
    if hw.emulated:  # the physical card's kernels run; the emulated card's capability decides Unsloth
        verdict = check(
            Hardware("cuda", hw.gpu_name, hw.physical_capability, hw.physical_vram_bytes), stack, needs_4bit=needs_4bit
        )
        if verdict.status == "cannot-run":
            return verdict
        cc = f"{hw.capability[0]}.{hw.capability[1]}"
        reason = f"torch {stack.torch} has kernels for {hw.gpu_name} (emulating compute capability {cc})"
        if not runs_on(stack.torch_archs, hw.capability):
            reason += (
                f"; a real {cc} card could not run this torch ({describe_archs(stack.torch_archs)}): {_fix_for(hw)}"
            )
        if unsloth_blocker:
            return Verdict(
                "peft-only", f"{reason}; Unsloth cannot run: {unsloth_blocker}", unsloth_blocker=unsloth_blocker
            )
        return Verdict("runs", f"{reason}; Unsloth can run", unsloth_blocker=None)
    cc = f"{hw.capability[0]}.{hw.capability[1]}"
    gpu = f"{hw.gpu_name} (compute capability {cc})"
    fix = _fix_for(hw)
    if not runs_on(stack.torch_archs, hw.capability):
        return Verdict(
            "cannot-run",
            f"{gpu} cannot run the installed torch {stack.torch}: its CUDA kernels are built for "
            f"{describe_archs(stack.torch_archs)}, none of which runs on {cc}",
            fix=fix,
            unsloth_blocker=unsloth_blocker,
        )
    if needs_4bit:
        if stack.bnb is None:
            return Verdict(
                "cannot-run",
                "mode=qlora needs bitsandbytes, which is not installed",
                fix="pip install bitsandbytes (or use mode=lora)",
                unsloth_blocker=unsloth_blocker,
            )
        if stack.bnb_archs is not None and not runs_on(stack.bnb_archs, hw.capability):
            return Verdict(
                "cannot-run",
                f"{gpu} cannot run 4-bit with the installed bitsandbytes {stack.bnb}: {stack.bnb_library} has kernels "
                f"for {describe_archs(stack.bnb_archs)}, none of which runs on {cc}",
                fix=fix,
                unsloth_blocker=unsloth_blocker,
            )
    ok = f"torch {stack.torch} has kernels for {gpu}"
    if unsloth_blocker:
        return Verdict("peft-only", f"{ok}; Unsloth cannot run: {unsloth_blocker}", unsloth_blocker=unsloth_blocker)
    return Verdict("runs", f"{ok}; Unsloth can run", unsloth_blocker=None)


def _unsloth_blocker(hw: Hardware, stack: Stack) -> str | None:
    """What stops Unsloth's GPU path with this stack on this machine (the same rule the backend choice applies)."""
    return why_not_unsloth(hw, UnslothStatus(stack.unsloth is not None, stack.unsloth, triton=stack.triton is not None))


def _fix_for(hw: Hardware) -> str:
    if hw.capability < (7, 5):
        return (
            f"install the old-GPU stack ({OLD_GPU_WHAT}): `{OLD_GPU_INSTALL}` in a quickft checkout, or `{OLD_GPU_PIP}`"
        )
    return f"install a torch build with kernels for compute capability {hw.capability[0]}.{hw.capability[1]}: `{DEFAULT_INSTALL}`"


def require_runnable(*, needs_4bit: bool) -> tuple[Hardware, Stack, Verdict]:
    """Read this machine and its stack; a stack that cannot run here is a UserError (exit 2) naming the GPU, what
    the installed torch supports and the command that installs a stack that runs. Call before loading anything."""
    hw, stack = detect(), read_stack()
    verdict = check(hw, stack, needs_4bit=needs_4bit)
    if verdict.status == "cannot-run":
        raise UserError(verdict.reason, hint=verdict.fix)
    return hw, stack, verdict


# ---------------------------------------------------------------------------------------------- reading the stack


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_stack() -> Stack:
    """Describe the installed stack (imports torch, never bitsandbytes or unsloth)."""
    import torch

    flags = getattr(torch._C, "_cuda_getArchFlags", None)
    archs = (flags() or "").split() if flags and torch.version.cuda else []
    library = bnb_library(torch.version.cuda)
    return Stack(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        torch_archs=archs,
        bnb=version("bitsandbytes"),
        bnb_library=library.name if library else None,
        bnb_archs=fatbin_archs(library) if library else None,
        triton=version("triton"),
        unsloth=version("unsloth"),
    )


def bnb_library(torch_cuda: str | None) -> Path | None:
    """The CUDA library bitsandbytes would load under this torch, chosen as bitsandbytes does (its
    `get_cuda_bnb_library_path`, without importing it): $BNB_CUDA_VERSION if set, else the library for torch's CUDA
    version, else the newest older one of the same major, else the oldest newer one. None if there is none."""
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or spec.origin is None or not torch_cuda:
        return None
    folder = Path(spec.origin).parent
    suffix = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
    if override := os.environ.get("BNB_CUDA_VERSION"):
        path = folder / f"libbitsandbytes_cuda{override}{suffix}"
        return path if path.is_file() else None
    available = {}
    for path in folder.glob(f"libbitsandbytes_cuda*{suffix}"):
        digits = path.name.removeprefix("libbitsandbytes_cuda").removesuffix(suffix)
        if digits.isdigit():
            available[(int(digits[:-1]), int(digits[-1]))] = path
    major, minor = (int(p) for p in torch_cuda.split(".")[:2])
    same_major = sorted(v for v in available if v[0] == major)
    lower = [v for v in same_major if v <= (major, minor)]
    higher = [v for v in same_major if v > (major, minor)]
    if lower:
        return available[lower[-1]]
    return available[higher[0]] if higher else None


FATBIN_MAGIC = 0xBA55ED50


def fatbin_archs(library: Path) -> list[str] | None:
    """The GPU targets compiled into a shared library: sm_XY for each SASS (ELF) entry, compute_XY for each PTX
    entry of its .nv_fatbin section. None when the file has no such section or is not a 64-bit ELF.

    The layout is NVIDIA's fat binary: containers (16-byte header: magic 0xBA55ED50, u16 version, u16 header size,
    u64 payload size), each a run of entries (u16 kind: 1 PTX, 2 ELF; u32 entry header size at 4; u64 padded
    payload size at 8; u32 sm version at 28). Only headers are read, never the (compressed) code.
    """
    with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as elf:
        section = _elf_section(elf, b".nv_fatbin")
        if section is None:
            return None
        start, size = section
        found: set[tuple[int, int]] = set()
        pos, end = start, start + size
        while pos + 16 <= end:
            magic, _version, header_size, payload = struct.unpack_from("<IHHQ", elf, pos)
            if magic != FATBIN_MAGIC:
                pos += 8  # containers are 8-byte aligned; skip padding between them
                continue
            entry, container_end = pos + header_size, pos + header_size + payload
            while entry + 64 <= container_end:
                kind, _, entry_size = struct.unpack_from("<HHI", elf, entry)
                (padded,) = struct.unpack_from("<Q", elf, entry + 8)
                (sm,) = struct.unpack_from("<I", elf, entry + 28)
                if entry_size == 0:
                    break
                if kind in (1, 2, 0x10):
                    found.add((0 if kind == 1 else 1, sm))
                entry += entry_size + padded
            pos = container_end
    flags = [f"sm_{sm}" for is_elf, sm in sorted(found, key=lambda k: k[1]) if is_elf]
    flags += [f"compute_{sm}" for is_elf, sm in sorted(found, key=lambda k: k[1]) if not is_elf]
    return flags


def _elf_section(elf, name: bytes) -> tuple[int, int] | None:
    """(file offset, size) of a named section of a 64-bit little-endian ELF file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    names_offset = struct.unpack_from("<Q", elf, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        header = shoff + i * shentsize
        name_at = struct.unpack_from("<I", elf, header)[0]
        end = elf.find(b"\0", names_offset + name_at)
        if elf[names_offset + name_at : end] == name:
            offset, size = struct.unpack_from("<QQ", elf, header + 0x18)
            return offset, size
    return None


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m quickft.stack [--require sm_60,sm_70]`: print the stack; check it covers those architectures."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m quickft.stack", description=main.__doc__)
    parser.add_argument("--require", default="", help="comma-separated architectures, e.g. sm_60,sm_61,sm_70")
    args = parser.parse_args(argv)
    stack = read_stack()
    print(json.dumps(asdict(stack), indent=2))
    missing = []
    for flag in filter(None, args.require.split(",")):
        _, capability, _ = parse_arch(flag)
        if not runs_on(stack.torch_archs, capability):
            missing.append(f"torch {stack.torch} has no kernels for {flag}")
        if stack.bnb_archs is None:
            missing.append(f"bitsandbytes {stack.bnb}: no CUDA library for torch's CUDA {stack.cuda}")
        elif not runs_on(stack.bnb_archs, capability):
            missing.append(f"{stack.bnb_library} has no kernels for {flag}")
    for line in missing:
        print(f"error: {line}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
