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


# ---------------------------------------------------------------------------------------------- the CPU's precision


def cpuinfo(flags: str, *, cores: int = 2, threads_per_core: int = 1, name: str = "Test CPU", key: str = "flags"):
    """/proc/cpuinfo as Linux writes it: one block per logical CPU, SMT siblings sharing a core id."""
    blocks = []
    for cpu in range(cores * threads_per_core):
        core = cpu % cores
        blocks.append(
            f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: {name}\nphysical id\t: 0\n"
            f"core id\t\t: {core}\ncpu cores\t: {cores}\n{key}\t\t: {flags}\n"
        )
    return "\n".join(blocks) + "\n"


SAPPHIRE_RAPIDS = "fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512fp16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni"
SKYLAKE_SP = "fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl"
HASWELL = "fpu sse2 avx avx2 fma"
GRAVITON3 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve i8mm bf16 svebf16"


@pytest.mark.parametrize(
    ("flags", "key", "features", "bf16"),
    [
        (SAPPHIRE_RAPIDS, "flags", ("AMX-BF16", "AVX512-BF16", "AVX512-FP16", "AVX512F", "AVX2"), "AMX-BF16"),
        (ZEN4, "flags", ("AVX512-BF16", "AVX512F", "AVX2"), "AVX512-BF16"),
        (SKYLAKE_SP, "flags", ("AVX512F", "AVX2"), None),
        (HASWELL, "flags", ("AVX2",), None),
        (GRAVITON3, "Features", ("BF16",), "BF16"),
    ],
)
def test_the_cpus_instructions_are_read_from_cpuinfo(tmp_path, flags, key, features, bf16):
    from quickft.cpu import read_cpu

    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo(flags, cores=4, threads_per_core=2, key=key))
    cpu = read_cpu(str(path))
    assert cpu.features == features and cpu.bf16_instructions == bf16 and cpu.flags_read
    assert cpu.physical_cores == 4  # 8 logical CPUs, two per core
    assert cpu.name == "Test CPU"


def test_cores_where_a_virtual_machine_gives_no_core_ids_and_what_this_process_may_use(tmp_path):
    import os

    from quickft.cpu import cpu_quota, parse_cpuinfo, read_cpu

    bare = "".join(f"processor\t: {i}\nflags\t\t: {HASWELL}\n\n" for i in range(3))
    assert parse_cpuinfo(bare)[2] == 3
    assert parse_cpuinfo("")[3] is False  # nothing read: the flags are unknown, not absent
    assert cpu_quota("200000 100000") == 2 and cpu_quota("150000 100000") == 1.5
    assert cpu_quota("max 100000") is None and cpu_quota(None) is None
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo(HASWELL, cores=64))
    assert read_cpu(str(path)).usable_cores == min(64, len(os.sched_getaffinity(0)))


def cpu_of(flags: str | None):
    from quickft.cpu import Cpu, parse_cpuinfo

    if flags is None:
        return Cpu("unknown CPU", (), 2, 2, flags_read=False)
    name, features, cores, found = parse_cpuinfo(cpuinfo(flags))
    return Cpu(name, features, cores, cores, found)


@pytest.mark.parametrize(
    ("flags", "options", "probe", "says"),
    [
        (SAPPHIRE_RAPIDS, {}, True, "this CPU has AMX-BF16"),
        (ZEN4, {}, True, "this CPU has AVX512-BF16"),
        (GRAVITON3, {}, True, "this CPU has BF16"),
        (None, {}, True, "this CPU's flags are unknown"),  # macOS, a container without /proc: measure, do not guess
        (HASWELL, {}, False, "fp32: this CPU has no bf16 matrix instructions (it has AVX2)"),
        (SKYLAKE_SP, {}, False, "no bf16 matrix instructions (it has AVX512F, AVX2)"),
        (ZEN4, {"requested": "fp32"}, False, "precision=fp32, as the recipe says"),
        (ZEN4, {"requested": "bf16"}, False, "precision=bf16, as the recipe says"),
        (ZEN4, {"backend": "unsloth"}, False, "Unsloth's CPU mode sets its own precision"),
        (ZEN4, {"mode": "qlora"}, False, "fp32: qlora on a CPU"),
        (ZEN4, {"mode": "full"}, False, "fp32: a full fine-tune trains every weight"),
        (ZEN4, {"processes": 2}, False, "fp32: 2 processes share this CPU"),
        (ZEN4, {"weights": 4_999_999}, False, "fp32: a model of 4,999,999 weights"),
        (ZEN4, {"weights": 5_000_000}, True, "this CPU has AVX512-BF16"),
    ],
)
def test_whether_the_precision_probe_runs(flags, options, probe, says):
    from quickft.hardware import cpu_precision_plan

    settings = {"requested": "auto", "mode": "lora", "backend": "peft"} | options
    planned, why = cpu_precision_plan(cpu_of(flags), **settings)
    assert planned is probe and says in why


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "picked"),
    [
        (3.29, 2.22, "bf16"),  # SmolLM2-135M LoRA, 4 x 256 tokens (issue 38)
        (1.0, 0.9, "bf16"),  # exactly the margin
        (1.0, 0.91, "fp32"),  # faster, but by less than the margin: fp32 rounds nothing
        (0.0074, 0.0094, "fp32"),  # a 100k-weight model: small matrices lose more to the conversions
    ],
)
def test_the_probe_picks_bf16_only_when_it_is_clearly_faster(fp32_s, bf16_s, picked):
    from quickft.hardware import pick_cpu_precision

    precision, why = pick_cpu_precision(cpu_of(ZEN4), fp32_s, bf16_s)
    assert precision == picked and why.startswith(f"{picked}: ")
    assert "this CPU has AVX512-BF16" in why and "per forward and backward pass (bf16 vs fp32)" in why


def test_the_header_says_which_precision_and_why_in_the_probes_own_numbers():
    from quickft.hardware import pick_cpu_precision

    assert pick_cpu_precision(cpu_of(SAPPHIRE_RAPIDS), 3.3, 2.2)[1] == (
        "bf16: this CPU has AMX-BF16; probe 2.20 s vs 3.30 s per forward and backward pass (bf16 vs fp32)"
    )
    assert "probe 9.4 ms vs 7.4 ms" in pick_cpu_precision(cpu_of(ZEN4), 0.0074, 0.0094)[1]


def test_a_cpu_choice_names_both_candidates_until_the_probe_decides():
    from dataclasses import replace

    from quickft.hardware import Hardware

    zen4 = Hardware("cpu", cpu=cpu_of(ZEN4))
    choice = choose(zen4, NO_UNSLOTH)
    assert choice.precision == "fp32" and "fp32 or bf16 (a probe of the run's own passes picks)" in choice.reason
    assert choice.precision_reason.startswith("fp32 or bf16, whichever a probe")
    haswell = choose(replace(zen4, cpu=cpu_of(HASWELL)), NO_UNSLOTH)
    assert haswell.reason.endswith("16/32-bit weights, fp32") and "no bf16 matrix" in haswell.precision_reason
