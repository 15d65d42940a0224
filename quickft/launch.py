"""How `quickft run` starts several processes: torchrun's command line from `--gpus N` (one machine), from
`--nnodes N --node-rank R --master ADDR:PORT` (several machines, through torchrun's c10d rendezvous), or from the
variables SLURM's srun sets (one quickft per node).

This runs in the process the user started, before anything trains: it builds torchrun's arguments and runs torchrun
(torch.distributed.run) in this same process, which starts the training processes on this node and waits for them.
What each training process then does with the others is quickft.distributed's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quickft import distributed
from quickft.distributed import LAUNCHED
from quickft.errors import UserError

LAUNCHER_OPTIONS = ("--gpus", "--nnodes", "--node-rank", "--master", "--rdzv-endpoint")
"""quickft's options that the launcher consumes: the processes it starts run the same command without them."""
DEFAULT_PORT = 29500
"""torchrun's own default port, where SLURM's variables name no MASTER_PORT."""


@dataclass(frozen=True)
class Nodes:
    """Several machines, one torchrun agent on each, meeting at a c10d rendezvous hosted by node 0."""

    count: int
    rank: int
    endpoint: str
    """host:port of node 0, where torchrun's rendezvous store listens."""
    via: str
    """Where the three came from: the command line or SLURM."""
    run_id: str = "quickft"
    """torchrun's --rdzv-id: the same on every node of one run."""


def parse_endpoint(text: str, option: str = "--master") -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"{option} {text}: expected ADDRESS:PORT (node 0's address and a free port)",
            hint=f"e.g. {option} 10.0.0.1:29500",
        )
    return f"{host}:{int(port)}"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu-[03-04,07],cpu1' -> 'gpu-03' (what `scontrol show hostnames`
    prints first; SLURM keeps the list sorted, and node 0 is its first host)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            end = i
            break
    first = nodelist[:end]
    match = re.fullmatch(r"([^\[]*)\[([^\],-]+)[^\]]*\](.*)", first)
    return "".join(match.groups()) if match else first


def slurm_nodes(env: dict | None = None) -> Nodes | None:
    """Nodes from an srun step spanning several nodes, read as torchrun's options would give them: SLURM_NODEID is
    the node rank, the step's first host is node 0 (MASTER_ADDR / MASTER_PORT when set, else port 29500). None
    outside such a step. srun must start one task per node: torchrun then starts one process per GPU."""
    env = os.environ if env is None else env
    count = int(env.get("SLURM_STEP_NUM_NODES", "1"))  # srun sets the SLURM_STEP_ ones; sbatch's script has none
    if count < 2:
        return None
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", str(count)))
    if tasks != count:
        raise UserError(
            f"srun started {tasks} tasks on {count} nodes: quickft starts one process per GPU itself, from one task "
            "per node",
            hint="srun --ntasks-per-node 1 quickft run RECIPE (or start torchrun yourself in each task)",
        )
    nodelist = env.get("SLURM_STEP_NODELIST", "")
    host = env.get("MASTER_ADDR") or first_host(nodelist)
    if not host:
        raise UserError("SLURM: no SLURM_STEP_NODELIST to find node 0 in", hint="export MASTER_ADDR=<node 0's address>")
    port = env.get("MASTER_PORT", str(DEFAULT_PORT))
    endpoint = parse_endpoint(f"{host}:{port}", "MASTER_ADDR:MASTER_PORT")
    return Nodes(count, int(env.get("SLURM_NODEID", "0")), endpoint, "SLURM", env.get("SLURM_JOB_ID", "quickft"))


