"""`quickft doctor`: what this machine can run, read by the real command in a fresh process. The doctor's view of a
subject with a fake of its own stays with that subject: the CPU layer on fake CPUs in test_cpu.py, the bitsandbytes
line it hides in test_noise.py."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from quickft.cpu import read_cpu
from quickft.stack import read_stack
from tests.conftest import ROOT


def info_cpu_has_bf16() -> str | None:
    return read_cpu().bf16_instructions


@pytest.mark.parametrize("as_json", [True, False])
def test_doctor_names_the_backend_it_would_pick(as_json):
    args = [sys.executable, "-m", "quickft", "doctor"] + (["--json"] if as_json else [])
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    if as_json:
        info = json.loads(result.stdout)
        assert info["verdict"]["backend"] == "peft" and "no GPU found" in info["verdict"]["why"]
        assert info["efficient fine-tuning"]["4-bit here"] == "works"
        installed = importlib.util.find_spec("unsloth") is not None
        assert info["efficient fine-tuning"]["unsloth imports"] == ("yes" if installed else "not installed")
        assert info["numeric core"]["torch"] == torch.__version__
        cpu = info["cpu"]  # the CPU layer: its instructions, its peak per dtype, and what precision=auto does
        assert cpu["bf16 / fp32"] == pytest.approx(cpu["matmul bf16 GFLOP/s"] / cpu["matmul fp32 GFLOP/s"], rel=0.01)
        assert cpu["bf16 matrix instructions"] == (info_cpu_has_bf16() or "none")
        assert cpu["precision=auto trains in"].startswith("fp32 or bf16" if info_cpu_has_bf16() else "fp32: ")
    else:
        bf16 = info_cpu_has_bf16()
        assert f"auto picks: peft in {'fp32 or bf16' if bf16 else 'fp32'}" in result.stdout
        assert "numeric core" in result.stdout and "matmul bf16 GFLOP/s" in result.stdout
    # what it is doing, while it does it, on stderr (stdout stays the JSON)
    assert result.stderr.startswith("importing torch and reading the GPU ...\n")
    if importlib.util.find_spec("unsloth") is not None:
        assert "importing unsloth in a fresh process (--fast skips this) ..." in result.stderr


def test_doctor_shows_the_stack_layer():
    result = subprocess.run(
        [sys.executable, "-m", "quickft", "doctor", "--json", "--fast"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    stack = read_stack()
    assert info["stack"]["torch kernels"] == (" ".join(stack.torch_archs) or "none (CPU-only build)")
    assert info["stack"]["verdict"] == "runs"  # this machine has no GPU
