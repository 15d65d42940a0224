"""Every number the report prints is recomputed here, independently, from a real tiny CPU run."""

import collections
import io
import json
import math
import re
import time

import pytest
from rich.console import Console

from quickft.cli import main
from quickft.data import read_examples
from quickft.data.encode import encode
from quickft.recipe import load_recipe
from quickft.report import Reporter
from quickft.train import run as train_run


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory, tiny_model_dir, sums_file):
    """One full epoch (so every example is consumed exactly once), timed from outside quickft."""
    import transformers

    from tests.conftest import write_recipe

    tmp = tmp_path_factory.mktemp("report")
    recipe_path = write_recipe(
        tmp / "epoch.py",
        f"""
        recipe = Recipe(
            model={str(tiny_model_dir)!r},
            data=Data(path={str(sums_file)!r}, prompt_template="Pregunta: {{prompt}}\\nRespuesta: ", holdout=5),
            lora=LoRA(r=4, alpha=8), max_seq_length=24, micro_batch_size=10, learning_rate=5e-3,
            epochs=1, logging_steps=3, max_new_tokens=3,
        )
        """,
    )
    timings = {}
    original_train, original_step = transformers.Trainer.train, transformers.Trainer.training_step

    class StepSpy(transformers.TrainerCallback):  # a spy: its own clock around each optimizer step
        def on_train_begin(self, args, state, control, **kwargs):
            timings["train_began"] = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            timings["step_began"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            timings["steps_s"] = timings.get("steps_s", 0.0) + time.perf_counter() - timings["step_began"]

    def timed_train(self, *args, **kwargs):  # a spy: times the whole call, changes nothing
        self.add_callback(StepSpy())
        start = time.perf_counter()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            timings["call_s"] = time.perf_counter() - start

    def timed_step(self, *args, **kwargs):  # a spy: first step's start to last step's end = the training loop
        timings.setdefault("first", time.perf_counter())
        try:
            return original_step(self, *args, **kwargs)
        finally:
            timings["last"] = time.perf_counter()

    console = Console(record=True, file=io.StringIO(), width=160)
    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.Trainer, "train", timed_train)
    mp.setattr(transformers.Trainer, "training_step", timed_step)
    timings["verb_began"] = time.perf_counter()
    try:
        run_dir = train_run(str(recipe_path), [], output_dir=str(tmp / "run"), reporter=Reporter(console, live=False))
    finally:
        mp.undo()
    recipe = load_recipe(recipe_path)
    return {
        "dir": run_dir,
        "recipe": recipe,
        "console": console.export_text(),
        "train_s": timings["last"] - timings["first"],
        "steps_s": timings["steps_s"],
        "call_s": timings["call_s"],
        "setup_s": timings["train_began"] - timings["verb_began"],
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "rows": [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()],
    }