def command_line_nodes(nnodes: int | None, node_rank: int | None, master: str | None) -> Nodes | None:
    if nnodes is None:
        if node_rank is not None or master is not None:
            raise UserError(
                "--node-rank and --master go with --nnodes",
                hint="e.g. --nnodes 2 --node-rank 0 --master 10.0.0.1:29500",
            )
        return None
    if nnodes < 1:
        raise UserError(f"--nnodes {nnodes}: needs at least 1", hint="e.g. --nnodes 2")
    if nnodes == 1:
        return None
    if master is None:
        raise UserError(
            f"--nnodes {nnodes}: needs --master ADDR:PORT, node 0's address (where torchrun's rendezvous listens)",
            hint="the same --master on every node, e.g. --master 10.0.0.1:29500",
        )
    if node_rank is None or not 0 <= node_rank < nnodes:
        raise UserError(
            f"--nnodes {nnodes}: needs --node-rank 0 to {nnodes - 1}"
            + (f", got {node_rank}" if node_rank is not None else ""),
            hint="--node-rank 0 on the machine at --master's address, 1, 2, ... on the others",
        )
    return Nodes(nnodes, node_rank, parse_endpoint(master), "--nnodes")


def torchrun_arguments(argv: list[str], per_node: int, nodes: Nodes | None = None) -> list[str]:
    """torchrun's arguments: the same quickft command without the launcher's options, as `per_node` processes on
    this machine; on one machine --standalone (torchrun picks a free port itself), on several a c10d rendezvous at
    node 0, whose store quickft's launcher on node 0 serves (`_rendezvous`): torchrun on every node only connects
    to it (is_host=0)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCHER_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCHER_OPTIONS)):
            rest.append(arg)
    if nodes is None:
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={nodes.count}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={nodes.endpoint}",
            f"--rdzv-id={nodes.run_id}",
            "--rdzv-conf=is_host=0",
        ]
    return [*where, f"--nproc-per-node={per_node}", "-m", "quickft", *rest]


def launch(argv: list[str], *, gpus: int | None, nnodes: int | None, node_rank: int | None, master: str | None):
    """`quickft run ... --gpus N` or `--nnodes N ...` (or under srun on several nodes): torchrun, in this process,
    starts the processes of this node running the same command, and waits for them. Returns their exit code: 0, 2
    (bad input, said by the first process), 3 (another node was lost), 130 (Ctrl-C: they saved a checkpoint and
    said how to resume). None where there is nothing to launch (--gpus 1, or no option at all): train here."""
    nodes = command_line_nodes(nnodes, node_rank, master)
    if nodes is None and nnodes is None and distributed.world_size() == 1:
        nodes = slurm_nodes()
    if gpus is None and nodes is None:
        return None
    if distributed.world_size() > 1:
        raise UserError(
            f"this process was already started by a launcher (WORLD_SIZE={distributed.world_size()})",
            hint="drop --gpus / --nnodes: the launcher's own options say how many processes",
        )
    per_node = processes_per_node(gpus)
    if per_node == 1 and nodes is None:
        return None
    arguments = torchrun_arguments(argv, per_node, nodes)
    # the processes touch `joined` once connected: a rendezvous lost after that is node 0 lost, not a bad address
    scratch = Path(tempfile.mkdtemp(prefix="quickft-launch-"))
    try:
        os.environ[LAUNCHED] = json.dumps(
            {"flags": _flags(gpus, nodes), "per_node": per_node, "joined": str(scratch / "joined")}
            | ({"nodes": nodes.count, "endpoint": nodes.endpoint, "via": nodes.via} if nodes else {})
        )
        print("torchrun " + " ".join(arguments), file=sys.stderr, flush=True)
        with _rendezvous(nodes) as store:
            code = _run_torchrun(arguments, nodes, scratch / "joined")
            _leave_together(store, nodes, code)
        return code
    finally:  # nothing of the launch stays behind in this process
        os.environ.pop(LAUNCHED, None)
        shutil.rmtree(scratch, ignore_errors=True)


LEAVE_TIMEOUT_S = 120
"""How long node 0's launcher waits for the other nodes to finish after its own processes did (bounded: a node that
never says so is left behind)."""


@contextlib.contextmanager
def _rendezvous(nodes: Nodes | None):
    """On node 0, the store of torchrun's c10d rendezvous, served by this process rather than by torchrun's agent:
    torchrun on the other nodes stops their processes the moment it loses the store, even mid-checkpoint, so the
    store must outlive node 0's own processes until the others are done (`_leave_together`). None elsewhere."""
    if nodes is None or nodes.rank != 0:
        yield None
        return
    from torch.distributed import TCPStore

    host, port = nodes.endpoint.rsplit(":", 1)
    try:
        store = TCPStore(host, int(port), is_master=True, multi_tenant=True, wait_for_workers=False)
    except RuntimeError as e:  # the port is taken, or the address is not this machine's
        raise UserError(
            f"--master {nodes.endpoint}: node 0 cannot listen there: {str(e).splitlines()[0]}",
            hint="give node 0's own address and a free port (the same on every node)",
        ) from None
    yield store


