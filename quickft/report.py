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
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from quickft import distributed
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
        self.started = time.perf_counter()
        """When the verb started: setup (imports, model load, data) is measured from here to the first step."""
        self.phases: dict[str, float] = {}
        """Seconds spent in each named phase (reading data, importing, loading the model, ...), in order."""

    # ------------------------------------------------------------------ plain messages

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    @contextlib.contextmanager
    def phase(self, text: str):
        """A step that takes a while, shown from its first second: a spinner that becomes "✓ text  1.2 s" on a
        terminal, a "text ..." line in a log. Its time is recorded in `phases` (the report's setup breakdown)."""
        started = time.perf_counter()
        if self.quiet:
            yield
        elif self.live:
            with self.console.status(f"{text} ..."):
                yield
            self.console.print(f"[green]✓[/green] {text} [dim]{time.perf_counter() - started:.1f} s[/dim]")
        else:
            self.console.print(f"{text} ...", highlight=False)
            yield
        self.phases[text] = self.phases.get(text, 0.0) + time.perf_counter() - started

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
        processes = distributed.world_size()
        eff = recipe.micro_batch_size * recipe.gradient_accumulation * processes
        # packing joins examples into fewer sequences: an epoch is as many steps as the trainer has sequences for
        steps_per_epoch = -(-(n_sequences or n_examples) // eff)
        self.planned_steps = max_steps or int(round(steps_per_epoch * recipe.epochs))
        epochs = self.planned_steps / steps_per_epoch
        rows = [
            ("run", str(run_dir)),
            ("hardware", m.describe_hardware(choice)),
            ("backend", f"{choice.summary(recipe.mode)}\n[dim]{choice.reason}[/dim]"),
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
                f"{recipe.micro_batch_size} micro-batch × {recipe.gradient_accumulation} accumulation"
                + (f" × {processes} processes ({distributed.backend_name()})" if processes > 1 else "")
                + f" = {eff} effective",
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
            "processes": processes,
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
                self.last_eval: dict = {}
                self.counter = None  # set by train.py: counts real tokens/samples in each training batch
                self.per_process: list[dict] = []
                """What each process counted and peaked at in this session (one entry without torchrun)."""
                self.totals: dict | None = None
                self.started = self.ended = self.memory = self._reserved_at_start = None
                self._live = None
                self._ema = None
                self._file = None
                self.step_s = 0.0
                """Wall time inside this session's optimizer steps (first micro-batch to optimizer update): the time
                every rate is over. Evaluation, checkpoint saves and logging happen between steps and are not in it."""
                self._step_started = None
                self.start_step = None
                """The step this session started at: 0, or a resumed run's checkpoint."""
                self.step = 0
                """The last finished optimizer step (the display's clock: it moves between logging steps)."""
                self.earlier = {"tokens": 0, "samples": 0, "padding": 0, "elapsed_s": 0.0}
                """What the run counted before this session (a resumed run's rows): the counters go on from there."""
                self._window = (0, 0.0, 0, 0)  # (step, step_s, tokens, samples) at the previous logging step
                self.peaks = m.PhasePeaks(choice.device)
                """GPU memory peaks of training, evaluation and answering, each its own."""
                self.setup_phases: dict[str, float] = {}
                """The reporter's phases up to the first step (the report's setup breakdown)."""
                self.activity: str | None = None
                """What is happening between steps, when it takes a while (set by the evaluator): shown on the panel."""

            def on_step_begin(self, args, state, control, **kwargs):
                self._step_started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                # no device sync here (that would slow every step): on a GPU a step's queued kernels may finish in
                # the next one, which evens out over the run
                self.step_s += time.perf_counter() - self._step_started
                self.step = state.global_step

            def on_train_begin(self, args, state, control, **kwargs):
                if self.started is not None:  # trained on after an out-of-memory retry: one run, one clock
                    return
                self.start_step = self.step = state.global_step
                self._window = (state.global_step, 0.0, 0, 0)  # a resumed run's first window starts at its checkpoint
                self._reserved_at_start = m.memory(choice.device).get("gpu_reserved_mb")  # model, optimizer not yet
                m.reset_peak_memory(choice.device)
                if distributed.is_main():
                    self._file = open(metrics_path, "a", encoding="utf-8")
                self.started = time.perf_counter()
                self.setup_phases = dict(reporter.phases)
                if reporter.live and not reporter.quiet:
                    # redrawn 4 times a second from the callback's state: the clock and ETA move between logging steps
                    self._live = Live(_LiveView(reporter, self), console=reporter.console, refresh_per_second=4)
                    self._live.start()

            def eta_s(self) -> float | None:
                """Seconds left, from this session's pace so far (wall time per step, evaluations included)."""
                done = self.step - self.start_step
                if not done or self.started is None:
                    return None
                return (time.perf_counter() - self.started) / done * ((reporter.planned_steps or self.step) - self.step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not logs or "loss" not in logs:
                    return
                session_elapsed = time.perf_counter() - self.started
                loss = float(logs["loss"])
                step = state.global_step
                last_step, last_step_s, last_tokens, last_samples = self._window
                # an exponential moving average over about 20 steps, however often we log
                beta = 0.95 ** (step - (self.rows[-1]["step"] if self.rows else 0))
                self._ema = loss if self._ema is None else beta * self._ema + (1 - beta) * loss
                # speed over this window (the steps since the previous logging step), all three figures over the
                # same time: the time inside those optimizer steps
                window_s = self.step_s - last_step_s
                own = {
                    "tokens": self.counter.tokens,
                    "samples": self.counter.samples,
                    "padding": self.counter.padding,
                    "window_tokens": self.counter.tokens - last_tokens,
                    "window_samples": self.counter.samples - last_samples,
                } | m.memory(choice.device)
                self._window = (step, self.step_s, self.counter.tokens, self.counter.samples)
                # with several processes (torchrun): every process's counts summed, memory the largest process's
                figures = distributed.combine(distributed.gather(own))
                row = {
                    "step": step,
                    "epoch": round(state.epoch or 0.0, 6),
                    "loss": loss,
                    "loss_smoothed": self._ema,
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                    "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                    "elapsed_s": self.earlier["elapsed_s"] + session_elapsed,
                    "session_elapsed_s": session_elapsed,
                    "session_start_step": self.start_step,
                    "tokens": self.earlier["tokens"] + figures["tokens"],
                    "samples": self.earlier["samples"] + figures["samples"],
                    "padding_tokens": self.earlier["padding"] + figures["padding"],
                    "window_steps": step - last_step,
                    "window_s": window_s,
                    "tokens_per_s": figures["window_tokens"] / window_s if window_s else 0.0,
                    "samples_per_s": figures["window_samples"] / window_s if window_s else 0.0,
                    "step_time_s": window_s / max(step - last_step, 1),
                } | {k: v for k, v in figures.items() if k.endswith("_mb")}
                self.rows.append(row)
                # the same figures for an experiment tracker (recipe.track), whose callback runs after this one and
                # sends these logs; transformers' own copy (state.log_history) was taken before the callbacks ran
                logs.update({k: v for k, v in row.items() if k not in logs and k != "step" and v is not None})
                if self._file is None:  # not the first process: it counts, the first one writes
                    return
                self._file.write(json.dumps(row) + "\n")
                self._file.flush()
                if self._live is None and not reporter.quiet:
                    reporter.console.print(reporter._line(row), highlight=False, soft_wrap=True)

            def resume_from(self, rows: list[dict]):
                """Carry on from the rows logged before a resumed run's checkpoint: the smoothed loss, and the
                token, sample and time counters (tokens between the last logged step and the checkpoint are not
                in them: log at the steps you save at)."""
                if rows:
                    last = rows[-1]
                    self._ema = last["loss_smoothed"]
                    self.earlier = {
                        "tokens": last["tokens"],
                        "samples": last["samples"],
                        "padding": last.get("padding_tokens", 0),
                        "elapsed_s": last["elapsed_s"],
                    }

            def record_eval(self, row: dict, stopped: str | None):
                """An evaluation's results (eval loss, test-case score): metrics file, display."""
                self.eval_rows.append(row)
                self.last_eval = row
                if self._file is not None:
                    self._file.write(json.dumps(row) + "\n")
                    self._file.flush()
                if self._live is None and not reporter.quiet:
                    reporter.console.print(reporter._eval_line(row), highlight=False)
                if stopped and not reporter.quiet:
                    reporter.console.print(stopped, highlight=False)

            def on_train_end(self, args, state, control, **kwargs):
                self.ended = time.perf_counter()
                # training's peaks, apart from evaluation's (and before test cases are answered)
                own = (
                    {
                        "tokens": self.counter.tokens,
                        "samples": self.counter.samples,
                        "padding": self.counter.padding,
                    }
                    | m.memory(choice.device)
                    | self.peaks.report()
                )
                if self._reserved_at_start is not None:
                    own["gpu_reserved_at_start_mb"] = self._reserved_at_start
                self.per_process = distributed.gather(own)
                combined = distributed.combine(self.per_process)
                self.totals = {k: combined[k] for k in ("tokens", "samples", "padding")}
                """This session's counts, every process's summed."""
                self.memory = {k: v for k, v in combined.items() if k not in distributed.COUNTS}
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
            f"{_speed_text(row)} | {m.memory_text(row)}"
        )

    def _eval_line(self, row: dict) -> str:
        parts = [f"eval   {row['step']:>6}/{self.planned_steps or row['step']}"]
        if "eval_loss" in row:
            parts.append(f"eval loss {row['eval_loss']:.4f}")
        if "case_score" in row:
            parts.append(f"test cases {row['case_score']:.1%}")
        return " | ".join(parts)

    def _panel(self, cb) -> Panel:
        """The live panel, from the callback's state as it is now (called by rich's refresh, 4 times a second)."""
        total = self.planned_steps or max(cb.step, 1)
        elapsed = time.perf_counter() - cb.started
        eta = cb.eta_s()
        resumed = f" (resumed at step {cb.start_step})" if cb.start_step else ""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("progress", ProgressBar(total=total, completed=cb.step, width=40))
        table.add_row(
            "step",
            f"{cb.step}/{total}   elapsed {_duration(elapsed)}{resumed}   "
            + (f"ETA {_duration(eta)} (this session's pace)" if eta is not None else "ETA after the first step"),
        )
        row = cb.rows[-1] if cb.rows else None
        if row is None or row["step"] <= cb.start_step:  # nothing logged in this session yet
            table.add_row("loss", "shown from the first logging step (logging_steps in the recipe)")
        else:
            grad = f"{row['grad_norm']:.3f}" if row["grad_norm"] is not None else "-"
            table.add_row(
                "loss",
                f"{row['loss']:.4f}   smoothed {row['loss_smoothed']:.4f}   (step {row['step']}, epoch {row['epoch']:.2f})",
            )
            table.add_row("lr / grad", f"{row['learning_rate']:.2e}   grad norm {grad}")
            table.add_row("speed", _speed_text(row, "   "))
            table.add_row("memory", m.memory_text(row))
        if cb.last_eval:
            table.add_row("eval", self._eval_line(cb.last_eval).split(" | ", 1)[-1])
        if cb.activity:
            table.add_row("now", f"{cb.activity} ...")
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
        before = callback.earlier
        summary = m.summarize(
            rows=callback.rows,
            runtime_s=callback.ended - callback.started,
            steps_time_s=callback.step_s,
            session_steps=state.global_step - callback.start_step,
            mem=callback.memory
            | {k: v for k, v in callback.peaks.report().items() if k.startswith(("answering", "evaluation"))},
            setup_s=callback.started - self.started,
            setup_phases=callback.setup_phases,
            session=callback.totals,
            earlier=before,
            steps=state.global_step,
            epochs=state.epoch,
            total_flos=state.total_flos,
        )
        gpu = choice.hardware
        train = summary["train"]
        # every second after training, by phase (answering test cases, plots): the report accounts for them too
        train["after_phases"] = {k: v for k, v in self.phases.items() if k not in callback.setup_phases}
        seq_len = train["tokens"] / train["samples"] if train["samples"] else 0.0
        train["flops_per_token"] = m.flops_per_token(header["flop_counts"], header["mode"], seq_len)
        train["mfu"] = (
            m.mfu(train["flops_per_token"], train["tokens_per_s"], gpu.gpu_name) if choice.device == "cuda" else None
        )
        train["processes"] = len(callback.per_process)
        if len(callback.per_process) > 1:  # what each process counted and peaked at; the report shows sum and max
            summary["processes"] = {"backend": distributed.backend_name(), "per_process": callback.per_process}
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
        resumed = t["session_steps"] != t["steps"]
        this = "this session's " if resumed else ""
        table.add_row(
            "steps / epochs",
            f"{t['steps']} / {t['epochs']:.2f}"
            + (
                f" (this session: steps {t['steps'] - t['session_steps'] + 1}-{t['steps']}, resumed)" if resumed else ""
            ),
        )
        table.add_row(
            "runtime",
            f"{_duration(t['steps_time_s'])} in {this}training steps (+{t['other_s']:.1f} s evaluation, checkpoints and "
            f"logging between steps)",
        )
        table.add_row("setup", _setup_text(t))
        if t["after_phases"]:
            table.add_row(
                "after training", " · ".join(f"{name} {seconds:.1f} s" for name, seconds in t["after_phases"].items())
            )
        table.add_row(
            "throughput",
            f"{t['tokens_per_s']:,.0f} tokens/s · {t['samples_per_s']:,.2f} samples/s · {t['steps_per_s']:,.2f} steps/s"
            f", over {this}{t['session_steps']} training steps"
            + (f" (the sum of {t['processes']} processes)" if t.get("processes", 1) > 1 else ""),
        )
        table.add_row(
            "tokens / samples",
            f"{t['tokens']:,} non-padding tokens · {t['samples']:,} samples"
            + (f" (this session: {t['session_tokens']:,} · {t['session_samples']:,})" if resumed else "")
            + f" · {100 * t['padding_share']:.1f}% of batch tokens were padding",
        )
        table.add_row("total FLOPs", f"{t['total_flos']:.3e}")
        if t["mfu"] is not None:
            table.add_row(
                "MFU",
                f"{100 * t['mfu']:.1f}% ({t['flops_per_token']:.3e} training FLOPs per token × tokens/s ÷ the card's "
                "peak 16-bit FLOP/s)",
            )
        table.add_row(
            "memory",
            (f"the largest of {t['processes']} processes: " if t.get("processes", 1) > 1 else "")
            + m.memory_summary_text(mem),
        )
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
        if samples:
            self.console.print(_samples_text(samples, s.get("test_cases", {}).get("match", "exact")), highlight=False)

    def closing(self, run_dir: Path, commands: list[str]) -> None:
        """After every file is written: what is in the run directory, and what to run next (printed even quiet)."""
        files = sorted(p for p in Path(run_dir).iterdir() if not p.name.startswith("."))
        listing = "  ".join(f"{p.name}/" if p.is_dir() else p.name for p in files)
        self.console.print(f"[bold]written[/bold] {escape(f'{run_dir}/: {listing}')}", highlight=False, soft_wrap=True)
        self.console.print("[bold]next[/bold]", highlight=False)
        for command in commands:
            self.console.print(f"  {escape(command)}", highlight=False, soft_wrap=True)


def _samples_text(samples: list[dict], match: str, show: int = 5) -> str:
    """A few test-case answers, each marked ✓ or ✗ (with the expected answer when wrong): the wrong ones first,
    since they are what to look at, then right ones, up to `show`."""
    wrong = [s for s in samples if not s["correct"]]
    right = [s for s in samples if s["correct"]]
    picked = wrong[: max(show - min(len(right), 2), 3)]
    picked += right[: show - len(picked)]
    lines = [f"[bold]test-case answers[/bold] ({len(picked)} of {len(samples)}, {match} match)"]
    for sample in picked:
        prompt = sample["prompt"] if len(sample["prompt"]) <= 120 else "…" + sample["prompt"][-120:]
        answer = sample["answer"] if len(sample["answer"]) <= 200 else sample["answer"][:200] + "…"
        # escaped: a prompt like "[INST] ..." is text, not rich markup
        if sample["correct"]:
            lines.append(f"[green]✓[/green] {escape(repr(prompt))} → {escape(repr(answer))}")
        else:
            lines.append(
                f"[red]✗[/red] {escape(repr(prompt))} → {escape(repr(answer))} "
                f"(expected {escape(repr(sample['reference']))})"
            )
    return "\n".join(lines)


def _setup_text(t: dict) -> str:
    """'41.2 s before the first step: importing 12.1 s · loading the model 20.3 s · ...'."""
    phases = t.get("setup_phases") or {}
    parts = [f"{name} {seconds:.1f} s" for name, seconds in phases.items()]
    rest = t["setup_s"] - sum(phases.values())
    if phases and rest >= 0.05:
        parts.append(f"the trainer's own start and the header {rest:.1f} s")
    return f"{t['setup_s']:.1f} s before the first step" + (f": {' · '.join(parts)}" if parts else "")


class _LiveView:
    """What rich's Live redraws: the panel, rebuilt from the callback's state at each refresh."""

    def __init__(self, reporter: Reporter, callback):
        self.reporter, self.callback = reporter, callback

    def __rich__(self):
        return self.reporter._panel(self.callback)


def _speed_text(row: dict, sep: str = ", ") -> str:
    """The three speed figures of one logged window, over the same time (inside the window's optimizer steps)."""
    first = row["step"] - row["window_steps"] + 1
    steps = f"step {row['step']}" if row["window_steps"] == 1 else f"steps {first}-{row['step']}"
    return (
        f"{row['tokens_per_s']:,.0f} tok/s{sep}{row['samples_per_s']:,.1f} samples/s{sep}"
        f"{row['step_time_s']:.3f} s/step ({steps})"
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