def test_tokens_per_second_counts_real_tokens(epoch_run, tiny_model_dir):
    from transformers import AutoTokenizer

    recipe, s = epoch_run["recipe"], epoch_run["summary"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = read_examples(recipe.data.path, recipe.data)
    held_out = {json.loads(line)["prompt"] for line in (epoch_run["dir"] / "samples.jsonl").read_text().splitlines()}
    train = [e for e in examples if f"Pregunta: {e.prompt}\nRespuesta: " not in held_out]
    assert len(train) == len(examples) - 5
    tokens = sum(min(len(encode(e, tok, recipe.data)[0]["input_ids"]), recipe.max_seq_length) for e in train)
    assert s["train"]["tokens"] == tokens, "every non-padding token of one epoch, and nothing else"
    assert s["train"]["samples"] == len(train)
    # rates are over the time inside the training steps, by the spy's own clock
    assert s["train"]["tokens_per_s"] == pytest.approx(tokens / epoch_run["steps_s"], rel=0.10)
    assert s["train"]["samples_per_s"] == pytest.approx(len(train) / epoch_run["steps_s"], rel=0.10)
    t = s["train"]
    assert 0 < t["steps_time_s"] <= t["runtime_s"] and t["other_s"] == pytest.approx(t["runtime_s"] - t["steps_time_s"])
    # setup is everything from the verb's start to training's: reading, imports, model load, tokenizing, the trainer
    assert t["setup_s"] == pytest.approx(epoch_run["setup_s"], abs=0.05)
    phases = t["setup_phases"]
    assert list(phases)[:2] == ["reading the recipe and data", "importing torch and choosing the backend"]
    assert any(p.startswith("loading the model") for p in phases) and "building the trainer" in phases
    assert 0 < sum(phases.values()) <= t["setup_s"]
    # and after training, every phase timed: saving, answering the 5 held-out cases, plots and metrics.csv
    assert list(t["after_phases"]) == ["saving the model", "answering 5 test cases", "writing plots and metrics.csv"]
    assert all(seconds > 0 for seconds in t["after_phases"].values())
    rows = epoch_run["rows"]
    assert all(r["padding_tokens"] >= 0 for r in rows) and rows[-1]["tokens"] == tokens


def test_logged_speed_is_one_window_for_all_three_figures(epoch_run):
    """tok/s, samples/s and s/step of a logged row are all over the same steps (since the previous logging step)
    and the same time (inside those steps); the windows add up to the summary's time in steps."""
    rows, t = epoch_run["rows"], epoch_run["summary"]["train"]
    previous = {"step": 0, "tokens": 0, "samples": 0}
    for row in rows:
        assert row["window_steps"] == row["step"] - previous["step"]
        assert row["tokens_per_s"] == pytest.approx((row["tokens"] - previous["tokens"]) / row["window_s"])
        assert row["samples_per_s"] == pytest.approx((row["samples"] - previous["samples"]) / row["window_s"])
        assert row["step_time_s"] == pytest.approx(row["window_s"] / row["window_steps"])
        previous = row
    assert sum(r["window_s"] for r in rows) == pytest.approx(t["steps_time_s"])  # every step is logged here


def test_steps_and_epochs_match_the_trainer(epoch_run):
    s, recipe = epoch_run["summary"], epoch_run["recipe"]
    n_train = s["model"]["examples"]
    assert s["train"]["steps"] == math.ceil(n_train / recipe.micro_batch_size)
    assert s["train"]["epochs"] == pytest.approx(1.0)
    assert s["train"]["session_steps"] == s["train"]["steps"]  # not resumed: this session is the whole run
    assert s["train"]["steps_per_s"] == pytest.approx(s["train"]["steps"] / s["train"]["steps_time_s"])
    # every logging_steps, and the last step whatever logging_steps says
    assert [r["step"] for r in epoch_run["rows"]] == sorted(
        {*range(3, s["train"]["steps"] + 1, 3), s["train"]["steps"]}
    )


def test_loss_summary_matches_metrics(epoch_run):
    rows, loss, steps = epoch_run["rows"], epoch_run["summary"]["loss"], epoch_run["summary"]["train"]["steps"]
    losses = [r["loss"] for r in rows]
    assert (loss["initial"], loss["final"], loss["min"], loss["max"]) == (
        losses[0],
        losses[-1],
        min(losses),
        max(losses),
    )
    assert loss["improvement_pct"] == pytest.approx(100 * (losses[0] - losses[-1]) / losses[0])
    at = lambda limit: [r["loss"] for r in rows if r["step"] <= limit][-1]  # noqa: E731
    marks = [losses[0], at(steps / 3), at(2 * steps / 3), losses[-1]]
    total = losses[0] - losses[-1]
    assert loss["improvement_by_third_pct"] == pytest.approx(
        [100 * (marks[i] - marks[i + 1]) / total for i in range(3)]
    )
    assert sum(loss["improvement_by_third_pct"]) == pytest.approx(100)


def test_metrics_csv_holds_the_jsonl_rows(epoch_run):
    import csv

    with open(epoch_run["dir"] / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in epoch_run["rows"]]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in epoch_run["rows"]]


def test_peak_rss_covers_the_model(epoch_run):
    s = epoch_run["summary"]
    param_bytes = s["model"]["parameters_total"] * 4  # fp32 on CPU
    assert s["memory"]["peak_rss_mb"] * 2**20 >= param_bytes
    assert all(r["peak_rss_mb"] >= r["rss_mb"] for r in epoch_run["rows"])


def test_the_peak_rss_is_never_below_the_current_reading():
    """Linux's high-water mark (getrusage) can trail the current resident size (/proc) read just before it: read
    while memory grows and shrinks, the peak memory() quotes beside the current reading is never the smaller."""
    import torch

    from quickft import metrics as m

    held, below = [], []
    for i in range(400):
        held.append(torch.ones(250_000 * (i % 7 + 1)))  # 1 to 7 MB
        if i % 5 == 0:
            held = held[-3:]
        row = m.memory("cpu")
        below += [row] if row["peak_rss_mb"] < row["rss_mb"] else []
    assert not below, f"{len(below)} of 400 readings, e.g. {below[0]}"


