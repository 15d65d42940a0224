"""The backend decision is a pure function of a hardware description: a table of machines."""

import pytest

from quickft.hardware import Hardware, UnslothStatus, choose

GiB = 2**30
CPU = Hardware("cpu")
MPS = Hardware("mps", "Apple GPU (MPS)")
GTX1050TI = Hardware("cuda", "NVIDIA GeForce GTX 1050 Ti", (6, 1), 4 * GiB)
P100 = Hardware("cuda", "Tesla P100-PCIE-16GB", (6, 0), 16 * GiB)
T4 = Hardware("cuda", "Tesla T4", (7, 5), 15 * GiB)
RTX3090 = Hardware("cuda", "NVIDIA GeForce RTX 3090", (8, 6), 24 * GiB)
A100 = Hardware("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * GiB)
H100 = Hardware("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 80 * GiB)
UNSLOTH = UnslothStatus(True, "2026.10.9")
OLD_UNSLOTH = UnslothStatus(True, "2026.10.7")
NO_UNSLOTH = UnslothStatus(False)
BROKEN_UNSLOTH = UnslothStatus(True, "2026.10.9", import_error="ImportError: cannot import name 'X'")


@pytest.mark.parametrize(
    ("hw", "unsloth", "refuses", "backend", "precision", "reason"),
    [
        (CPU, UNSLOTH, None, "peft", "fp32", "no GPU found"),
        (MPS, UNSLOTH, None, "peft", "fp32", "MPS"),
        (
            GTX1050TI,
            UNSLOTH,
            None,
            "peft",
            "fp16",
            "Unsloth not used: NVIDIA GeForce GTX 1050 Ti is compute capability 6.1; Unsloth's kernels need ≥ 7.0",
        ),
        (P100, UNSLOTH, None, "peft", "fp16", "compute capability 6.0"),
        (T4, UNSLOTH, None, "unsloth", "fp16", "Tesla T4"),
        (RTX3090, UNSLOTH, None, "unsloth", "bf16", "RTX 3090"),
        (A100, UNSLOTH, None, "unsloth", "bf16", "A100"),
        (H100, UNSLOTH, None, "unsloth", "bf16", "H100"),
        (A100, NO_UNSLOTH, None, "peft", "bf16", "unsloth is not installed"),
        (A100, BROKEN_UNSLOTH, None, "peft", "bf16", "unsloth failed to import: ImportError"),
        (A100, UNSLOTH, "GPT2LMHeadModel", "peft", "bf16", "Unsloth does not support this model: GPT2LMHeadModel"),
    ],
)
def test_auto_decision_table(hw, unsloth, refuses, backend, precision, reason):
    choice = choose(hw, unsloth, mode="qlora", unsloth_refuses=refuses)
    assert (choice.backend, choice.precision) == (backend, precision)
    assert reason in choice.reason
    assert choice.load_in_4bit is (hw.device != "mps")


def test_gtx_1050_ti_message_names_the_fallback():
    choice = choose(GTX1050TI, UNSLOTH, mode="qlora")
    assert choice.reason == (
        "Unsloth not used: NVIDIA GeForce GTX 1050 Ti is compute capability 6.1; Unsloth's kernels need ≥ 7.0"
        " — using PEFT + bitsandbytes 4-bit, fp16"
    )


def test_explicit_requests():
    assert choose(T4, UNSLOTH, requested="peft").backend == "peft"
    with pytest.raises(ValueError, match="compute capability 6.1"):
        choose(GTX1050TI, UNSLOTH, requested="unsloth")
    with pytest.raises(ValueError, match="no GPU"):
        choose(CPU, OLD_UNSLOTH, requested="unsloth")  # no CPU mode before 2026.10.9
    cpu = choose(CPU, UNSLOTH, requested="unsloth")  # Unsloth's own CPU mode is allowed when asked for
    assert cpu.backend == "unsloth" and "CPU mode" in cpu.reason and "no speedup" in cpu.reason


def test_precision_and_4bit_rules():
    with pytest.raises(ValueError, match="bf16 needs compute capability"):
        choose(T4, UNSLOTH, precision="bf16")
    with pytest.raises(ValueError, match="fp16 does not train on CPU"):
        choose(CPU, UNSLOTH, precision="fp16")
    assert choose(CPU, UNSLOTH, precision="bf16").precision == "bf16"
    cpu_qlora = choose(CPU, UNSLOTH, mode="qlora")
    assert cpu_qlora.load_in_4bit and "CPU backend" in cpu_qlora.reason
    mps_qlora = choose(MPS, UNSLOTH, mode="qlora")
    assert not mps_qlora.load_in_4bit and "16/32-bit" in mps_qlora.reason
    assert not choose(A100, UNSLOTH, mode="lora").load_in_4bit


def test_a_full_fine_tune_is_not_called_peft():
    """No adapter: transformers trains every weight, and the header and reason say so."""
    full = choose(GTX1050TI, UNSLOTH, mode="full")
    assert "using transformers (full fine-tune)" in full.reason and "PEFT" not in full.reason
    assert full.summary("full").startswith("transformers (full fine-tune, no adapter) + 16/32-bit weights")
    assert choose(GTX1050TI, UNSLOTH, mode="lora").summary("lora").startswith("PEFT + ")


DRIVER_535 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\nGCC version:  gcc 12\n"
)
DRIVER_580_OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U16)\n"
)


def test_an_nvidia_driver_torch_cannot_use_is_named_not_trained_around():
    """A 535 driver under a CUDA 13 torch: torch sees no GPU; quickft says why instead of training on the CPU."""
    from quickft.hardware import driver_problem

    assert "needs driver 580 or newer" in driver_problem(False, "13.0", DRIVER_535)
    assert driver_problem(False, "12.6", DRIVER_535).startswith("an NVIDIA driver (535.183) is installed")
    assert "CPU-only build" in driver_problem(False, None, DRIVER_580_OPEN)
    assert driver_problem(True, "13.0", DRIVER_535) is None  # torch has the GPU: nothing to say
    assert driver_problem(False, "13.0", None) is None  # no NVIDIA driver: a CPU machine


def test_detect_stops_with_both_fixes_on_a_machine_whose_driver_is_too_old(tmp_path, monkeypatch):
    """The real detect() on this GPU-less machine, with the driver file of a machine that has a 470 driver."""
    import torch

    from quickft import hardware
    from quickft.errors import UserError

    driver = tmp_path / "version"
    driver.write_text(DRIVER_535.replace("535.183.01", "470.256.02"))
    monkeypatch.setattr(hardware, "NVIDIA_DRIVER_FILE", str(driver))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError) as e:
        hardware.detect()
    assert "470.256" in e.value.message and (torch.version.cuda is None or "or newer" in e.value.message)
    assert "make install-old-gpu" in e.value.hint and "update the NVIDIA driver" in e.value.hint
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the way to mean the CPU on such a machine
    assert hardware.detect().device == "cpu"
