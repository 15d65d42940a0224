"""Several processes through the real launcher: torchrun starts 2 CPU processes on the gloo backend.

Data-parallel on 2 processes with micro-batch 4 must train what one process with micro-batch 8 trains: accelerate
gives each process every other micro-batch of the same shuffled order, DDP averages the gradients, so the logged
losses agree (here to 1e-4) and the tokens counted add up to the same numbers exactly.
"""

from __future__ import annotations

import json
import os
import signal
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


@pytest.fixture
def dp_recipe(tmp_path, tiny_model_dir, sums_file) -> Path:
    return write_recipe(
        tmp_path / "dp.py",
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


def test_two_processes_train_what_one_trains_with_the_same_effective_batch(dp_recipe, tmp_path, capsys):
    one = tmp_path / "one"
    assert main(["run", str(dp_recipe), "micro_batch_size=8", "--output-dir", str(one), "--quiet"]) == 0
    capsys.readouterr()
    runs = tmp_path / "runs"
    done = subprocess.run(
        torchrun("-m", "quickft", "run", str(dp_recipe), "--output-dir", str(runs / "two")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    two = runs / "two"
    assert [p.name for p in runs.iterdir()] == ["two"]  # one run directory, picked by rank 0 for both
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
    out = done.stdout
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
    assert steps == list(range(2, 121, 2))  # the rows after the checkpoint written again, once each
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == 120 and summary["train"]["session_steps"] == 120 - stopped_at


def test_gpus_starts_torchrun_with_the_same_command(dp_recipe, monkeypatch, capfd):
    """--gpus N runs torchrun in this process. This machine has no GPU, so the GPU count is the one thing faked (the
    processes torchrun starts are real and, seeing no GPU, train nothing here: the recipe is bad on purpose), and
    the exit code and the one error message come back through torchrun."""
    import torch

    from quickft.distributed import torchrun_arguments

    assert torchrun_arguments(2, ["run", "r.py", "--gpus", "2", "lora.r=8"]) == [
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "quickft",
        "run",
        "r.py",
        "lora.r=8",
    ]
    assert torchrun_arguments(4, ["run", "r.py", "--gpus=4"])[-2:] == ["run", "r.py"]
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