def test_console_header_lines_and_report(epoch_run):
    text, s = epoch_run["console"], epoch_run["summary"]
    assert "\x1b" not in text
    for key in (
        "hardware",
        "backend",
        "precision",
        "quantization",
        "parameters",
        "data",
        "max_seq_length",
        "batch",
        "plan",
    ):
        assert re.search(rf"│ {key}\s", text), key
    assert "Unsloth not used: no GPU found" in text
    assert "10 micro-batch × 1 accumulation = 10 effective" in text
    total, trainable = s["model"]["parameters_total"], s["model"]["parameters_trainable"]
    assert f"{total:,} total, {trainable:,} trainable ({100 * trainable / total:.2f}%)" in text
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert len(lines) == len(epoch_run["rows"])
    first = epoch_run["rows"][0]
    assert lines[0].startswith(f"step      3/{s['train']['steps']} | epoch ")
    assert f"loss {first['loss']:.4f}" in lines[0] and f"{first['tokens_per_s']:,.0f} tok/s" in lines[0]
    t = s["train"]
    assert f"{t['tokens_per_s']:,.0f} tokens/s · {t['samples_per_s']:,.2f} samples/s" in text
    flops = f"{t['flops_per_token']:.3e} per token trained (policy forward and backward {t['flops_per_token']:.2e})"
    assert f"{flops} × tokens/s = {t['flops_per_s']:.3e} FLOP/s" in text
    assert f"initial {s['loss']['initial']:.4f} → final {s['loss']['final']:.4f}" in text
    assert f"peak RSS {s['memory']['peak_rss_mb']:,.1f} MB" in text


