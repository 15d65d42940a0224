"""Several processes through the real launcher: torchrun starts 2 CPU processes on the gloo backend, on one machine
or as two "machines" (two torchrun agents meeting at a c10d rendezvous on 127.0.0.1).

Data-parallel on 2 processes with micro-batch 4 must train what one process with micro-batch 8 trains: accelerate
gives each process every other micro-batch of the same shuffled order, DDP averages the gradients, so the logged
losses agree (here to 1e-4) and the tokens counted add up to the same numbers exactly. Two machines with one process
each must train what one machine with both trains.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_recipe

from quickft.cli import main


def torchrun(*args: str, processes: int = 2) -> list[str]:
    """torchrun's own command line (torch.distributed.run), for this venv's Python; --standalone picks a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]


@pytest.fixture(scope="module")
def dp_recipe(tmp_path_factory, tiny_model_dir, sums_file) -> Path:
    return write_recipe(
        tmp_path_factory.mktemp("recipe") / "dp.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template="Pregunta: {{prompt}}\\nRespuesta: ", holdout=4),
            lora=LoRA(r=4, alpha=8, dropout=0.0),
            max_seq_length=32,
            micro_batch_size=4,
            learning_rate=5e-3,
            max_steps=12,
            logging_steps=2,
            max_new_tokens=4,
            backend="peft",
        )
        """,
    )


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def one_machine(dp_recipe, tmp_path_factory) -> tuple[Path, str]:
    """2 processes on one machine (torchrun --standalone): the run directory and the console."""
    runs = tmp_path_factory.mktemp("runs")
    done = subprocess.run(
        torchrun("-m", "quickft", "run", str(dp_recipe), "--output-dir", str(runs / "two")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in runs.iterdir()] == ["two"]  # one run directory, picked by rank 0 for both
    return runs / "two", done.stdout


def test_two_processes_train_what_one_trains_with_the_same_effective_batch(dp_recipe, one_machine, tmp_path, capsys):
    one = tmp_path / "one"
    assert main(["run", str(dp_recipe), "micro_batch_size=8", "--output-dir", str(one), "--quiet"]) == 0
    capsys.readouterr()
    two, out = one_machine
    assert json.loads((two / "status.json").read_text())["status"] == "completed"

    single, double = rows_of(one), rows_of(two)
    assert [r["step"] for r in double] == [2, 4, 6, 8, 10, 12]  # each logging step once: only rank 0 writes
    assert [r["step"] for r in single] == [r["step"] for r in double]
    previous = 0
    for a, b in zip(single, double, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        # the same samples: every process's share summed is what one process counted
        assert (b["tokens"], b["samples"]) == (a["tokens"], a["samples"])
        assert b["padding_tokens"] <= a["padding_tokens"]  # each half-batch is padded to its own longest row only
        assert b["tokens_per_s"] == pytest.approx((b["tokens"] - previous) / b["window_s"])  # both processes' tokens
        previous = b["tokens"]

    summary = json.loads((two / "summary.json").read_text())
    per = summary["processes"]["per_process"]
    assert summary["processes"]["backend"] == "gloo" and len(per) == 2
    train = summary["train"]
    assert train["processes"] == 2
    assert (
        train["tokens"]
        == sum(p["tokens"] for p in per)
        == json.loads((one / "summary.json").read_text())["train"]["tokens"]
    )
    assert all(p["tokens"] > 0 for p in per)
    assert train["tokens_per_s"] == pytest.approx(train["tokens"] / train["steps_time_s"])
    assert summary["memory"]["peak_rss_mb"] == max(p["peak_rss_mb"] for p in per)

    # the console: one header, one report, one line per logging step, however many processes
    assert out.count("quickft run") == 1 and out.count("quickft report") == 1
    step_lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 6 == len(set(step_lines))
    assert "× 2 processes (gloo) = 8 effective" in out
    assert "(the sum of 2 processes)" in out and "the largest of 2 processes: peak RSS" in out
    # the model rank 0 saved answers like the one trained in one process
    assert (two / "adapter_model.safetensors").is_file() and (two / "samples.jsonl").is_file()


def test_ctrl_c_under_torchrun_saves_once_and_resumes(dp_recipe, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "first.log"
    command = torchrun(
        "-m", "quickft", "run", str(dp_recipe), "max_steps=120", "save_every=5", "--output-dir", str(run_dir)
    )
    with open(log, "w") as out:
        # a session of its own: Ctrl-C in a terminal goes to torchrun and both processes at once, as here
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 4):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=120)
    text = log.read_text()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted", text
    assert text.count("saving a checkpoint after this step") == 1  # rank 0 speaks for both
    assert text.count("resume with:") == 1
    assert (
        f"resume with: torchrun --standalone --nproc-per-node 2 -m quickft run {dp_recipe} --resume {run_dir}" in text
    )
    stopped_at = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert stopped_at < 120

    resumed = subprocess.run(
        torchrun("-m", "quickft", "run", str(dp_recipe), "--resume", str(run_dir), "--quiet"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    steps = [r["step"] for r in rows_of(run_dir) if "loss" in r]
    # the rows after the checkpoint written again, once each; the step it stopped at is logged too (the last step)
    assert steps == sorted({*range(2, 121, 2), stopped_at})
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == 120 and summary["train"]["session_steps"] == 120 - stopped_at


def test_gpus_starts_torchrun_with_the_same_command(dp_recipe, monkeypatch, capfd):
    """--gpus N runs torchrun in this process. This machine has no GPU, so the GPU count is the one thing faked (the
    processes torchrun starts are real and, seeing no GPU, train nothing here: the recipe is bad on purpose), and
    the exit code and the one error message come back through torchrun."""
    import torch

    from quickft.launch import torchrun_arguments

    assert torchrun_arguments(["run", "r.py", "--gpus", "2", "lora.r=8"], 2) == [
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "quickft",
        "run",
        "r.py",
        "lora.r=8",
    ]
    assert torchrun_arguments(["run", "r.py", "--gpus=4"], 4)[-2:] == ["run", "r.py"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    threads, on_term = os.environ.get("OMP_NUM_THREADS"), signal.getsignal(signal.SIGTERM)
    capfd.readouterr()
    assert main(["run", str(dp_recipe), "learning_rat=1e-3", "--gpus", "2"]) == 2
    err = capfd.readouterr().err
    assert err.count("error: ") == 1 and "learning_rat" in err
    # torchrun's setting for its processes and its signal handlers are not left behind in this process
    assert os.environ.get("OMP_NUM_THREADS") == threads and signal.getsignal(signal.SIGTERM) == on_term


def test_gpus_on_a_machine_without_them_says_how_to_use_cpu_processes(dp_recipe, capsys):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    assert main(["run", str(dp_recipe), "--gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "--gpus 2: this machine has 0 NVIDIA GPUs" in err and "torchrun --nproc-per-node 2 -m quickft run" in err


def test_several_processes_train_on_the_peft_path():
    from quickft.hardware import Hardware, UnslothStatus, choose

    gpu = Hardware("cuda", "NVIDIA H100", (9, 0), 80 * 2**30)
    ready = UnslothStatus(True, "2026.10.9", triton=True)
    assert choose(gpu, ready).backend == "unsloth"
    choice = choose(gpu, ready, processes=2)
    assert choice.backend == "peft" and "2 processes" in choice.reason and "DDP" in choice.reason
    with pytest.raises(ValueError, match="2 processes"):
        choose(gpu, ready, requested="unsloth", processes=2)
    cpu = Hardware("cpu")
    with pytest.raises(ValueError):  # Unsloth's CPU mode is not run data-parallel either
        choose(cpu, ready, requested="unsloth", processes=2)


WAITS_FOR_RANK_0 = """
import datetime, json, pathlib, sys, time
from accelerate import PartialState
PartialState(cpu=True, timeout=datetime.timedelta(seconds=10))  # the default group gives up after 10 s
from quickft import distributed
distributed.start("cpu")
if distributed.is_main():
    time.sleep(15)  # rank 0 answers test cases; the others wait at the broadcast
