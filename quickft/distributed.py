"""Several processes, one run: which process this is, and the figures combined across processes.

quickft launches and shards nothing itself. torchrun or `accelerate launch` start the processes (on one machine or
several) and set RANK, WORLD_SIZE and LOCAL_RANK; transformers' Trainer (through accelerate) wraps the model in DDP,
or shards it with FSDP2 (recipe.distributed="fsdp"), and gives each process its share of every batch. What quickft
adds: every process agrees on one run directory, only the first process (rank 0) writes it and the console, and the
figures it writes are combined from all of them (tokens and samples summed, memory peaks as the largest process's);
an input error on any process stops all of them with its message, and a process that is lost (its node killed or
cut off) stops the others with a clear one instead of a hang. With one process the collectives here return at once.
`quickft run --gpus N` / `--nnodes N` start torchrun for the user (quickft.launch).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from pathlib import Path

from quickft.errors import ProcessLost, UserError

LAUNCHED = "QUICKFT_LAUNCHED"
"""Set by quickft's launcher (quickft.launch) for the processes it starts: how they were started (for the header and
the resume command)."""

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

_flags = None
"""A gloo group beside the default one (NCCL on GPUs, gloo on CPUs) for the per-step stop flag: on CPU tensors, so
checking it never waits on the GPU. Its timeout is the default group's: a lost process is noticed there as soon as
in a training step."""
_waits = None
"""A second gloo group, with a long timeout, for what rank 0 broadcasts after working alone: the other ranks can wait
for rank 0 to answer test cases for longer than NCCL's watchdog allows."""
SIDE_TIMEOUT_S = 6 * 3600
"""How long the other ranks wait on rank 0 at a broadcast: answering many test cases on a slow card takes minutes,
well past the default group's timeout (NCCL's 10 minutes, accelerate's 30), which would kill the waiting ranks."""
_shared: bool | None = None
"""Whether every process sees the run directory rank 0 writes (shared storage); None until `check_storage`."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def nodes() -> int:
    """How many machines (torchrun's agents) take part: torchrun's GROUP_WORLD_SIZE."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1"))


def node_rank() -> int:
    """This machine's place among them, as torchrun's rendezvous assigned it (GROUP_RANK)."""
    return int(os.environ.get("GROUP_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def speaks() -> bool:
    """Whether this process prints what every process would print alike (an input error, how to resume): the first
    process of each machine, so each machine's console says it once."""
    return local_rank() == 0


def join() -> None:
    """Several processes: connect them now, before anything is read, so that an input error on one machine stops
    the others with its message (`checked`) instead of leaving them waiting to connect. The device is the one the
    backend choice will pick: CUDA where torch has a GPU."""
    if world_size() > 1:
        import torch

        start("cuda" if torch.cuda.is_available() else "cpu")


def start(device: str) -> None:
    """Join the other processes (once), so that they can agree on the run directory and build a scratch model once.
    accelerate's PartialState is the process group transformers' Trainer then uses (nccl on GPUs, gloo on CPUs); two
    gloo side groups carry the per-step stop flag and rank 0's broadcasts, so neither waits on the GPU."""
    global _flags, _waits
    if world_size() == 1 or _flags is not None:
        return
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")
    _flags = dist.new_group(backend="gloo")
    _waits = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SIDE_TIMEOUT_S))
    joined()
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
    dist.broadcast_object_list(holder, src=0, group=_waits)
    return holder[0]


def any_process(flag: bool) -> bool:
    """True on every process when it is true on any (a collective on CPU tensors: no GPU synchronisation)."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_flags)
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


def checked(read):
    """`read()` on every process, agreeing on its input errors: when it raises UserError on any process (a data
    file missing on one machine, say), every process raises one, the first failing process's, naming its machine
    when that is another one. Without this, the others would wait for the failed one at their next collective."""
    if world_size() == 1:
        return read()
    try:
        value, failure = read(), None
    except UserError as e:
        value, failure = None, e
    failures = gather(None if failure is None else (failure.message, failure.hint, rank(), socket.gethostname()))
    if failure is not None:
        raise failure
    first = next((f for f in failures if f is not None), None)
    if first is not None:
        message, hint, where, host = first
        raise UserError(f"process {where} (on {host}): {message}", hint=hint)
    return value


def from_rank0(read):
    """`read()` on rank 0 only, its result (or its UserError) on every process: what only rank 0 can read, such as
    the run directory where the other machines do not share its storage."""
    if world_size() == 1:
        return read()
    outcome = None
    if is_main():
        try:
            outcome = ("ok", read())
        except UserError as e:
            outcome = ("error", e.message, e.hint)
    outcome = broadcast(outcome)
    if outcome[0] == "error":
        raise UserError(outcome[1], hint=outcome[2])
    return outcome[1]


def check_storage(path) -> dict:
    """Whether every process sees the file rank 0 has just written at `path` (the run's status.json), with the very
    same content: then the machines share the run directory's storage. Returns rank 0's machine ("host") and the
    machines that do not see it ("unseen", as "node 1 (its name)"; none where it is shared). Where some do not,
    transformers saves each checkpoint on every machine (save_on_each_node), so that --resume finds it there too."""
    global _shared
    from pathlib import Path

    if world_size() == 1:
        _shared = True
        return {"host": socket.gethostname(), "unseen": []}
    written, host = broadcast((Path(path).read_text(encoding="utf-8"), socket.gethostname()) if is_main() else None)
    try:
        seen = Path(path).read_text(encoding="utf-8") == written
    except OSError:
        seen = False
    views = gather((seen, f"node {node_rank()} ({socket.gethostname()})"))
    _shared = all(ok for ok, _ in views)
    return {"host": host, "unseen": sorted({name for ok, name in views if not ok})}


def storage_shared() -> bool:
    return _shared is not False


def whereabouts() -> dict:
    """Where this process runs: its machine's name and its node rank (summary.json's per-process figures)."""
    return {"host": socket.gethostname(), "node": node_rank()}


LOST = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "remote worker",
    "remote process",
    "nccl communicator was aborted",
    "ncclremoteerror",
)
"""How torch's collectives say that another process is gone: gloo's "Connection closed by peer ... typically caused
by a remote worker crashing" or "Read error ... Connection reset by peer" when its process died (its machine killed,
or quickft stopped there), a timeout when it stopped answering (a frozen machine, a cut network), NCCL's aborted
communicator on GPUs."""


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the run is gone."""
    if world_size() == 1 or not isinstance(error, RuntimeError):
        return False
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or any(words in str(error).lower() for words in LOST)