def test_plots_are_real_pngs(epoch_run):
    import matplotlib.image

    from quickft.plots import PLOTS

    grpo = {"rewards.png", "groups.png", "preference.png"}  # GRPO's and the preference methods' (their own tests)
    assert set(PLOTS) - {"test_cases.png"} - grpo == {
        "loss.png",
        "loss_per_epoch.png",
        "loss_log.png",
        "learning_rate.png",
        "grad_norm.png",
    }
    assert not (epoch_run["dir"] / "test_cases.png").exists()  # no evaluation during this run
    assert not any((epoch_run["dir"] / name).exists() for name in grpo)
    for name in sorted(set(PLOTS) - {"test_cases.png"} - grpo):
        path = epoch_run["dir"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 100 and pixels.std() > 0.01, f"{name} is blank"


def test_live_display_on_a_terminal(tmp_path, lora_recipe):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    train_run(str(lora_recipe), ["max_steps=4"], output_dir=str(tmp_path / "tty"), reporter=Reporter(console))
    text = out.getvalue()
    assert "\x1b[" in text and "training" in text and "ETA" in text and "tok/s" in text
    assert not re.search(r"^step\s+\d+/", text, re.M), "no plain lines on a terminal"


def test_the_last_step_is_logged_whatever_logging_steps_says(tmp_path, lora_recipe):
    """max_steps=5 logging every 2 steps: step 5 is logged too, its figures those of step 5 alone (the run that logs
    every step has the same loss there), and the report's final loss is step 5's."""
    rows, summaries = {}, {}
    for every in (1, 2):
        out = tmp_path / f"every_{every}"
        args = ["run", str(lora_recipe), "max_steps=5", f"logging_steps={every}", "--output-dir", str(out), "--quiet"]
        assert main(args) == 0
        rows[every] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        summaries[every] = json.loads((out / "summary.json").read_text())
    each, windows, s = rows[1], rows[2], summaries[2]
    assert [r["step"] for r in windows] == [2, 4, 5] and windows[-1]["window_steps"] == 1
    assert windows[-1]["loss"] == pytest.approx(each[4]["loss"], abs=1e-5)
    assert windows[1]["loss"] == pytest.approx((each[2]["loss"] + each[3]["loss"]) / 2, abs=1e-5)
    assert s["train"]["steps"] == 5 and s["loss"]["final"] == windows[-1]["loss"]
    assert sum(r["window_s"] for r in windows) == pytest.approx(s["train"]["steps_time_s"]), "every step in a window"


def test_quiet_prints_only_the_report(tmp_path, lora_recipe, capsys):
    """--quiet prints the end report alone; report.txt holds the same report, word for word (at 120 columns, where a
    log's console is 160 wide: only the wrapping differs)."""
    assert main(["run", str(lora_recipe), "max_steps=2", "--quiet", "--output-dir", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "quickft report" in out and "quickft run" not in out and not re.search(r"^step ", out, re.M)
    saved = (tmp_path / "q" / "report.txt").read_text(encoding="utf-8")
    assert max(len(line) for line in saved.splitlines()) <= 120

    def words(text: str) -> collections.Counter:
        return collections.Counter(re.sub(r"[\u2500-\u257f]", " ", text).split())  # box-drawing characters aside

    report = out[: re.search(r"^written ", out, re.M).start()]  # what follows is the closing: files, next commands
    assert words(saved) == words(report) and "quickft report" in saved


def test_mfu_uses_the_cards_peak_rate():
    """Which card's peak a GPU name gets, and whose share MFU is. (tests/test_flops.py recomputes the figures
    themselves: the FLOP/s from torch's count of the real steps over our own clock, each peak from the card's SMs.)"""
    from quickft.metrics import mfu, peak_flops

    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA GeForce GTX 1050 Ti") is None and mfu(10, 1.0, None) is None
    # whole model names, as torch.cuda.get_device_name() gives them: no substring borrows another card's peak
    assert (
        peak_flops("NVIDIA L40") == 181e12 and peak_flops("NVIDIA L4") == 121e12 and peak_flops("NVIDIA L40S") == 362e12
    )
    assert peak_flops("NVIDIA H100 NVL") == 835e12 and peak_flops("Quadro T400") is None
    assert peak_flops("Tesla T4") == 65e12 and peak_flops("Tesla V100-SXM2-16GB") == 125e12
    assert peak_flops("NVIDIA A100 80GB PCIe") == 312e12 and peak_flops("NVIDIA A10G") == 70e12
    # one card's share under torchrun (tokens/s is the sum of the processes), and no 16-bit peak for fp32 training
    assert mfu(6e9, 20_000, "NVIDIA A100-SXM4-80GB", processes=2) == mfu(6e9, 10_000, "NVIDIA A100-SXM4-80GB")
    assert mfu(6e9, 10_000, "NVIDIA A100-SXM4-80GB", precision="fp32") is None


def test_flop_counts_read_the_weights_each_pass_multiplies(tiny_model_dir):
    """The tiny Llama (hidden 64, 2 layers, MLP 128), its weights counted by hand from its config: the matmul weights,
    the output head's share, the adapter being trained, and TRL's frozen "ref" copy of it (DPO's, KTO's and GRPO's
    reference), which is not trained and runs in the reference's pass only. (tests/test_flops.py checks the FLOPs
    each pass makes against torch's count of the real steps.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from quickft.metrics import flop_counts

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    vocab = model.config.vocab_size
    per_layer = 4 * 64 * 64 + 3 * 64 * 128  # q, k, v, o projections + gate, up, down
    head = vocab * 64  # the output head (tied to the embedding, but still a matmul)
    assert flop_counts(model) == {
        "matmul_parameters": 2 * per_layer + head,
        "head_parameters": head,
        "adapter_parameters": 0,
        "reference_adapter_parameters": 0,
        "layers": 2,
        "hidden_size": 64,
    }
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    lora = get_peft_model(model, config)
    adapters = 2 * 2 * (64 * 4 + 4 * 64)  # A and B of q_proj and v_proj, in both layers
    lora.add_adapter("ref", config)  # as TRL copies the starting adapter for the reference
    counts = flop_counts(lora)
    assert (counts["matmul_parameters"], counts["head_parameters"]) == (2 * per_layer + head, head)
    assert (counts["adapter_parameters"], counts["reference_adapter_parameters"]) == (adapters, adapters)


def test_gpu_memory_line_recomputes_the_notebook_block():
    from quickft.metrics import memory_summary_text

    mem = {  # torch's counters as a 4 GiB card would give them
        "gpu_allocated_mb": 900.0,
        "gpu_reserved_mb": 1000.0,
        "gpu_peak_allocated_mb": 2500.0,
        "gpu_peak_reserved_mb": 3024.57,
        "gpu_total_mb": 4096.0,
        "gpu_reserved_at_start_mb": 1200.0,
    }
    text = memory_summary_text(mem)
    assert "peak reserved 3,024.57 MB (73.8% of the card's 4,096 MB)" in text  # 3024.57 / 4096 = 73.84%
    assert "training added 1,824.57 MB to the 1,200.00 MB reserved at start" in text
    assert "peak allocated 2,500.00 MB" in text


def test_memory_peaks_of_training_evaluation_and_answering_are_kept_apart(monkeypatch):
    """The one fake: torch's CUDA memory counters (a GPU we don't have), driven like a real allocator's."""
    import torch

    from quickft.metrics import MB, PhasePeaks, memory_summary_text

    now, peak = {"a": 0.0, "r": 0.0}, {"a": 0.0, "r": 0.0}

    def use(allocated, reserved):
        now.update(a=allocated, r=reserved)
        peak.update(a=max(peak["a"], allocated), r=max(peak["r"], reserved))

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: peak["a"] * MB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: peak["r"] * MB)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: peak.update(now))
    peaks = PhasePeaks("cuda")
    use(1000, 1200)  # training steps
    use(800, 1200)
    with peaks.phase("evaluation"):
        use(1500, 1800)  # a big eval batch
        use(800, 1800)  # its tensors freed as it ends
    use(1100, 1800)  # training again: reserved stays where evaluation left it
    use(900, 1800)
    with peaks.phase("answering"):
        use(700, 1800)
    report = peaks.report()
    assert (report["gpu_peak_allocated_mb"], report["evaluation_peak_allocated_mb"]) == (1100, 1500)
    assert report["answering_peak_allocated_mb"] == 900  # the mark when answering began: allocated was 900
    assert report["evaluation_peak_reserved_mb"] == 1800 and report["gpu_peak_reserved_mb"] == 1800
    text = memory_summary_text(report | {"gpu_total_mb": 4096.0})
    assert "training: peak reserved 1,800.00 MB" in text and "evaluation peak reserved 1,800.00 MB" in text
    assert PhasePeaks("cpu").report() == {}


