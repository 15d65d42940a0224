"""The stack check: a table of machines against the real kernel lists of the torch and bitsandbytes builds we ship,
the readers of those lists checked against the libraries themselves, and the verbs stopping early through the CLI."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from quickft.cli import main
from quickft.hardware import Hardware
from quickft.stack import Stack, bnb_library, check, fatbin_archs, read_stack, runs_on
from tests.test_hardware import A100, CPU, GTX1050TI, H100, MPS, P100, RTX3090, T4

GiB = 2**30
# Read on 2026-11-23 from the builds the two install routes resolve to (torch._C._cuda_getArchFlags() and the
# bitsandbytes libraries' fat binaries); test_installed_stack_is_read_from_the_libraries checks the reader.
TORCH_DEFAULT = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130 (make install)
TORCH_OLD_GPU = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]  # torch 2.7.1+cu126
BNB_CUDA130 = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"]
BNB_CUDA126 = ["sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]

DEFAULT = Stack(
    "2.14.1+cu130", "13.0", TORCH_DEFAULT, "0.50.2", "libbitsandbytes_cuda130.so", BNB_CUDA130, "3.8.0", "2026.10.9"
)
OLD_GPU = Stack(
    "2.7.1+cu126", "12.6", TORCH_OLD_GPU, "0.50.2", "libbitsandbytes_cuda126.so", BNB_CUDA126, "3.3.1", None
)
CPU_BUILD = Stack("2.13.0+cpu", None, [], "0.50.2", None, None, None, None)

V100 = Hardware("cuda", "Tesla V100-SXM2-16GB", (7, 0), 16 * GiB)
RTX5090 = Hardware("cuda", "NVIDIA GeForce RTX 5090", (12, 0), 32 * GiB)


@pytest.mark.parametrize(
    ("hw", "stack", "status", "says"),
    [
        (GTX1050TI, DEFAULT, "cannot-run", "its CUDA kernels are built for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"),
        (GTX1050TI, OLD_GPU, "peft-only", "compute capability 6.1; Unsloth's kernels need ≥ 7.0"),
        (P100, DEFAULT, "cannot-run", "none of which runs on 6.0"),
        (P100, OLD_GPU, "peft-only", "Unsloth's kernels need ≥ 7.0"),
        (V100, DEFAULT, "cannot-run", "none of which runs on 7.0"),
        (V100, OLD_GPU, "peft-only", "unsloth is not installed"),
        (T4, DEFAULT, "runs", "Unsloth can run"),
        (T4, OLD_GPU, "peft-only", "unsloth is not installed"),
        (RTX3090, DEFAULT, "runs", "Unsloth can run"),
        (A100, DEFAULT, "runs", "Unsloth can run"),
        (H100, DEFAULT, "runs", "Unsloth can run"),
        (H100, OLD_GPU, "peft-only", "unsloth is not installed"),
        (RTX5090, DEFAULT, "runs", "Unsloth can run"),
        (RTX5090, OLD_GPU, "cannot-run", "none of which runs on 12.0"),  # 2.7.1 stops at sm_90, no PTX
        (CPU, DEFAULT, "runs", "CPU"),
        (CPU, OLD_GPU, "runs", "CPU"),
        (CPU, CPU_BUILD, "runs", "CPU"),
        (MPS, CPU_BUILD, "runs", "Apple GPU"),
    ],
)
def test_stack_verdict_table(hw, stack, status, says):
    verdict = check(hw, stack, needs_4bit=True)
    assert verdict.status == status, verdict.reason
    assert says in verdict.reason
    if status == "cannot-run":
        assert hw.gpu_name in verdict.reason and verdict.fix
    else:
        assert verdict.fix is None


def test_cannot_run_names_the_route_that_runs():
    fix = check(GTX1050TI, DEFAULT).fix
    assert "make install-old-gpu" in fix and "constraints/old-gpu.txt" in fix and "torch 2.7.1+cu126" in fix
    assert "make install" in check(RTX5090, OLD_GPU).fix and "old-gpu" not in check(RTX5090, OLD_GPU).fix


def test_4bit_needs_a_bitsandbytes_library_with_kernels_for_the_card():
    # torch 2.7.1 runs on a 1050 Ti, but bitsandbytes pointed at its CUDA 13 library (BNB_CUDA_VERSION=130) does not
    mismatched = Stack(**(vars(OLD_GPU) | {"bnb_library": "libbitsandbytes_cuda130.so", "bnb_archs": BNB_CUDA130}))
    verdict = check(GTX1050TI, mismatched, needs_4bit=True)
    assert verdict.status == "cannot-run" and "cannot run 4-bit" in verdict.reason and "cuda130" in verdict.reason
    assert check(GTX1050TI, mismatched, needs_4bit=False).status == "peft-only"  # 16-bit LoRA needs no bitsandbytes
    no_bnb = Stack(**(vars(OLD_GPU) | {"bnb": None, "bnb_library": None, "bnb_archs": None}))
    assert "pip install bitsandbytes" in check(GTX1050TI, no_bnb, needs_4bit=True).fix


def test_triton_missing_blocks_unsloth_only():
    verdict = check(A100, Stack(**(vars(DEFAULT) | {"triton": None})))
    assert verdict.status == "peft-only" and "triton is not installed" in verdict.reason


@pytest.mark.parametrize(
    ("archs", "capability", "runs"),
    [
        (["sm_60"], (6, 1), True),  # SASS runs on the same major with an equal or higher minor
        (["sm_61"], (6, 0), False),
        (["sm_60"], (7, 0), False),  # ... never on another major
        (["sm_75"], (8, 0), False),
        (["compute_70"], (8, 6), True),  # PTX is JIT-compiled forward
        (["compute_80"], (7, 5), False),
        (["sm_90a"], (9, 0), True),  # arch-specific SASS runs only on exactly that chip
        (["sm_90a"], (10, 0), False),
        ([], (8, 0), False),
    ],
)
def test_kernel_compatibility_rules(archs, capability, runs):
    assert runs_on(archs, capability) is runs


def test_installed_stack_is_read_from_the_libraries():
    """The arch flags are torch's own; the fat-binary reader agrees with them on libtorch_cuda.so; the bitsandbytes
    library is the one bitsandbytes itself would pick."""
    stack = read_stack()
    assert stack.torch == torch.__version__ and stack.cuda == torch.version.cuda
    if torch.version.cuda is None:
        pytest.skip("CPU-only torch build: no CUDA kernels to read")
    assert stack.torch_archs == torch._C._cuda_getArchFlags().split()
    libtorch_cuda = Path(torch.__file__).parent / "lib" / "libtorch_cuda.so"
    assert set(stack.torch_archs) <= set(fatbin_archs(libtorch_cuda))  # it also links in kernels for a few more
    from bitsandbytes.cextension import get_cuda_bnb_library_path
    from bitsandbytes.cuda_specs import CUDASpecs

    for cuda in ("11.8", "12.6", "12.9", "13.0", "13.1"):
        major, minor = (int(p) for p in cuda.split("."))
        specs = CUDASpecs(
            highest_compute_capability=(7, 5), cuda_version_string=f"{major}{minor}", cuda_version_tuple=(major, minor)
        )
        assert bnb_library(cuda) == get_cuda_bnb_library_path(specs), cuda
    assert stack.bnb_library == bnb_library(torch.version.cuda).name
    assert stack.bnb_archs and all(a.startswith("sm_") for a in stack.bnb_archs)


def test_old_gpu_route_covers_pascal_and_volta():
    """What `make install-old-gpu` promises, read from the installed libraries (no GPU needed)."""
    stack = read_stack()
    if not runs_on(stack.torch_archs, (6, 1)):
        pytest.skip(f"the default stack (torch {stack.torch}) has no Pascal kernels; `make test-old-gpu` runs this")
    for capability in ((6, 0), (6, 1), (7, 0)):
        assert runs_on(stack.torch_archs, capability) and runs_on(stack.bnb_archs, capability)
        assert stack.unsloth is None  # the old-GPU route installs no Unsloth
    assert check(GTX1050TI, stack, needs_4bit=True).status == "peft-only"
    result = subprocess.run(
        [sys.executable, "-m", "quickft.stack", "--require", "sm_60,sm_61,sm_70"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], vram_gib: int) -> None:
    """Make torch report this GPU: the only fake, at the boundary where quickft reads the hardware."""
    props = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1], total_memory=vram_gib * GiB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=0: props)


def needs_default_stack():
    stack = read_stack()
    if runs_on(stack.torch_archs, (6, 1)):
        pytest.skip(f"torch {stack.torch} has Pascal kernels (the old-GPU route): a 1050 Ti would run here")


def test_gtx_1050_ti_run_stops_before_loading_with_the_install_command(tmp_path, lora_recipe, monkeypatch, capsys):
    needs_default_stack()
    fake_gpu(monkeypatch, "NVIDIA GeForce GTX 1050 Ti", (6, 1), 4)
    run_dir = tmp_path / "run"
    code = main(["run", str(lora_recipe), "mode=qlora", "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "NVIDIA GeForce GTX 1050 Ti (compute capability 6.1) cannot run the installed torch" in err
    assert "sm_75" in err and "make install-old-gpu" in err and "Traceback" not in err
    assert not run_dir.exists()  # stopped before the run directory (and the model) existed


def test_gtx_1050_ti_chat_eval_and_bench_stop_the_same_way(tmp_path, chat_run, lora_recipe, monkeypatch, capsys):
    needs_default_stack()
    fake_gpu(monkeypatch, "NVIDIA GeForce GTX 1050 Ti", (6, 1), 4)
    for argv in (
        ["chat", str(chat_run), "--prompt", "1 + 2"],
        ["eval", str(chat_run)],
        ["bench", str(lora_recipe), "--output-dir", str(tmp_path / "bench")],
    ):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "cannot run the installed torch" in err and "make install-old-gpu" in err, argv
    assert not (tmp_path / "bench").exists()
