"""This CPU, read without torch: what it multiplies fast (its instruction sets, from /proc/cpuinfo), its cores,
OpenMP's settings (set before torch is imported), how busy other processes keep it, and what a run's header says
about them. The decisions made from these readings are hardware.py's (pure functions, testable as a table of CPUs);
the measuring (peak, precision probe) is cpu_speed.py's.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
ISA = {
    "amx_bf16": "AMX-BF16",
    "avx512_bf16": "AVX512-BF16",
    "bf16": "BF16",  # Arm's (ARMv8.6: Graviton 3, Neoverse V1/N2), in the Features line
    "avx512fp16": "AVX512-FP16",
    "avx512f": "AVX512F",
    "avx2": "AVX2",
}
"""The /proc/cpuinfo flags that decide how fast a CPU multiplies each dtype, and their names."""
BF16_MATMUL = ("AMX-BF16", "AVX512-BF16", "BF16")
"""Instructions that multiply bf16 in hardware (oneDNN's bf16 matmul). Without them bf16 is converted to fp32 and
back around each multiply: slower than fp32."""


@dataclass
class Cpu:
    """What the precision and thread decisions depend on, read without torch."""

    name: str
    features: tuple[str, ...] = ()
    """The ISA names of the flags present, strongest first; empty when the flags could not be read."""
    physical_cores: int = 1
    usable_cores: int = 1
    """Physical cores this process may run on: fewer under taskset, a cpuset or a container's CPU quota."""
    flags_read: bool = True

    @property
    def bf16_instructions(self) -> str | None:
        """The strongest bf16 matrix instructions this CPU has, or None."""
        return next((f for f in self.features if f in BF16_MATMUL), None)


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...], int, bool]:
    """(model name, ISA names present, physical cores, whether flags were found) from /proc/cpuinfo's text: x86's
    `flags` and `physical id`/`core id` lines, Arm's `Features`. Cores are the distinct (package, core) pairs; where a
    virtual machine leaves those out, every logical CPU counts as one."""
    name, flags, cores, logical, found = "", set(), set(), 0, False
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        logical += 1
        name = name or fields.get("model name") or fields.get("Hardware") or ""
        if "flags" in fields or "Features" in fields:
            found = True
            flags |= set((fields.get("flags") or fields.get("Features") or "").split())
        if "physical id" in fields and "core id" in fields:
            cores.add((fields["physical id"], fields["core id"]))
    features = tuple(label for flag, label in ISA.items() if flag in flags)
    return name or "unknown CPU", features, len(cores) or logical, found