def test_live_panel_redraws_between_logging_steps(tmp_path, lora_recipe):
    """On a terminal the panel's clock and ETA move every second even when no step logs (slow steps, faked with a
    sleep inside the real training step; logging only after the last one)."""
    import transformers

    import quickft.generation

    original, answer = transformers.Trainer.training_step, quickft.generation.score_cases

    def slow_step(self, *args, **kwargs):
        time.sleep(0.8)
        return original(self, *args, **kwargs)

    def slow_answers(*args, **kwargs):  # an evaluation that takes a while: the panel says so while it runs
        time.sleep(0.6)
        return answer(*args, **kwargs)

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.Trainer, "training_step", slow_step)
    mp.setattr(quickft.generation, "score_cases", slow_answers)
    try:
        run_dir = train_run(
            str(lora_recipe),
            ["max_steps=4", "logging_steps=4", "eval.every=2"],
            output_dir=str(tmp_path / "run"),
            reporter=Reporter(console, live=True),
        )
    finally:
        mp.undo()
    text = buffer.getvalue()
    before_log = text.split("smoothed", 1)[0]  # everything drawn before the first logged loss
    elapsed = set(re.findall(r"elapsed 0m0(\d)s", before_log))
    assert {"1", "2"} <= elapsed, "the clock moved between logging steps"
    # 4 steps: the first is warm-up, and 3 more are timed only as the last ends
    assert re.search(r"step\s+[123]/4\s+elapsed \S+\s+ETA estimating \(from the steps after the first\)", before_log)
    assert "now       evaluating at step 2: answering 4 test cases ..." in before_log
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4], "only the last step logged"
    for phase in ("✓ reading the recipe and data", "✓ loading the model", "✓ building the trainer"):
        assert phase in text


class _ClockedWrites(io.StringIO):
    """A console's file that notes when each write came (a clock of the test's own)."""

    def __init__(self):
        super().__init__()
        self.writes: list[tuple[float, str]] = []

    def write(self, text):
        self.writes.append((time.perf_counter(), text))
        return super().write(text)


def test_the_eta_is_the_recent_pace_and_says_estimating_until_then(tmp_path, lora_recipe):
    """A first step slowed by warm-up (3 s, faked with a sleep inside the real step; 0.5 s each after it) does not
    inflate the ETA: the panel says "estimating" until 3 steps after the first are timed, and from then on its ETA is
    within a second and a half (or a quarter) of the time the run really took from that frame to its last step."""
    import transformers

    original, ended = transformers.Trainer.training_step, {}

    def step(self, *args, **kwargs):
        time.sleep(3.0 if self.state.global_step == 0 else 0.5)
        try:
            return original(self, *args, **kwargs)
        finally:
            ended["last"] = time.perf_counter()

    file = _ClockedWrites()
    console = Console(file=file, force_terminal=True, width=120, color_system=None)
    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.Trainer, "training_step", step)
    try:
        train_run(
            str(lora_recipe),
            ["max_steps=10", "logging_steps=10"],
            output_dir=str(tmp_path / "run"),
            reporter=Reporter(console, live=True),
        )
    finally:
        mp.undo()
    frames = []
    for at, text in file.writes:
        for found in re.finditer(r"step\s+(\d+)/10\s+elapsed \S+\s+ETA (estimating|(\d+)m(\d+)s)", text):
            eta = None if found[2] == "estimating" else 60 * int(found[3]) + int(found[4])
            frames.append((int(found[1]), eta, ended["last"] - at))
    assert {n for n, _, _ in frames} >= {1, 3, 4, 8}, "frames of the steps before and after the ETA settles"
    for n, eta, left in frames:
        if n <= 3:
            assert eta is None, f"step {n}: an ETA from {n} step(s), the first of them warm-up"
        elif n < 10:
            assert eta is not None and abs(eta - left) <= max(1.5, 0.25 * left), (n, eta, left)