def _leave_together(store, nodes: Nodes | None, code: int) -> None:
    """Each node says when its processes are done; node 0 waits for the others before it leaves (and its store goes
    with it), unless one is lost already (exit 3: it would never say so)."""
    if nodes is None:
        return
    from datetime import timedelta

    from torch.distributed import TCPStore

    key = f"quickft/{nodes.run_id}/done/"
    try:
        if nodes.rank == 0 and code != 3:
            store.wait([key + str(node) for node in range(1, nodes.count)], timedelta(seconds=LEAVE_TIMEOUT_S))
        elif nodes.rank != 0:
            host, port = nodes.endpoint.rsplit(":", 1)
            TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=10)).set(key + str(nodes.rank), "1")
    except RuntimeError:  # node 0 is gone, or a node never said it was done: leave anyway
        pass


def processes_per_node(gpus: int | None) -> int:
    """--gpus N, checked against this machine's GPUs; without it, every GPU here (one process on a CPU machine)."""
    import torch

    have = torch.cuda.device_count()
    if gpus is None:
        return max(have, 1)
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: needs at least 1", hint="e.g. --gpus 2")
    if gpus > have:
        raise UserError(
            f"--gpus {gpus}: this machine has {have} NVIDIA GPU{'s' if have != 1 else ''}",
            hint=f"use --gpus {have} or fewer"
            if have
            else "without GPUs, start CPU processes with torchrun: torchrun --nproc-per-node 2 -m quickft run RECIPE",
        )
    return gpus


def _flags(gpus: int | None, nodes: Nodes | None) -> str:
    """The options that start this run again the same way (for the resume command), node 0's where they differ."""
    if nodes is not None and nodes.via == "SLURM":
        return ""
    flags = f"--gpus {gpus}" if gpus else ""
    if nodes is not None:
        flags += f" --nnodes {nodes.count} --node-rank 0 --master {nodes.endpoint}"
    return flags.strip()


def _run_torchrun(arguments: list[str], nodes: Nodes | None, joined: Path) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    # torchrun sets OMP_NUM_THREADS=1 here (for its processes) and installs its own signal handlers, and leaves both
    threads = os.environ.get("OMP_NUM_THREADS")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        torchrun(get_args_parser().parse_args(arguments))
    except SignalException:  # Ctrl-C: torchrun passed it on, and the processes stopped after a checkpoint
        return 130
    except ChildFailedError as e:
        codes = [failure.exitcode for failure in e.failures.values()]
        code = next((code for code in codes if code in (2, 3, 130)), codes[0] if codes else 1)
        return code if code > 0 else 1  # killed by a signal (a negative code): a crash
    except RendezvousError as e:
        if joined.exists():  # torchrun lost the rendezvous node 0 hosts, mid-run: node 0 is gone
            print(
                f"error: lost node 0 (its rendezvous at {nodes.endpoint if nodes else '?'}): it stopped, was killed or "
                "lost the network; the processes of this machine stopped too",
                file=sys.stderr,
                flush=True,
            )
            return 3
        # the nodes never met: a wrong address or port, a node not started, a firewall
        raise UserError(
            f"the {nodes.count if nodes else ''} nodes did not meet at {nodes.endpoint if nodes else 'the rendezvous'}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint="start quickft on every node within 10 minutes of each other, with the same --nnodes and --master "
            "(node 0's address, a port open between the machines)",
        ) from None
    finally:  # put both back
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0
