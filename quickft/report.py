"""The console: the header, the live display (or plain lines), the end report. It only renders what it is given.

quickft.recorder measures training and calls `training_began`, `logged`, `evaluated` and `training_ended`;
quickft.metrics computes the figures; train.py builds summary.json and hands it to `report`. On a terminal the live
display is a rich panel refreshed a few times a second; otherwise (CI, a pipe, a log file) each logging step is one
fixed-format plain line. Every number printed is also in metrics.jsonl / summary.json.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from quickft import distributed, methods
from quickft import metrics as m
from quickft.metrics import duration


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
        self.process_start_s = _since_process_start()
        """Seconds from this process's start to the verb's (Python, and importing quickft's command line)."""
        """When the verb started: setup (imports, model load, data) is measured from here to the first step."""
        self.phases: dict[str, float] = {}
        """Seconds spent in each named phase (reading data, importing, loading the model, ...), in order."""
        self.setup_phases: dict[str, float] = {}
        """The phases up to the first step (the report's setup breakdown), and their total time below."""
        self.setup_s = 0.0
        self._live = None

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
        placement=(),
    ) -> dict:
        room = methods.room(recipe.method)
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
                + (f"  (LoRA r={recipe.lora.r}, alpha={recipe.lora.alpha})" if recipe.mode != "full" else "")
                + (
                    f"  · method {recipe.method} ({methods.trainer_name(recipe.method)})"
                    if recipe.method != "sft"
                    else ""
                ),
            ),
            ("parameters", f"{total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"),
            (
                "data",
                f"{room.data_text(n_examples, documents, recipe)}, {n_tokens:,} tokens ({_source(recipe)})",
            ),
            *_grouped_rows("dropped", dropped, empty="none"),
            *_grouped_rows("cut to fit", truncated),
            *[("note", note) for note in notes],
            ("evaluation", _eval_text(recipe, n_eval, n_cases)),
            ("max_seq_length", str(recipe.max_seq_length)),
            (
                "batch",
                f"{recipe.micro_batch_size} micro-batch × {recipe.gradient_accumulation} accumulation"
                + (f" × {processes} processes" if processes > 1 else "")
                + (f" on {distributed.nodes()} machines" if distributed.nodes() > 1 else "")
                + (f" ({distributed.backend_name()})" if processes > 1 else "")
                + f" = {eff} effective"
                + room.batch_text(recipe, eff),
            ),
            *placement,  # several machines: where the processes run, who sees the run directory
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
            "method": recipe.method,
            "flop_counts": m.flop_counts(model),
            "planned_steps": self.planned_steps,
            "processes": processes,
        }

    # ------------------------------------------------------------------ during training (quickft.recorder calls these)

    def training_began(self, recorder) -> None:
        """The first step is about to run: what came before it is the setup. On a terminal the live panel starts,
        redrawn 4 times a second from the recorder's state (the clock and ETA move between logging steps)."""
        self.setup_phases = dict(self.phases)
        self.setup_s = recorder.started - self.started
        if self.live and not self.quiet:
            self._live = Live(_LiveView(self, recorder), console=self.console, refresh_per_second=4)
            self._live.start()

    def logged(self, row: dict) -> None:
        """A logging step's row: a plain line when there is no live panel (which shows it by itself)."""
        if self._live is None and not self.quiet:
            self.console.print(self._line(row), highlight=False, soft_wrap=True)

    def evaluated(self, row: dict, stopped: str | None) -> None:
        if self._live is None and not self.quiet:
            self.console.print(self._eval_line(row), highlight=False)
        if stopped and not self.quiet:
            self.console.print(stopped, highlight=False)

    def training_ended(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _line(self, row: dict) -> str:
        total = self.planned_steps or row["step"]
        grad = f"{row['grad_norm']:.3f}" if row["grad_norm"] is not None else "-"
        return (
            f"step {row['step']:>6}/{total} | epoch {row['epoch']:6.2f} | loss {row['loss']:.4f} "
            f"(smoothed {row['loss_smoothed']:.4f}) | lr {row['learning_rate']:.2e} | grad {grad} | "
            + (f"{extra} | " if (extra := methods.line_text(row)) else "")
            + f"{_speed_text(row)} | {m.memory_text(row)}"
        )

    def _eval_line(self, row: dict) -> str:
        start = row["step"] == 0  # the starting model, scored before the first step (DPO, GRPO, ...)
        parts = ["eval   before training" if start else f"eval   {row['step']:>6}/{self.planned_steps or row['step']}"]
        if "eval_loss" in row:
            parts.append(f"eval loss {row['eval_loss']:.4f}")
        if "case_score" in row:
            parts.append(f"test cases {row['case_score']:.1%}" + (" (the starting model)" if start else ""))
        return " | ".join(parts)

    def _panel(self, cb) -> Panel:
        """The live panel, from the callback's state as it is now (called by rich's refresh, 4 times a second)."""
        total = self.planned_steps or max(cb.step, 1)
        elapsed = time.perf_counter() - cb.started
        eta = cb.eta_s(self.planned_steps)
        resumed = f" (resumed at step {cb.start_step})" if cb.start_step else ""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("progress", ProgressBar(total=total, completed=cb.step, width=40))
        table.add_row(
            "step",
            f"{cb.step}/{total}   elapsed {duration(elapsed)}{resumed}   "
            + (
                f"ETA {duration(eta)} (the last {len(cb.recent_steps)} steps' pace)"
                if eta is not None
                else "ETA estimating (from the steps after the first)"
            ),
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
            for key, value in methods.panel_rows(row):
                table.add_row(key, value)
            table.add_row("speed", _speed_text(row, "   "))
            table.add_row("memory", m.memory_text(row))
        if cb.last_eval:
            table.add_row("eval", self._eval_line(cb.last_eval).split(" | ", 1)[-1])
        if cb.activity:
            table.add_row("now", f"{cb.activity} ...")
        return Panel(table, title="training", expand=False)

    # ------------------------------------------------------------------ after training

    def report(self, s: dict, samples: list[dict]) -> None:
        """The end report (printed even with --quiet): summary.json's figures, and a few test-case answers."""
        t, mem, loss = s["train"], s["memory"], s["loss"]
        method = s["model"].get("method", "sft")
        room = methods.room(method)
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
            f"{duration(t['steps_time_s'])} in {this}training steps (+{t['other_s']:.1f} s evaluation, checkpoints and "
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
            f"{t['tokens']:,} non-padding tokens · {t['samples']:,} "
            + room.samples(method)
            + (f" (this session: {t['session_tokens']:,} · {t['session_samples']:,})" if resumed else "")
            + f" · {100 * t['padding_share']:.1f}% of batch tokens were padding",
        )
        if t["total_flos"]:  # 0: the trainer had no estimate (GRPO's)
            table.add_row("total FLOPs", f"{t['total_flos']:.3e}")
        passes = " + ".join(f"{m.PASSES[name]} {flops:.2e}" for name, flops in t["flops_by_pass"].items())
        table.add_row(
            "model FLOPs",
            f"{t['flops_per_token']:.3e} per token trained ({passes}) × tokens/s = {t['flops_per_s']:.3e} FLOP/s"
            + (" per process" if t.get("processes", 1) > 1 else ""),
        )
        if t["mfu"] is not None:
            peak = t["peak_flops"]
            rate = f"{peak / 1e12:,.1f} TFLOP/s" if peak >= 1e12 else f"{peak / 1e9:,.0f} GFLOP/s"
            source = t.get("peak_source") or "the card's peak dense 16-bit rate"  # summaries before CPU MFU
            table.add_row("MFU", f"{100 * t['mfu']:.1f}% (the model FLOP/s above ÷ {source}, {rate})")
        table.add_row(
            "memory",
            (f"the largest of {t['processes']} processes: " if t.get("processes", 1) > 1 else "")
            + m.memory_summary_text(mem),
        )
        if loss and (own := room.loss_row(loss)):  # GRPO's loss is its objective, around 0 by construction
            table.add_row(*own)
        elif loss:
            thirds = (
                " / ".join(f"{p:.0f}%" for p in loss["improvement_by_third_pct"])
                if loss["improvement_by_third_pct"]
                else "-"
            )
            table.add_row(
                "loss",
                f"initial {loss['initial']:.4f} → final {loss['final']:.4f} (min {loss['min']:.4f}, max {loss['max']:.4f}); "
                f"improvement {loss['improvement_pct']:.1f}%"
                + (
                    f"; NaN/inf at {len(bad)} step(s) (first {bad[0]}), left out of these and of the smoothed loss"
                    if (bad := loss.get("non_finite_steps"))
                    else ""
                ),
            )
            table.add_row("improvement by third", thirds)
        for key, value in room.report_rows(s, this):
            table.add_row(key, value)
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
            before = h.get("before_training")
            table.add_row(
                f"test cases ({h['match']})",
                f"{h['score']:.1%} ({h['correct']}/{h['n']})"
                + (
                    f", from {before:.1%} before training ({100 * (h['score'] - before):+.1f} points)"
                    if before is not None
                    else ""
                ),
            )
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
    started = f" (and {t['process_start_s']:.1f} s starting Python and quickft)" if "process_start_s" in t else ""
    return f"{t['setup_s']:.1f} s before the first step" + (f": {' · '.join(parts)}" if parts else "") + started


def _since_process_start() -> float:
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


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


def _grouped_rows(label: str, items, *, empty: str | None = None) -> list[tuple[str, str]]:
    """One header row per cause (the label on the first); the whole list is in summary.json."""
    lines = grouped_reasons(items)
    if not lines:
        return [(label, empty)] if empty else []
    return [(label if i == 0 else "", line) for i, line in enumerate(lines)]


LENGTH = re.compile(r"\s*\((\d+) tokens > max_seq_length=(\d+)\)")


def grouped_reasons(items) -> list[str]:
    """(where, reason) pairs as one line per cause, with its count, the range of lengths and where the first is:
    '123 too long: 358-2,264 tokens > max_seq_length=256; first at data.jsonl:6'."""
    groups: dict[str, list] = {}
    for where, reason in items:
        length = LENGTH.search(reason)
        cause = LENGTH.sub("", reason)
        cause = re.sub(r" by \d+ tokens|: the answer alone is \d+ tokens", "", cause)
        cause = re.sub(r", and the answer starts after token \d+", " (the answer starts past the limit)", cause)
        group = groups.setdefault(cause, [0, [], None, where])
        group[0] += 1
        if length:
            group[1].append(int(length[1]))
            group[2] = length[2]
    lines = []
    for cause, (n, lengths, limit, first) in groups.items():
        span = ""
        if lengths:
            lo, hi = min(lengths), max(lengths)
            span = f": {lo:,}{f'-{hi:,}' if hi != lo else ''} tokens > max_seq_length={limit}"
        lines.append(f"{n:,} {cause}{span}; first at {first}")
    return lines


def _eval_text(recipe, n_eval: int, n_cases: int) -> str:
    e = recipe.eval
    parts = [f"{n_cases} test cases ({e.match} match)" if n_cases else "no test cases"]
    room = methods.room(recipe.method)
    if n_eval:
        parts.append(f"eval loss on {n_eval} {room.held(recipe.method)}")
    parts.append(f"every {e.every} steps" if e.every else "after training")
    if n_cases and room.SCORES_THE_START:  # quickft.train.score_the_start
        parts.append("the starting model's score first")
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


REPORT_WIDTH = 120
"""report.txt's width in characters (a terminal's is its own)."""


def report_text(summary: dict, samples: list[dict]) -> str:
    """The end report as plain text, as the console prints it: report.txt in the run directory (the studio shows it)."""
    console = Console(record=True, width=REPORT_WIDTH, file=io.StringIO())
    Reporter(console=console, live=False).report(summary, samples)
    return console.export_text()