def test_smoothing_is_a_centered_mean():
    from quickft.plots import smooth, smoothing_window

    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert smooth([3.0, 1.0], 1) == [3.0, 1.0]
    assert smoothing_window(9) == 1 and smoothing_window(100) == 11 and smoothing_window(42) % 2 == 1


def test_demo_plots_name_the_run_and_show_the_score_against_its_target(tiny_math_run):
    from PIL import Image

    from quickft.plots import figures, smooth, smoothing_window

    rows = [json.loads(line) for line in (tiny_math_run / "metrics.jsonl").read_text().splitlines()]
    for name in ("loss.png", "test_cases.png", "loss_per_epoch.png"):
        title = Image.open(tiny_math_run / name).text["Title"]
        assert title.startswith(f"{tiny_math_run.name}: "), title
    figs = figures(rows, name="tiny_math", target=0.95)
    ax = figs["test_cases.png"].axes[0]
    assert ax.get_title() == "tiny_math: test-case score" and ax.get_ylim() == (0.0, 100.0)
    target = [line for line in ax.get_lines() if line.get_label() == "target 95%"]
    assert target and set(target[0].get_ydata()) == {95.0}
    scores = [100 * r["case_score"] for r in rows if "case_score" in r]
    assert list(ax.get_lines()[0].get_ydata()) == scores
    # the demo stops at its target mid-epoch: the last epoch's point says it is partial
    epochs = figs["loss_per_epoch.png"].axes[0]
    partial = [line.get_label() for line in epochs.get_lines() if "partial" in line.get_label()]
    last = [r for r in rows if "loss" in r][-1]["epoch"]
    assert partial == [f"epoch {math.ceil(last)}: partial ({last - math.floor(last):.0%} of it trained)"]
    # the smoothed curve runs through the raw loss, not above it (a trailing average lags above a falling loss)
    losses = [r["loss"] for r in rows if "loss" in r]
    smoothed = smooth(losses, smoothing_window(len(losses)))
    drawn = figs["loss.png"].axes[0].get_lines()[1]
    assert list(drawn.get_ydata()) == pytest.approx(smoothed) and "centered" in drawn.get_label()
    above = sum(s > raw for s, raw in zip(smoothed, losses, strict=True)) / len(losses)
    assert 0.2 < above < 0.8, f"smoothed above the raw loss at {above:.0%} of the points"
    residual = sum(raw - s for s, raw in zip(smoothed, losses, strict=True)) / len(losses)
    assert abs(residual) < 0.05 * (max(losses) - min(losses))


def test_the_demo_parameter_count_agrees_everywhere(tiny_math_run):
    from tests.conftest import ROOT

    total = json.loads((tiny_math_run / "summary.json").read_text())["model"]["parameters_total"]
    recipe = (ROOT / "recipes/tiny_math.py").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"a {total / 1e6:.1f}M-parameter Llama ({total:,} weights)" in recipe
    assert f"{total / 1e6:.1f}M-parameter Llama" in readme


def test_answers_in_the_report_are_text_not_markup():
    """A Llama-2 style prompt ("[INST] ... [/INST]") prints as written, with its mark."""
    from quickft.report import _samples_text

    console = Console(record=True, file=io.StringIO(), width=200)
    sample = {"prompt": "[INST] ¿2 + 2? [/INST]", "answer": "[b]5", "reference": "4", "correct": False}
    console.print(_samples_text([sample], "exact"), highlight=False)
    assert "✗ '[INST] ¿2 + 2? [/INST]' → '[b]5' (expected '4')" in console.export_text()