row = distributed.broadcast({"case_score": 0.5} if distributed.is_main() else None)
stop = distributed.any_process(distributed.rank() == 1)
# one file per rank: both ranks share torchrun's stdout, where their lines can interleave
out = pathlib.Path(sys.argv[1]) / f"rank{distributed.rank()}.json"
out.write_text(json.dumps({"rank": distributed.rank(), "row": row, "stop": stop}))
"""


def test_the_other_ranks_wait_for_rank_0_past_the_default_groups_timeout(tmp_path):
    """While rank 0 answers test cases the others wait in the evaluation's broadcast. Through the default group
    (NCCL's 10 minutes on GPUs) they died at its timeout; the broadcast goes through the side group, whose timeout is
    quickft's own. Here the default group's timeout is 10 s, and rank 0 takes 15.

    What is checked is the wait: both ranks get rank 0's row and the stop flag, and nothing timed out. The exit code
    is not: with a default group this short, a loaded machine sometimes aborts a process at interpreter exit, after
    its work is done ("terminate called without an active exception", seen with torch 2.7); a real run's default
    group waits 10 to 30 minutes."""
    script = tmp_path / "waits.py"
    script.write_text(WAITS_FOR_RANK_0, encoding="utf-8")
    done = subprocess.run(torchrun(str(script), str(tmp_path)), capture_output=True, text=True, timeout=120)
    printed = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("rank*.json"))]
    assert [p["rank"] for p in printed] == [0, 1], done.stderr[-3000:]
    assert all(p["row"] == {"case_score": 0.5} and p["stop"] is True for p in printed)
    assert "Timed out" not in done.stderr, done.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- several machines
# Two torchrun agents on this machine play two machines: each `quickft run --nnodes 2` runs torchrun in its own
# process (one training process each), and they meet at a c10d rendezvous on 127.0.0.1, as two hosts would.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_machine(
    args: list[str], log: Path, *, node_rank: int | None = None, port: int | None = None, env=None, wrap=()
):
    """One "machine": `quickft run ARGS` started with --nnodes 2 (or with SLURM's variables in `env`), in a session
    of its own, as a terminal of its own would start it. One training process: OMP_NUM_THREADS=1, as torchrun sets
    for two processes on one machine."""
    nodes = ["--nnodes", "2", "--node-rank", str(node_rank), "--master", f"127.0.0.1:{port}"] if port else []
    return subprocess.Popen(
        [*wrap, sys.executable, "-m", "quickft", "run", *args, *nodes],
        stdout=open(log, "w"),  # noqa: SIM115 (closed when the process is waited for)
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}),
    )


def kill_machine(process: subprocess.Popen) -> None:
    """SIGKILL a machine's every process: its torchrun agent and the training process it started (torchrun starts
    those in sessions of their own, so the agent's process group is not all of them)."""
    import psutil

    agent = psutil.Process(process.pid)
    for p in [*agent.children(recursive=True), agent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def finish(machines: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """Every machine's exit code; any still running after `timeout` is killed (and the test fails)."""
    try:
        return [m.wait(timeout=timeout) for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                kill_machine(m)
                m.wait()
            m.stdout and m.stdout.close()


def wait_for_rows(metrics: Path, n: int, machines: list[subprocess.Popen], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= n):
        assert all(m.poll() is None for m in machines) and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_two_machines_train_what_one_machine_trains(dp_recipe, one_machine, tmp_path):
    """--nnodes 2 --node-rank R --master 127.0.0.1:PORT on two agents: the losses of one machine with both
    processes (to 1e-4), the very same counts in each row and in each process, one run directory."""
    port, run_dir = free_port(), tmp_path / "run"
    logs = [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    # machine 0 first: on one host, torchrun's c10d orders the machines by their agent's process id
    machines = [
        start_machine([str(dp_recipe), "--output-dir", str(run_dir)], logs[r], node_rank=r, port=port) for r in (0, 1)
    ]
    assert finish(machines) == [0, 0], logs[0].read_text() + logs[1].read_text()
    first, second = logs[0].read_text(), logs[1].read_text()
    one, _ = one_machine

    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["run"]  # one run directory
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    on_one, on_two = rows_of(one), rows_of(run_dir)
    assert [r["step"] for r in on_two] == [r["step"] for r in on_one] == [2, 4, 6, 8, 10, 12]
    for a, b in zip(on_one, on_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert (b["tokens"], b["samples"], b["padding_tokens"]) == (a["tokens"], a["samples"], a["padding_tokens"])
    summary, alone = json.loads((run_dir / "summary.json").read_text()), json.loads((one / "summary.json").read_text())
    counts = ("tokens", "samples", "padding")
    # rank 0 and rank 1 each trained the share they train on one machine, now on machines 0 and 1
    per, per_alone = summary["processes"]["per_process"], alone["processes"]["per_process"]
    assert [[p[k] for k in counts] for p in per] == [[p[k] for k in counts] for p in per_alone]
    assert [p["node"] for p in per] == [0, 1] and [p["node"] for p in per_alone] == [0, 0]
    assert summary["train"]["tokens"] == alone["train"]["tokens"] == sum(p["tokens"] for p in per)

    # machine 0's console shows the run, once; machine 1's says where it is
    assert (
        first.count("quickft report") == 1
        and len([line for line in first.splitlines() if line.startswith("step ")]) == 6
    )
    assert "× 2 processes on 2 machines (gloo) = 8 effective" in first
    assert f"2 machines × 1 process, c10d rendezvous at 127.0.0.1:{port}; rank 0 on" in first
    assert "shared: every machine sees the run directory (only rank 0 writes it)" in first
    assert "quickft report" not in second and not [line for line in second.splitlines() if line.startswith("step ")]
    assert "node 1 (" in second and f"training their share of the run; rank 0, on {socket.gethostname()}" in second


@pytest.mark.parametrize("dies", [1, 0], ids=["machine 1 dies", "machine 0 (rank 0, the rendezvous) dies"])
def test_a_machine_that_dies_stops_the_other_with_a_clear_message(dp_recipe, tmp_path, dies):
    """SIGKILL one machine mid-training (its agent and its training process, as a machine that loses power): the
    other stops within seconds, exit 3, with one message saying what happened and how to resume, and status.json
    says so where rank 0 survived. The two machines are started the way srun starts them: SLURM's variables (one
    task per node), no quickft option."""
    port, run_dir = free_port(), tmp_path / "run"
    logs = [tmp_path / "machine0.log", tmp_path / "machine1.log"]

    def slurm(node: int) -> dict:
        return {
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NUM_NODES": "2",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_NODEID": str(node),
            "SLURM_STEP_NODELIST": "gpu-[07-08]",
            "MASTER_ADDR": "127.0.0.1",  # as a batch script exports it (else node 0 is gpu-07)
            "MASTER_PORT": str(port),
        }

    args = [str(dp_recipe), "max_steps=400", "save_every=2", "--output-dir", str(run_dir)]
    machines = [start_machine(args, logs[r], env=slurm(r)) for r in (0, 1)]
    try:
        wait_for_rows(run_dir / "metrics.jsonl", 2, machines, logs[0])
        kill_machine(machines[dies])
        killed = time.monotonic()
        survivor = machines[1 - dies]
        code = survivor.wait(timeout=120)
        waited = time.monotonic() - killed
    finally:
        finish(machines)
    said = logs[1 - dies].read_text()
    assert code == 3, said
    assert waited < 60, f"the survivor took {waited:.0f} s to stop"  # seconds here; no collective timeout waited for
    assert "torchrun --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:" in said and "--rdzv-id=4242" in said
    assert said.count("error: lost another process of this run on 2 machines:") == 1
    assert "its machine stopped, was killed or lost the network" in said
    assert "resume from checkpoint-" in said and f"quickft run {dp_recipe} --resume {run_dir}" in said
    assert "(under srun again, one task per node)" in said
    assert "quickft crashed" not in said and "Traceback" not in said
    if dies == 1:  # rank 0 survived and wrote why the run stopped
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed" and status["error"].startswith("lost another process of this run")


def _mount_namespaces() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def own_disk(disk: Path, at: Path) -> tuple[str, ...]:
    """A command prefix that gives a "machine" storage of its own at `at`: a mount namespace where `disk` is mounted
    over `at` (util-linux's unshare; a user namespace where not root). What the others write at `at` it does not see,
    and what it writes there lands in `disk`."""
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'  # $0: the disk, $1: where, then the command
    return ("unshare", "--mount", "--map-root-user", "sh", "-c", script, str(disk), str(at))


@pytest.mark.skipif(
    not _mount_namespaces(), reason="needs mount namespaces (unshare --mount) to give a machine its own disk"
)
def test_ctrl_c_and_resume_on_machines_without_shared_storage(dp_recipe, tmp_path):
    """Machine 1 has a disk of its own at the run directory's path. Rank 0 writes the run directory on machine 0;
    machine 1 keeps only its own copy of each checkpoint there (save_on_each_node), which its --resume needs. Ctrl-C on
    machine 0 stops both after one checkpoint; resuming without machine 1's copy stops both with one message naming
    it; resuming with it trains to the end."""
    outputs, disk1 = tmp_path / "outputs", tmp_path / "disk1"
    outputs.mkdir(), disk1.mkdir()
    run_dir, port = outputs / "run", free_port()
    logs = [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    args = [str(dp_recipe), "max_steps=120", "save_every=5", "--output-dir", str(run_dir)]
    machines = [
        start_machine(args, logs[0], node_rank=0, port=port),
        start_machine(args, logs[1], node_rank=1, port=port, wrap=own_disk(disk1, outputs)),
    ]
    try:
        wait_for_rows(run_dir / "metrics.jsonl", 3, machines, logs[0])
        os.killpg(machines[0].pid, signal.SIGINT)  # Ctrl-C in machine 0's terminal only
    finally:
        codes = finish(machines, timeout=120)
    first, second = logs[0].read_text(), logs[1].read_text()
    assert codes == [130, 130], first + second
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert "storage         on rank 0's machine" in first and "node 1 (" in first.split("storage")[1]
    assert "which this machine does not see: it keeps its own copy of each checkpoint there" in second
    # machine 1's disk holds no run files, only its checkpoints: the same steps, each process's own RNG state
    kept = sorted(p.name for p in (disk1 / "run" / "checkpoints").glob("checkpoint-*"))
    assert kept == sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) and kept
    assert not any((disk1 / "run" / name).exists() for name in ("status.json", "recipe.json", "metrics.jsonl"))
    last = max(kept, key=lambda name: int(name.split("-")[1]))
    assert (disk1 / "run" / "checkpoints" / last / "rng_state_1.pth").is_file()
    assert not (run_dir / "checkpoints" / last / "rng_state_1.pth").exists()
    stopped_at = int(last.split("-")[1])

    # resuming where machine 1 has no copy: both stop at once, saying which checkpoint is missing where
    resume = [str(dp_recipe), "--resume", str(run_dir), "--quiet"]
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    machines = [
        start_machine(resume, logs[0], node_rank=0, port=port),
        start_machine(resume, logs[1], node_rank=1, port=port, wrap=own_disk(empty, outputs)),
    ]
    assert finish(machines, timeout=300) == [2, 2]
    missing = f"{run_dir / 'checkpoints' / last} is not on this machine"
    assert f"error: process 1 (on {socket.gethostname()}): {missing}" in logs[0].read_text()
    assert f"error: {missing}" in logs[1].read_text()

    port = free_port()
    machines = [
        start_machine(resume, logs[0], node_rank=0, port=port),
        start_machine(resume, logs[1], node_rank=1, port=port, wrap=own_disk(disk1, outputs)),
    ]
    assert finish(machines) == [0, 0], logs[0].read_text() + logs[1].read_text()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    # every 2 steps, and the step it stopped at (the last step is always logged)
    assert [r["step"] for r in rows_of(run_dir) if "loss" in r] == sorted({*range(2, 121, 2), stopped_at})
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == 120 and summary["train"]["session_steps"] == 120 - stopped_at


def test_torchrun_meets_the_other_machines_at_node_0():
    from quickft.launch import Nodes, torchrun_arguments

    nodes = Nodes(2, 1, "10.0.0.1:29500", "--nnodes")
    argv = ["run", "r.py", "--nnodes", "2", "--node-rank=1", "--master", "10.0.0.1:29500", "--gpus", "4", "lora.r=8"]
    assert torchrun_arguments(argv, 4, nodes) == [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29500",
        "--rdzv-id=quickft",
        "--rdzv-conf=is_host=0",  # quickft's launcher on node 0 serves the rendezvous' store, torchrun connects
        "--nproc-per-node=4",
        "-m",
        "quickft",
        "run",
        "r.py",
        "lora.r=8",
    ]
    assert torchrun_arguments(["run", "r.py", "--rdzv-endpoint=h:1", "--nnodes=2"], 1, nodes)[-2:] == ["run", "r.py"]


def test_srun_variables_read_as_torchrun_options():
    """srun on 2 nodes, one task each: node rank SLURM_NODEID, node 0 the step's first host (or MASTER_ADDR),
    port MASTER_PORT or torchrun's 29500, the job id as the rendezvous id. Several tasks per node are refused: quickft
    starts the processes of each node itself."""
    from quickft.errors import UserError
    from quickft.launch import Nodes, first_host, slurm_nodes

    step = {
        "SLURM_JOB_ID": "81",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NODELIST": "gpu-[07-08]",
    }
    assert slurm_nodes(step) == Nodes(2, 1, "gpu-07:29500", "SLURM", "81")
    assert slurm_nodes(step | {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "6000"}).endpoint == "10.1.2.3:6000"
    assert slurm_nodes({"SLURM_JOB_ID": "81", "SLURM_NNODES": "2"}) is None  # sbatch's own script: no srun step
    assert slurm_nodes(step | {"SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "1"}) is None
    with pytest.raises(UserError, match="srun started 8 tasks on 2 nodes") as refused:
        slurm_nodes(step | {"SLURM_STEP_NUM_TASKS": "8"})
    assert "srun --ntasks-per-node 1" in refused.value.hint
    assert [
        first_host(s) for s in ("gpu-[03-04,07],cpu1", "node5", "a[1,3]b,c", "x-[009-010]-ib", "n[2-3],m[1-2]")
    ] == [
        "gpu-03",
        "node5",
        "a1b",
        "x-009-ib",
        "n2",
    ]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--nnodes", "2", "--node-rank", "0"], "--nnodes 2: needs --master ADDR:PORT"),
        (["--nnodes", "2", "--master", "10.0.0.1:29500"], "--nnodes 2: needs --node-rank 0 to 1"),
        (["--nnodes", "2", "--node-rank", "2", "--master", "h:1"], "needs --node-rank 0 to 1, got 2"),
        (["--nnodes", "2", "--node-rank", "1", "--master", "10.0.0.1"], "--master 10.0.0.1: expected ADDRESS:PORT"),
        (["--node-rank", "1"], "--node-rank and --master go with --nnodes"),
        (["--nnodes", "0"], "--nnodes 0: needs at least 1"),
    ],
)
def test_machine_options_are_checked_before_anything_starts(dp_recipe, options, said, capsys):
    assert main(["run", str(dp_recipe), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and said in err and "fix: " in err


def test_node_0_says_when_it_cannot_serve_the_rendezvous(dp_recipe, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ["--nnodes", "2", "--node-rank", "0", "--master", f"127.0.0.1:{port}"]
        assert main(["run", str(dp_recipe), *options]) == 2
    err = capsys.readouterr().err
    assert f"--master 127.0.0.1:{port}: node 0 cannot listen there" in err and "a free port" in err
    assert "QUICKFT_LAUNCHED" not in os.environ  # nothing of the launch left in this process