def cpu_quota(text: str | None) -> float | None:
    """CPUs a cgroup v2 quota allows (cpu.max: "200000 100000" is 2), or None for no quota."""
    parts = (text or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]) / int(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def read_cpu(path: str | None = None) -> Cpu:
    """This CPU: /proc/cpuinfo (or `path`), this process's CPU affinity and its cgroup's quota."""
    try:
        text = Path(path or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    name, features, physical, found = parse_cpuinfo(text)
    if not text:
        physical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota = cpu_quota(Path("/sys/fs/cgroup/cpu.max").read_text(encoding="utf-8"))
    except OSError:
        quota = None
    if quota:
        usable = min(usable, max(1, math.ceil(quota)))
    return Cpu(name, features, physical, max(1, min(physical, usable)), found)


# ------------------------------------------------------------------------------------------ OpenMP and sharing


@dataclass
class OpenMP:
    """OpenMP's settings for this process, and who set them (for the header)."""

    wait_policy: str = ""
    threads: str = ""
    set_by_quickft: list[str] = field(default_factory=list)
    torch_was_loaded: bool = False
    """torch was imported before quickft could set them (a test, an embedding program): they do not apply."""
    start: tuple[float, float, float] | None = None
    """busy_snapshot() when they were set: the start of the window others_busy() reads."""


OPENMP: OpenMP | None = None
"""What set_openmp() did in this process (None: it was not called, as when a program imports quickft)."""


def openmp_state() -> OpenMP:
    """OpenMP's settings as set_openmp() left them, or as the environment has them where it was not called."""
    env = os.environ
    return OPENMP or OpenMP(env.get("OMP_WAIT_POLICY", ""), env.get("OMP_NUM_THREADS", ""), [], "torch" in sys.modules)


def set_openmp(env=os.environ, cpu: Cpu | None = None) -> OpenMP:
    """Before torch is imported: OpenMP's passive wait policy and one thread per usable physical core, unless the
    environment says otherwise (torchrun sets OMP_NUM_THREADS=1 per process). torch's OpenMP threads otherwise spin
    for a while after each parallel region: beside another busy process on a 2-core machine that made a training
    15-45x slower, instead of the 2-3x that sharing costs (measured: docs/benchmarks.md). The processes quickft
    starts inherit them. Also notes the time, for the warning when other processes keep the cores busy."""
    global OPENMP
    set_here = []
    if not env.get("OMP_WAIT_POLICY"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        set_here.append("OMP_WAIT_POLICY")
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str((cpu or read_cpu()).usable_cores)
        set_here.append("OMP_NUM_THREADS")
    OPENMP = OpenMP(env["OMP_WAIT_POLICY"], env["OMP_NUM_THREADS"], set_here, "torch" in sys.modules, busy_snapshot())
    return OPENMP


def threads_note(cpu: Cpu, threads: int, openmp: OpenMP | None = None) -> str:
    """The header's line on torch's threads and OpenMP's settings."""
    cores = f"{cpu.usable_cores} usable physical core{'s' * (cpu.usable_cores != 1)}"
    return f"CPU threads: {threads} ({cores}), {openmp_text(openmp or openmp_state())}"


def openmp_text(openmp: OpenMP) -> str:
    """OpenMP's wait policy, and who set it and the thread count."""
    text = f"OpenMP wait policy {openmp.wait_policy or 'unset (its threads spin a while after each parallel region)'}"
    if openmp.torch_was_loaded:
        return text + " (torch was imported before quickft could set OpenMP's variables: its own apply)"
    by_us = " and ".join(openmp.set_by_quickft)
    from_env = [v for v in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if v not in openmp.set_by_quickft]
    said = [f"{by_us} set by quickft before torch loaded"] if by_us else []
    said += [f"{' and '.join(from_env)} from the environment"] if from_env else []
    return f"{text} ({'; '.join(said)})"


def busy_snapshot() -> tuple[float, float, float] | None:
    """(wall clock, seconds every CPU of the machine spent busy, CPU seconds of this process and its finished
    children), or None where /proc/stat cannot be read."""
    try:
        line = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in line[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]  # steal counts: time the hypervisor gave to others
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), mine


def others_busy(start, now=None) -> float | None:
    """Cores other processes kept busy, on average, from `start` to `now` (busy_snapshot()s): the machine's busy
    time less this process's own. None without a window of at least a second."""
    now = now or busy_snapshot()
    if not start or not now or now[0] - start[0] < 1.0:
        return None
    return max(0.0, ((now[1] - start[1]) - (now[2] - start[2])) / (now[0] - start[0]))


BUSY_SHARE = 0.25
"""Others using more than this share of the usable cores while the run set up: the header warns."""


def busy_warning(cpu: Cpu, others: float | None) -> str | None:
    """The header's warning when other processes kept the cores busy while this run set up, or None."""
    if others is None or others < BUSY_SHARE * cpu.usable_cores:
        return None
    return (
        f"the CPU is busy: other processes kept {others:.1f} of its {cpu.usable_cores} cores busy while this run set "
        "up; training shares them and runs slower (OpenMP's passive wait policy keeps both sides working rather "
        "than spinning against each other). Timings from this run are not the machine's speed"
    )


# ------------------------------------------------------------------------------------------ the run's header


def header_notes(choice) -> list[str]:
    """The header's lines on a CPU: the precision and why, the threads and OpenMP's wait policy (and who set them),
    and a warning when other processes kept the cores busy while the run set up (that figure is kept in choice.cpu,
    for backend.json)."""
    found = choice.hardware.cpu if choice.hardware and choice.hardware.cpu else read_cpu()
    record = choice.cpu or {}
    busy = others_busy(openmp_state().start)
    choice.cpu = record | {"others_busy_cores": busy}
    notes = [f"precision {choice.precision}: " + (choice.precision_reason or "").removeprefix(f"{choice.precision}: ")]
    notes.append(threads_note(found, record.get("threads") or 0))
    warning = busy_warning(found, busy)
    return notes + ([f"[bold yellow]warning:[/bold yellow] {warning}"] if warning else [])