def test_token_counts_agree_with_trls_own(tmp_path, lora_recipe):
    """TRL counts tokens too (num_tokens in its logs: attention-mask sums at the forward pass); quickft's counter also
    counts samples and padding, after each step. On a run with no failed step the two token counts are the same."""
    run_dir = train_run(
        str(lora_recipe), ["save_every=12"], output_dir=str(tmp_path / "run"), reporter=Reporter(quiet=True)
    )
    state = json.loads((run_dir / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    trl = {e["step"]: e["num_tokens"] for e in state["log_history"] if "num_tokens" in e and "loss" in e}
    ours = {r["step"]: r["tokens"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert trl and trl == {step: ours[step] for step in trl}


def test_the_report_accounts_for_the_whole_process(tmp_path, lora_recipe):
    """Timed from outside: Python's start and quickft's imports, the setup phases, training, and every phase after
    it add up to the command's wall time, less what follows the last of them (the report, the summary, exit)."""
    import subprocess
    import sys

    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "quickft", "run", str(lora_recipe), "--quiet", "--output-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    t = json.loads((tmp_path / "run" / "summary.json").read_text())["train"]
    accounted = t["process_start_s"] + t["setup_s"] + t["runtime_s"] + sum(t["after_phases"].values())
    assert 0.1 < t["process_start_s"] < 5
    assert accounted <= wall and wall - accounted < 3.0, (wall, accounted)
    flat = re.sub(r"[\s│]+", " ", done.stdout)  # the report's table wraps long rows
    assert f"(and {t['process_start_s']:.1f} s starting Python and quickft)" in flat


def test_summary_arithmetic_from_rows_alone():
    """metrics.summarize is rows and counts in, summary out: no trainer, no model. A resumed run's totals add the
    earlier sessions' counts; its rates are this session's counts over this session's step time."""
    from quickft.metrics import summarize

    rows = [{"step": s, "loss": loss} for s, loss in ((2, 4.0), (4, 3.0), (6, 2.5), (8, 2.2), (10, 2.1), (12, 2.0))]
    summary = summarize(
        rows=rows,
        runtime_s=10.0,
        steps_time_s=8.0,
        session_steps=6,
        setup_s=3.0,
        setup_phases={"loading the model": 2.0},
        session={"tokens": 800, "samples": 48, "padding": 200},
        earlier={"tokens": 700, "samples": 48, "padding": 100, "elapsed_s": 9.0},
        steps=12,
        epochs=0.5,
        total_flos=1.0e9,
        mem={"peak_rss_mb": 900.0},
    )
    t = summary["train"]
    assert (t["tokens"], t["samples"], t["padding_tokens"]) == (1500, 96, 300)
    assert (t["session_tokens"], t["session_samples"]) == (800, 48)
    assert t["tokens_per_s"] == 100.0 and t["samples_per_s"] == 6.0 and t["steps_per_s"] == 0.75
    assert t["other_s"] == 2.0 and t["padding_share"] == pytest.approx(300 / 1800)
    loss = summary["loss"]
    assert (loss["initial"], loss["final"], loss["min"], loss["max"]) == (4.0, 2.0, 2.0, 4.0)
    assert loss["improvement_pct"] == 50.0
    # thirds of 12 steps: the loss at steps 4, 8 and 12 against the first logged one (improvement 2.0 in all)
    assert loss["improvement_by_third_pct"] == pytest.approx([50.0, 40.0, 10.0])
    assert summary["memory"] == {"peak_rss_mb": 900.0}


def test_after_an_out_of_memory_retry_the_training_peak_is_the_retrys(monkeypatch):
    """torch keeps one high-water mark; the attempt that ran out of memory must not stand as the run's peak. The
    card's counters are faked (no GPU here); the bookkeeping is PhasePeaks' own."""
    import torch

    from quickft.metrics import MB, PhasePeaks

    counters = {"allocated": 0.0, "reserved": 0.0}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: counters["allocated"] * MB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: counters["reserved"] * MB)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: counters.update(allocated=0, reserved=0))
    peaks = PhasePeaks("cuda")
    counters.update(allocated=3900, reserved=4000)  # the attempt that ran out
    peaks.retry()
    counters.update(allocated=2500, reserved=2700)  # the retry, with a smaller micro-batch
    report = peaks.report()
    assert (report["gpu_peak_allocated_mb"], report["gpu_peak_reserved_mb"]) == (2500, 2700)
    assert (report["failed_attempt_peak_allocated_mb"], report["failed_attempt_peak_reserved_mb"]) == (3900, 4000)


def test_a_steps_time_includes_the_gpu_work_it_queued(tmp_path, monkeypatch):
    """The GPU runs a step's kernels after Python has queued them; the step's time ends when they are done. The
    card is faked (its queue is a 50 ms wait in synchronize); the step clock is the recorder's own."""
    import time
    import types

    import torch

    from quickft.metrics import TokenCounter
    from quickft.recorder import Recorder

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: time.sleep(0.05))
    recorder = Recorder(tmp_path / "metrics.jsonl", "cuda", TokenCounter(), display=None)
    state = types.SimpleNamespace(global_step=1)
    recorder.on_step_begin(None, state, None)
    recorder.on_step_end(None, state, None)
    assert recorder.step_s >= 0.05


class _Shown:
    """A display that keeps what the recorder hands it (the recorder, not the console, is under test)."""

    def __init__(self):
        self.rows = []

    def training_began(self, recorder):
        pass

    def logged(self, row):
        self.rows.append(row)

    def training_ended(self):
        pass


def test_metrics_rows_quote_trainings_peak_through_evaluations(tmp_path, monkeypatch):
    """torch's high-water mark restarts when an evaluation takes its own peak; the rows logged after it still quote
    training's peak so far, not the mark since the evaluation. The card's counters are faked (no GPU here)."""
    import types

    import torch

    from quickft import metrics as m
    from quickft.metrics import MB, TokenCounter
    from quickft.recorder import Recorder

    monkeypatch.delenv("QUICKFT_GPU_MEMORY_GB", raising=False)
    monkeypatch.delenv("QUICKFT_GPU_CAPABILITY", raising=False)
    now, peak = {"a": 0.0, "r": 0.0}, {"a": 0.0, "r": 0.0}

    def use(allocated, reserved):
        now.update(a=allocated, r=reserved)
        peak.update(a=max(peak["a"], allocated), r=max(peak["r"], reserved))

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: peak["a"] * MB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: peak["r"] * MB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: now["a"] * MB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: now["r"] * MB)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: peak.update(now))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    card = types.SimpleNamespace(name="NVIDIA GeForce GTX 1050 Ti", major=6, minor=1, total_memory=4 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: card)
    shown = _Shown()
    recorder = Recorder(tmp_path / "metrics.jsonl", "cuda", TokenCounter(), display=shown)
    recorder.on_train_begin(None, types.SimpleNamespace(global_step=0), None)

    def step(n, allocated, reserved):
        state = types.SimpleNamespace(global_step=n, epoch=n / 10)
        recorder.on_step_begin(None, state, None)
        use(allocated, reserved)
        recorder.on_step_end(None, state, None)
        recorder.on_log(None, state, None, logs={"loss": 2.0, "learning_rate": 1e-4})

    step(1, 3000, 3200)
    use(900, 3200)
    with recorder.peaks.phase("evaluation"):
        use(1200, 3200)
    step(2, 2000, 3200)  # this step allocated less than step 1 did
    recorder.on_train_end(None, types.SimpleNamespace(global_step=2), None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["gpu_peak_allocated_mb"] for r in rows] == [3000, 3000]  # torch's own mark said 2000 at step 2
    assert [r["gpu_allocated_mb"] for r in rows] == [3000, 2000]
    assert recorder.memory["gpu_peak_allocated_mb"] == 3000 and recorder.memory["evaluation_peak_allocated_mb"] == 1200
    assert rows[0]["gpu_total_mb"] == 4096.0
    monkeypatch.setenv("QUICKFT_GPU_MEMORY_GB", "2")  # an emulated 2 GiB card on it: its memory is the one quoted
    assert m.memory("cuda")["gpu_total_mb"] == 2048.0