def exit_now(code: int) -> None:
    """Leave at once, after a lost process: the process group's threads, still waiting on the lost peer, would
    otherwise abort the interpreter at exit ("terminate called without an active exception") and turn the exit code
    into a SIGABRT."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def same_launcher(command: str, device: str) -> str:
    """`command` (a `quickft ...` line) as this run was started: with --gpus N or --nnodes N (node 0's options:
    each machine gives its own --node-rank), under srun again, or through torchrun by hand on CPUs."""
    if world_size() == 1:
        return command
    how = launched()
    if how.get("via") == "SLURM":
        return f"{command}    (under srun again, one task per node)"
    if how:
        flags = how["flags"] or (f"--gpus {world_size()}" if device == "cuda" else "")
        line = f"{command} {flags}".strip()
        return line + ("    (on each node, with its own --node-rank)" if how.get("nodes") else "")
    if nodes() > 1:
        return f"torchrun <your rendezvous options> -m {command}    (on each node, as you started it)"
    if device == "cuda":
        return f"{command} --gpus {world_size()}"
    return f"torchrun --standalone --nproc-per-node {world_size()} -m {command}"


def fsdp_settings(recipe) -> dict:
    """transformers' arguments for recipe.distributed="fsdp" with several processes: FSDP2 through accelerate, each
    decoder layer a unit of its own (the model's _no_split_modules), weights gathered back whole when saved (the run
    directory holds an ordinary model or adapter)."""
    if recipe.distributed != "fsdp" or world_size() == 1:
        return {}
    return {"fsdp": True, "fsdp_config": {"version": 2, "state_dict_type": "FULL_STATE_DICT"}}


@contextlib.contextmanager
def fsdp_on_cpu(args):
    """accelerate shards with FSDP on accelerators only: on CPU processes it keeps DDP and drops the FSDP plugin
    transformers gives it, silently. torch's FSDP2 runs on CPUs with gloo, so while the trainer builds its
    Accelerator, quickft takes the plugin as accelerate does on GPUs, and the very same sharding (accelerate's
    fsdp2_prepare_model, transformers' saving and loading) runs on CPU processes: how quickft tests it here."""
    if not getattr(args, "fsdp", None) or not args.use_cpu:
        yield
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *a, fsdp_plugin=None, **kw):
        original(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # every later AcceleratorState() copies PartialState's type: keep it FSDP for this process
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original


def sharded(model) -> bool:
    """Whether FSDP shards `model`: then every forward pass gathers weights from all processes, so the processes
    answer test cases together (transformers' generate keeps them in step), never rank 0 alone."""
    from torch.distributed.fsdp import FSDPModule

    return world_size() > 1 and any(isinstance(m, FSDPModule) for m in model.modules())


def weights_held(model) -> int:
    """How many of the model's weights this process holds: all of them, or under FSDP its shard of each."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())


def leave() -> None:
    """Close the process group before the interpreter exits: left to the interpreter's teardown, the group's threads
    abort it ("terminate called without an active exception", SIGABRT in place of the exit code) when the other
    processes have gone first. Not after a lost process: `exit_now` leaves without waiting on it."""
    if world_size() == 1 or _flags is None:
        return

    error = sys.exc_info()[1]
    if isinstance(error, ProcessLost) or (error is not None and lost_peer(error)):
        return
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def joined() -> None:
    """In a training process, once connected to the others: tell the launcher (quickft.launch), if it started us."""
    if path := launched().get("joined"):
        with contextlib.suppress(OSError):  # a marker, never a reason to stop training
            Path(path).touch()


def launched() -> dict:
    """How quickft's launcher started this process ({} when it did not: one process, or torchrun by hand)."""
    return json.loads(os.environ.get(LAUNCHED, "{}"))
