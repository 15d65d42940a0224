"""The one owner of the console: header, live display (or plain lines), end report, metrics files.

On a terminal the live display is a rich panel refreshed a few times a second; otherwise (CI, a pipe, a log file)
each logging step is one fixed-format plain line. Every number printed also goes to metrics.jsonl / summary.json.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from quickft import metrics as m


class Reporter:
    def __init__(self, console: Console | None = None, *, quiet: bool = False, live: bool | None = None):
        if console is None:
            console = Console()
            if not console.is_terminal:  # logs and pipes: wide enough that tables and paths never wrap
                console = Console(width=160)
        self.console = console
        self.quiet = quiet
        self.live = self.console.is_terminal if live is None else live
        self.planned_steps: int | None = None

    # ------------------------------------------------------------------ plain messages

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    @contextlib.contextmanager
    def status(self, text: str):
        if self.quiet:
            yield
        elif self.live:
            with self.console.status(text):
                yield
        else:
            self.console.print(f"{text} ...", highlight=False)
            yield

    # ------------------------------------------------------------------ before training

    def header(
        self,
        *,
        recipe,
        choice,
        model,
        model_path,
        n_examples,
        n_tokens,
        run_dir,
        max_steps,
        facts=None,
        n_sequences=None,
        dropped=(),
        truncated=(),
        documents=0,
        notes=(),
        n_eval=0,
        n_cases=0,
    ) -> dict:
        total, trainable = m.parameter_counts(model)
        eff = recipe.micro_batch_size * recipe.gradient_accumulation
        # packing joins examples into fewer sequences: an epoch is as many steps as the trainer has sequences for
        steps_per_epoch = -(-(n_sequences or n_examples) // eff)
        self.planned_steps = max_steps or int(round(steps_per_epoch * recipe.epochs))
        epochs = self.planned_steps / steps_per_epoch
        rows = [
            ("run", str(run_dir)),
            ("hardware", m.describe_hardware(choice)),
            ("backend", f"{choice.summary()}\n[dim]{choice.reason}[/dim]"),
            ("precision", choice.precision),
            ("quantization", "4-bit NF4 (double quant)" if choice.load_in_4bit else "none"),
            *([("loaded", _facts_text(facts))] if facts else []),
            ("model", model_path if recipe.model == model_path else f"{_model_name(recipe.model)}  ({model_path})"),
            (
                "mode",
                recipe.mode
                + (f"  (LoRA r={recipe.lora.r}, alpha={recipe.lora.alpha})" if recipe.mode != "full" else ""),
            ),
            ("parameters", f"{total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"),
            (
                "data",
                f"{_examples_text(n_examples, documents, recipe)}, {n_tokens:,} tokens ({_source(recipe)})",
            ),
            ("dropped", f"{len(dropped)} ({_dropped_text(dropped)})" if dropped else "none"),
            *([("cut to fit", f"{len(truncated)} ({_dropped_text(truncated)})")] if truncated else []),
            *[("note", note) for note in notes],
            ("evaluation", _eval_text(recipe, n_eval, n_cases)),
            ("max_seq_length", str(recipe.max_seq_length)),
            (
                "batch",
                f"{recipe.micro_batch_size} micro-batch × {recipe.gradient_accumulation} accumulation = {eff} effective",
            ),
            ("plan", f"{self.planned_steps:,} steps ({epochs:.2f} epochs, {steps_per_epoch:,} steps per epoch)"),
        ]
        if not self.quiet:
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold")
            table.add_column()
            for key, value in rows:
                table.add_row(key, value)
            self.console.print(Panel(table, title="quickft run", expand=False))
        return {
            "parameters_total": total,
            "parameters_trainable": trainable,
            "examples": n_examples,
            "tokens": n_tokens,
            "mode": recipe.mode,
            "flop_counts": m.flop_counts(model),
            "planned_steps": self.planned_steps,
        }

    # ------------------------------------------------------------------ during training

    def callback(self, metrics_path: Path, choice):
        """A transformers TrainerCallback that measures, writes metrics.jsonl and drives the display."""
        from transformers import TrainerCallback

        reporter = self

        class ReportCallback(TrainerCallback):
            def __init__(self):
                self.rows: list[dict] = []
                self.eval_rows: list[dict] = []
                self._last_eval: dict = {}
                self.counter = None  # set by train.py: counts real tokens/samples in each training batch
                self.started = self.ended = self.memory = self._reserved_at_start = None
                self._live = None
                self._ema = None
                self._last = (0, 0.0)
                self._file = None
                self.step_s = 0.0
                """Wall time inside optimizer steps (first micro-batch to optimizer update): the time rates are over.
                Evaluation, checkpoint saves and logging happen between steps and are not in it."""
                self._step_started = None
                self.start_step = None
                """The step this session started at: 0, or a resumed run's checkpoint."""
                self.peaks = m.PhasePeaks(choice.device)
                """GPU memory peaks of training, evaluation and answering, each its own."""

            def on_step_begin(self, args, state, control, **kwargs):
                self._step_started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                # no device sync here (that would slow every step): on a GPU a step's queued kernels may finish in
                # the next one, which evens out over the run
                self.step_s += time.perf_counter() - self._step_started

            def on_train_begin(self, args, state, control, **kwargs):
                if self.started is not None:  # trained on after an out-of-memory retry: one run, one clock
                    return
                self.start_step = state.global_step
                self._reserved_at_start = m.memory(choice.device).get("gpu_reserved_mb")  # model, optimizer not yet
                m.reset_peak_memory(choice.device)
                self._file = open(metrics_path, "a", encoding="utf-8")
                if reporter.live and not reporter.quiet:
                    self._live = Live(reporter._panel(None), console=reporter.console, refresh_per_second=4)
                    self._live.start()
                self.started = time.perf_counter()
                self._last = (state.global_step, 0.0)  # a resumed run starts counting at its checkpoint

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not logs or "loss" not in logs:
                    return
                now = time.perf_counter()
                elapsed = now - self.started
                loss = float(logs["loss"])
                last_step, last_time = self._last
                # an exponential moving average over about 20 steps, however often we log
                beta = 0.95 ** (state.global_step - last_step)
                self._ema = loss if self._ema is None else beta * self._ema + (1 - beta) * loss
                step_time = (elapsed - last_time) / max(state.global_step - last_step, 1)
                self._last = (state.global_step, elapsed)
                row = {
                    "step": state.global_step,
                    "epoch": round(state.epoch or 0.0, 6),
                    "loss": loss,
                    "loss_smoothed": self._ema,
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                    "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                    "elapsed_s": elapsed,
                    "step_time_s": step_time,
                    "tokens": self.counter.tokens,
                    "samples": self.counter.samples,
                    "padding_tokens": self.counter.padding,
                    "tokens_per_s": self.counter.tokens / elapsed,
                    "samples_per_s": self.counter.samples / elapsed,
                } | m.memory(choice.device)
                self.rows.append(row)
                self._file.write(json.dumps(row) + "\n")
                self._file.flush()
                if self._live is not None:
                    self._live.update(reporter._panel(row, self._last_eval))
                elif not reporter.quiet:
                    reporter.console.print(reporter._line(row), highlight=False, soft_wrap=True)

            def resume_from(self, rows: list[dict]):
                """Carry on the smoothed loss of the rows logged before a resumed run's checkpoint."""
                if rows:
                    self._ema = rows[-1]["loss_smoothed"]

            def record_eval(self, row: dict, stopped: str | None):
                """An evaluation's results (eval loss, test-case score): metrics file, display."""
                self.eval_rows.append(row)
                self._last_eval = row
                if self._file is not None:
                    self._file.write(json.dumps(row) + "\n")
                    self._file.flush()
                if self._live is not None:
                    self._live.update(reporter._panel(self.rows[-1] if self.rows else None, row))
                elif not reporter.quiet:
                    reporter.console.print(reporter._eval_line(row), highlight=False)
                if stopped and not reporter.quiet:
                    reporter.console.print(stopped, highlight=False)

            def on_train_end(self, args, state, control, **kwargs):
                self.ended = time.perf_counter()
                # training's peaks, apart from evaluation's (and before test cases are answered)
                self.memory = m.memory(choice.device) | self.peaks.report()
                if self._reserved_at_start is not None:
                    self.memory["gpu_reserved_at_start_mb"] = self._reserved_at_start
                self.close()

            def close(self):
                if self._live is not None:
                    self._live.stop()
                    self._live = None
                if self._file is not None:
                    self._file.close()
                    self._file = None

        return ReportCallback()

    def _line(self, row: dict) -> str:
        total = self.planned_steps or row["step"]
        grad = f"{row['grad_norm']:.3f}" if row["grad_norm"] is not None else "-"
        return (
            f"step {row['step']:>6}/{total} | epoch {row['epoch']:6.2f} | loss {row['loss']:.4f} "
            f"(smoothed {row['loss_smoothed']:.4f}) | lr {row['learning_rate']:.2e} | grad {grad} | "
            f"{row['tokens_per_s']:,.0f} tok/s | {row['samples_per_s']:,.1f} samples/s | "
            f"{row['step_time_s']:.3f} s/step | {m.memory_text(row)}"
        )

    def _eval_line(self, row: dict) -> str:
        parts = [f"eval   {row['step']:>6}/{self.planned_steps or row['step']}"]
        if "eval_loss" in row:
            parts.append(f"eval loss {row['eval_loss']:.4f}")
        if "case_score" in row:
            parts.append(f"test cases {row['case_score']:.1%}")
        return " | ".join(parts)

    def _panel(self, row: dict | None, last_eval: dict | None = None):
        total = self.planned_steps or 1
        if row is None:
            return Panel("starting ...", title="training")
        eta = (row["elapsed_s"] / max(row["step"], 1)) * (total - row["step"])
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        grad = f"{row['grad_norm']:.3f}" if row["grad_norm"] is not None else "-"
        table.add_row("progress", ProgressBar(total=total, completed=row["step"], width=40))
        table.add_row("step", f"{row['step']}/{total}   epoch {row['epoch']:.2f}   ETA {_duration(eta)}")
        table.add_row("loss", f"{row['loss']:.4f}   smoothed {row['loss_smoothed']:.4f}")
        table.add_row("lr / grad", f"{row['learning_rate']:.2e}   grad norm {grad}")
        table.add_row(
            "speed",
            f"{row['tokens_per_s']:,.0f} tok/s   {row['samples_per_s']:,.1f} samples/s   {row['step_time_s']:.3f} s/step",
        )
        table.add_row("memory", m.memory_text(row))
        if last_eval:
            table.add_row("eval", self._eval_line(last_eval).split(" | ", 1)[-1])
        return Panel(table, title="training", expand=False)

    # ------------------------------------------------------------------ after training

    def finish(
        self,
        *,
        trainer,
        callback,
        samples: list[dict],
        run_dir: Path,
        choice,
        header: dict,
        evaluation=None,
        match="exact",
    ) -> dict:
        """Build summary.json's content from the measured rows and the trainer's state, and print the report."""
        state = trainer.state
        summary = m.summarize(
            rows=callback.rows,
            runtime_s=callback.ended - callback.started,
            steps_time_s=callback.step_s,
            session_steps=state.global_step - callback.start_step,
            mem=callback.memory | {k: v for k, v in callback.peaks.report().items() if k.startswith(("answering", "evaluation"))},
            setup_s=callback.call_s - (callback.ended - callback.started),
            tokens=callback.counter.tokens,
            padding=callback.counter.padding,
            samples=callback.counter.samples,
            steps=state.global_step,
            epochs=state.epoch,
            total_flos=state.total_flos,
        )
        gpu = choice.hardware
        train = summary["train"]
        seq_len = train["tokens"] / train["samples"] if train["samples"] else 0.0
        train["flops_per_token"] = m.flops_per_token(header["flop_counts"], header["mode"], seq_len)
        train["mfu"] = (
            m.mfu(train["flops_per_token"], train["tokens_per_s"], gpu.gpu_name) if choice.device == "cuda" else None
        )
        summary["run_dir"] = str(run_dir)
        summary["backend"] = choice.to_dict()
        summary["model"] = header
        if samples:
            correct = sum(s["correct"] for s in samples)
            summary["test_cases"] = {
                "n": len(samples),
                "score": correct / len(samples),
                "correct": correct,
                "match": match,
            }
        summary["evaluation"] = evaluation
        if callback.eval_rows:
            summary["evaluation"] = (evaluation or {}) | {"history": callback.eval_rows}
        self._print_report(summary, samples)  # printed even with --quiet
        return summary

    def _print_report(self, s: dict, samples: list[dict]) -> None:
        t, mem, loss = s["train"], s["memory"], s["loss"]
        table = Table(title="quickft report", show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("steps / epochs", f"{t['steps']} / {t['epochs']:.2f}")
        table.add_row(
            "runtime",
            f"{_duration(t['steps_time_s'])} in training steps (+{t['other_s']:.1f} s evaluation, checkpoints and logging "
            f"between steps; +{t['setup_s']:.1f} s setup)",
        )
        session = (
            f" (this session: {t['session_steps']} steps from a checkpoint)" if t["session_steps"] != t["steps"] else ""
        )
        table.add_row(
            "throughput",
            f"{t['tokens_per_s']:,.0f} tokens/s · {t['samples_per_s']:,.2f} samples/s · {t['steps_per_s']:,.2f} steps/s"
            f", over the training steps{session}",
        )
        table.add_row(
            "tokens / samples",
            f"{t['tokens']:,} non-padding tokens · {t['samples']:,} samples · {100 * t['padding_share']:.1f}% of batch "
            "tokens were padding",
        )
        table.add_row("total FLOPs", f"{t['total_flos']:.3e}")
        if t["mfu"] is not None:
            table.add_row(
                "MFU",
                f"{100 * t['mfu']:.1f}% ({t['flops_per_token']:.3e} training FLOPs per token × tokens/s ÷ the card's "
                "peak 16-bit FLOP/s)",
            )
        table.add_row("memory", m.memory_summary_text(mem))
        if loss:
            thirds = (
                " / ".join(f"{p:.0f}%" for p in loss["improvement_by_third_pct"])
                if loss["improvement_by_third_pct"]
                else "-"
            )
            table.add_row(
                "loss",
                f"initial {loss['initial']:.4f} → final {loss['final']:.4f} (min {loss['min']:.4f}, max {loss['max']:.4f}); "
                f"improvement {loss['improvement_pct']:.1f}%",
            )
            table.add_row("improvement by third", thirds)
        ev = s.get("evaluation") or {}
        if ev.get("best_step") is not None:
            table.add_row("best eval loss", f"{ev['best_eval_loss']:.4f} at step {ev['best_step']}")
        if ev.get("final_eval_loss") is not None:
            table.add_row("eval loss", f"{ev['final_eval_loss']:.4f}")
        if ev.get("stopped"):
            table.add_row("stopped", ev["stopped"])
        if ev.get("best_dir"):
            table.add_row("best checkpoint", ev["best_dir"])
        if "test_cases" in s:
            h = s["test_cases"]
            table.add_row(f"test cases ({h['match']})", f"{h['score']:.1%} ({h['correct']}/{h['n']})")
        table.add_row("run directory", s["run_dir"])
        self.console.print(table)
        for sample in samples[:3]:
            answer = sample["answer"] if len(sample["answer"]) <= 200 else sample["answer"][:200] + "…"
            self.console.print(
                f"[bold]prompt[/bold] {sample['prompt']!r}\n[bold]answer[/bold] {answer!r}", highlight=False
            )


def _source(recipe) -> str:
    return f"{recipe.data.path}, {recipe.data.format}"


def _examples_text(n_rows: int, documents: int, recipe) -> str:
    if documents:
        return f"{documents:,} documents in {n_rows:,} windows of ≤ {recipe.max_seq_length} tokens"
    return f"{n_rows:,} examples"


def _dropped_text(dropped) -> str:
    """'2 empty answer, 1 too long; first at data.jsonl:7': reasons grouped (numbers in a reason don't split it)."""
    reasons: dict[str, int] = {}
    for _, reason in dropped:
        reason = re.sub(r" \(.*\)$|: .*$", "", reason)  # "too long (612 tokens > ...)" -> "too long"
        reasons[reason] = reasons.get(reason, 0) + 1
    first = dropped[0][0]
    return ", ".join(f"{n} {r}" for r, n in reasons.items()) + f"; first at {first}"


def _eval_text(recipe, n_eval: int, n_cases: int) -> str:
    e = recipe.eval
    parts = [f"{n_cases} test cases ({e.match} match)" if n_cases else "no test cases"]
    if n_eval:
        parts.append(f"eval loss on {n_eval} examples")
    parts.append(f"every {e.every} steps" if e.every else "after training")
    if e.patience:
        parts.append(f"early stopping after {e.patience} evaluations without improvement")
    if e.target:
        parts.append(f"stop at {e.target:.0%} of test cases")
    return ", ".join(parts)


def _facts_text(facts: dict) -> str:
    """The model as loaded, read from its parameters: 'weights float32, trainable float32, checkpointing off'."""
    weights = ", ".join(facts["weight_dtypes"]) or "none"
    four_bit = f", {facts['linear4bit_layers']} 4-bit layers" if facts["linear4bit_layers"] else ""
    checkpointing = "on" if facts["gradient_checkpointing"] else "off"
    return f"weights {weights}{four_bit}; trainable {facts['trainable_dtype']}; gradient checkpointing {checkpointing}"


def _model_name(model) -> str:
    return model if isinstance(model, str) else f"new {model.architecture} with random weights (Scratch)"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    mins, s = divmod(rest, 60)
    return f"{h}h{mins:02d}m{s:02d}s" if h else f"{mins}m{s:02d}s"