def test_a_nan_loss_is_logged_but_leaves_the_smoothed_loss_finite(tmp_path):
    """An fp16 overflow gives one NaN loss (Unsloth turns transformers' NaN filter off); the row keeps it, the smoothed
    curve and the loss summary leave it out and say where it was."""
    import types

    from quickft.metrics import TokenCounter, loss_summary
    from quickft.recorder import Recorder

    shown = _Shown()
    recorder = Recorder(tmp_path / "metrics.jsonl", "cpu", TokenCounter(), display=shown)
    recorder.on_train_begin(None, types.SimpleNamespace(global_step=0), None)
    for n, loss in enumerate([float("nan"), 4.0, float("nan"), 3.0, float("inf"), 2.0], start=1):
        state = types.SimpleNamespace(global_step=n, epoch=n / 10)
        recorder.on_step_begin(None, state, None)
        recorder.on_step_end(None, state, None)
        recorder.on_log(None, state, None, logs={"loss": loss, "learning_rate": 1e-4})
    recorder.close()
    smoothed = [r["loss_smoothed"] for r in shown.rows]
    assert math.isnan(smoothed[0])  # nothing finite to average yet
    # the average over the finite losses only, each weighted by the steps since the previous finite one
    b2 = 0.95**2
    expected_4 = b2 * 4.0 + (1 - b2) * 3.0
    expected_6 = b2 * expected_4 + (1 - b2) * 2.0
    assert smoothed[1:] == pytest.approx([4.0, 4.0, expected_4, expected_4, expected_6])
    summary = loss_summary(shown.rows, total_steps=6)
    assert (summary["initial"], summary["final"], summary["min"], summary["max"]) == (4.0, 2.0, 2.0, 4.0)
    assert summary["non_finite_steps"] == [1, 3, 5]
