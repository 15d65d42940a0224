"""Several processes, one run: which process this is, and the figures combined across processes.

quickft launches and shards nothing itself. torchrun or `accelerate launch` start the processes and set RANK,
WORLD_SIZE and LOCAL_RANK; transformers' Trainer (through accelerate) wraps the model in DDP and gives each process
its share of every batch. What quickft adds: every process agrees on one run directory, only the first process
(rank 0) writes it and the console, and the figures it writes are combined from all of them (tokens and samples
summed, memory peaks as the largest process's). With one process the collectives here return at once. `--gpus N`
starts torchrun for the user (`launch`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys

COUNTS = (
    "tokens",
    "samples",
    "padding",
    "window_tokens",
    "window_samples",
    "generated_tokens",
    "window_generated_tokens",
)
"""Per-process counts that add up: the run trains on the sum of every process's share."""

_side = None
"""A gloo group beside the default one (NCCL on GPUs, gloo on CPUs), with a long timeout: the per-step stop flag and
what rank 0 broadcasts go through it on CPU tensors, so checking the flag never waits on the GPU, and the other ranks
can wait for rank 0 to answer test cases for longer than NCCL's watchdog allows."""
SIDE_TIMEOUT_S = 6 * 3600
"""How long the other ranks wait on rank 0 at a broadcast: answering many test cases on a slow card takes minutes,
well past the default group's timeout (NCCL's 10 minutes, accelerate's 30), which would kill the waiting ranks."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def start(device: str) -> None:
    """Join the other processes now rather than when the trainer is built, so that they can agree on the run
    directory and build a scratch model once. accelerate's PartialState is the process group transformers' Trainer
    then uses (nccl on GPUs, gloo on CPUs); on GPUs a gloo side group carries the per-step stop flag, so checking
    it never waits on the GPU."""
    global _side
    if world_size() == 1:
        return
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")
    _side = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SIDE_TIMEOUT_S))
    if device == "cpu":
        import torch.serialization

        # accelerate names each CPU process's device "cpu:0", and transformers resumes the optimizer with
        # torch.load(map_location="cpu:0"), which torch cannot map ("don't know how to restore data location"):
        # the tensors are on the CPU already, so take them as they are (only for this location, only here)
        torch.serialization.register_package(100, lambda obj: None, _cpu_index_location)


def _cpu_index_location(obj, location: str):
    return obj if location.startswith("cpu:") else None


def backend_name() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def gather(obj) -> list:
    """Every process's `obj`, in rank order, on every process (a collective: all processes must call it)."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist

    objects = [None] * world_size()
    dist.all_gather_object(objects, obj)
    return objects


def broadcast(obj):
    """Rank 0's `obj` on every process (a collective), through the side group once `start` has run: the others wait
    for rank 0 up to SIDE_TIMEOUT_S."""
    if world_size() == 1:
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0, group=_side)
    return holder[0]


def any_process(flag: bool) -> bool:
    """True on every process when it is true on any (a collective on CPU tensors: no GPU synchronisation)."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_side)
    return bool(value.item())


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (building a cached scratch model, say); the others run it after, finding it done."""
    if world_size() == 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def combine(per_process: list[dict]) -> dict:
    """One process's figures from all of theirs: counts summed, memory figures the largest process's (a per-GPU
    peak is what decides whether a card runs out). The first process's own time is kept (DDP keeps them in step)."""
    combined = dict(per_process[0])
    for key, value in per_process[0].items():
        if key in COUNTS:
            combined[key] = sum(p[key] for p in per_process)
        elif key.endswith("_mb") and isinstance(value, (int, float)):
            combined[key] = max(p[key] for p in per_process)
    return combined


def same_launcher(command: str, device: str) -> str:
    """`command` (a `quickft ...` line) as this run was started: with --gpus N on GPUs, through torchrun on CPUs."""
    if world_size() == 1:
        return command
    if device == "cuda":
        return f"{command} --gpus {world_size()}"
    return f"torchrun --standalone --nproc-per-node {world_size()} -m {command}"


def torchrun_arguments(gpus: int, argv: list[str]) -> list[str]:
    """torchrun's arguments for `quickft run ... --gpus N`: the same quickft arguments without --gpus, as N processes
    on this machine (--standalone: torchrun picks a free port itself)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            rest.append(arg)
    return ["--standalone", f"--nproc-per-node={gpus}", "-m", "quickft", *rest]


def launch(gpus: int, argv: list[str]) -> int | None:
    """`quickft run ... --gpus N`: torchrun (torch.distributed.run, in this process) starts N processes running the
    same command, one per GPU, and waits for them. Returns their exit code: 0, 2 (bad input, said once by the first
    process), 130 (Ctrl-C: they saved a checkpoint and said how to resume). --gpus 1 returns None: train here."""
    from quickft.errors import UserError

    if world_size() > 1:
        raise UserError(
            f"--gpus {gpus}: this process was already started by a launcher (WORLD_SIZE={world_size()})",
            hint="drop --gpus: torchrun's --nproc-per-node says how many processes",
        )
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: needs at least 1", hint="e.g. --gpus 2")
    import torch

    have = torch.cuda.device_count()
    if gpus > have:
        raise UserError(
            f"--gpus {gpus}: this machine has {have} NVIDIA GPU{'s' if have != 1 else ''}",
            hint=f"use --gpus {have} or fewer"
            if have
            else "without GPUs, start CPU processes with torchrun: torchrun --nproc-per-node 2 -m quickft run RECIPE",
        )
    if gpus == 1:
        return None
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    arguments = torchrun_arguments(gpus, argv)
    print("torchrun " + " ".join(arguments), file=sys.stderr, flush=True)
    # torchrun sets OMP_NUM_THREADS=1 here (for its processes) and installs its own signal handlers, and leaves both
    threads = os.environ.get("OMP_NUM_THREADS")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        torchrun(get_args_parser().parse_args(arguments))
    except SignalException:  # Ctrl-C: torchrun passed it on, and the processes stopped after a checkpoint
        return 130
    except ChildFailedError as e:
        codes = [failure.exitcode for failure in e.failures.values()]
        return next((code for code in codes if code in (2, 130)), codes[0] if codes else 1)
    finally:  # put both back
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0
