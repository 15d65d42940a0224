"""The trainer callback that measures training and writes metrics.jsonl; it owns every figure it records.

Imported only by the verbs that train (transformers comes with it). It shows nothing itself: it hands each row to a
display (quickft.report.Reporter) that renders it. Under torchrun every process records; each logged row combines
all processes' counts (quickft.distributed), and only the first process writes.
"""

from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from quickft import distributed, methods
from quickft import metrics as m

ETA_WINDOW = 20
"""The ETA's pace is the mean time of the last 20 steps: the pace now, not since the start (a first step slowed by
warm-up, or a machine that was busier a minute ago, would skew a mean over the whole session for long)."""
ETA_AFTER = 3
"""Steps timed after the session's first (which carries the warm-up and is left out) before an ETA is shown; until
then the panel says "estimating"."""


class Recorder(TrainerCallback):
    """Each logging step: loss (and its smoothed curve), learning rate, grad norm, real tokens and samples, speed over
    the window since the previous logging step, memory; one row in metrics.jsonl, the same figures added to the logs
    an experiment tracker sends. At the end: this session's totals and memory peaks.

    `earlier_rows` are a resumed run's rows before its checkpoint: the counters and the smoothed loss go on from them.
    """

    def __init__(self, metrics_path: Path, device: str, counter: m.TokenCounter, display, earlier_rows=()):
        self.metrics_path, self.device, self.counter, self.display = metrics_path, device, counter, display
        self.rows: list[dict] = [r for r in earlier_rows if "loss" in r]
        self.eval_rows: list[dict] = [r for r in earlier_rows if "loss" not in r]
        self.last_eval: dict = {}
        self.per_process: list[dict] = []
        """What each process counted and peaked at in this session (one entry without torchrun)."""
        self.totals: dict | None = None
        """This session's tokens, samples and padding, every process's summed (set when training ends)."""
        self.started = self.ended = self.memory = self._reserved_at_start = self._held = None
        self._ema = self.rows[-1]["loss_smoothed"] if self.rows else None
        self._ema_step = self.rows[-1]["step"] if self.rows else 0
        """The step of the last loss in the smoothed curve."""
        self._file = None
        self.step_s = 0.0
        """Wall time inside this session's optimizer steps (first micro-batch to optimizer update): the time every
        rate is over. Evaluation, checkpoint saves and logging happen between steps and are not in it."""
        self._step_started = None
        self.recent_steps: collections.deque[float] = collections.deque(maxlen=ETA_WINDOW)
        """The times of this session's latest steps, its first left out (the ETA's pace)."""
        self._last_step_end = None
        self._first_step_done = False
        self.start_step = None
        """The step this session started at: 0, or a resumed run's checkpoint."""
        self.step = 0
        """The last finished optimizer step (the display's clock: it moves between logging steps)."""
        last = self.rows[-1] if self.rows else {}
        self.earlier = {
            "tokens": last.get("tokens", 0),
            "samples": last.get("samples", 0),
            "padding": last.get("padding_tokens", 0),
            "elapsed_s": last.get("elapsed_s", 0.0),
            "generated": last.get("generated_tokens", 0),
        }
        """What the run counted before this session (tokens between the last logged step and the checkpoint are not
        in it: log at the steps you save at)."""
        self._window = (0, 0.0, 0, 0)  # (step, step_s, tokens, samples) at the previous logging step
        self._generation_window = (0, 0.0, 0.0)  # GRPO's (generated tokens, generation_s, reward_s) then
        self.peaks = m.PhasePeaks(device)
        """GPU memory peaks of training, evaluation and answering, each its own."""
        self.activity: str | None = None
        """What is happening between steps, when it takes a while (an evaluation): shown on the live panel."""

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        # the step's GPU work counts in its time: without a sync its queued kernels finish in the logging's .item()
        # after this callback, outside every timed step (worst on Unsloth's bf16 path, where nothing in a step syncs)
        m.synchronize(self.device)
        self._last_step_end = time.perf_counter()
        took = self._last_step_end - self._step_started
        if self._first_step_done:  # the session's first step carries the warm-up: not the pace
            self.recent_steps.append(took)
        self._first_step_done = True
        self.step_s += took
        self.step = state.global_step

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started is not None:  # trained on after an out-of-memory retry: one run, one clock
            self.peaks.retry()  # ... but the peak is the retry's, not the attempt that ran out
            return
        self.start_step = self.step = state.global_step
        # the model as it trains (DDP: all of it in each process; FSDP: each process's shard)
        self._held = distributed.weights_held(kwargs["model"]) if kwargs.get("model") is not None else None
        self._window = (state.global_step, 0.0, 0, 0)  # a resumed run's first window starts at its checkpoint
        self._reserved_at_start = m.memory(self.device).get("gpu_reserved_mb")  # the model, no optimizer yet
        m.reset_peak_memory(self.device)
        if distributed.is_main():
            self._file = open(self.metrics_path, "a", encoding="utf-8")
        self.started = time.perf_counter()
        self.display.training_began(self)

    def eta_s(self, planned_steps: int | None) -> float | None:
        """Seconds left: the steps left at the recent steps' pace (ETA_WINDOW), plus what this session spent between
        steps (evaluations, checkpoints, logging) per step so far; counting down while a step runs, never below what
        the steps after it need. None while estimating (fewer than ETA_AFTER steps timed after the first)."""
        if len(self.recent_steps) < ETA_AFTER or self._last_step_end is None:
            return None
        done = self.step - self.start_step
        between = max(0.0, (self._last_step_end - self.started) - self.step_s) / done
        per_step = sum(self.recent_steps) / len(self.recent_steps) + between
        left = (planned_steps or self.step) - self.step
        return max(left * per_step - (time.perf_counter() - self._last_step_end), (left - 1) * per_step, 0.0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        session_elapsed = time.perf_counter() - self.started
        loss = float(logs["loss"])
        step = state.global_step
        last_step, last_step_s, last_tokens, last_samples = self._window
        # an exponential moving average over about 20 steps, however often we log; a NaN or infinite loss (an fp16
        # overflow, and Unsloth turns transformers' NaN filter off) is in the row but not in the average, which it
        # would keep NaN for the rest of the run
        if math.isfinite(loss):
            beta = 0.95 ** (step - self._ema_step)
            self._ema = loss if self._ema is None else beta * self._ema + (1 - beta) * loss
            self._ema_step = step
        # speed over this window (the steps since the previous logging step), all three figures over the same time:
        # the time inside those optimizer steps
        window_s = self.step_s - last_step_s
        own = (
            {
                "tokens": self.counter.tokens,
                "samples": self.counter.samples,
                "padding": self.counter.padding,
                "window_tokens": self.counter.tokens - last_tokens,
                "window_samples": self.counter.samples - last_samples,
            }
            | m.memory(self.device)
            | self.peaks.training_so_far()
        )  # torch's own mark restarts after an evaluation
        self._window = (step, self.step_s, self.counter.tokens, self.counter.samples)
        generation = "generation_s" in self.counter.seconds  # GRPO: answers generated inside the steps
        if generation:
            own |= self._generation_figures()
        # with several processes (torchrun): every process's counts summed, memory the largest process's
        figures = distributed.combine(distributed.gather(own))
        row = {
            "step": step,
            "epoch": round(state.epoch or 0.0, 6),
            "loss": loss,
            "loss_smoothed": self._ema if self._ema is not None else loss,  # NaN until a first finite loss
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
        if generation:  # the window's generation and reward time, inside its steps' time (GRPO)
            row |= {
                "generated_tokens": self.earlier["generated"] + figures["generated_tokens"],
                "generated_tokens_per_s": figures["window_generated_tokens"] / figures["window_generation_s"]
                if figures["window_generation_s"]
                else 0.0,
                "generation_s": figures["generation_s"],
                "reward_s": figures["reward_s"],
                "generation_share": figures["window_generation_s"] / window_s if window_s else 0.0,
                "reward_share": figures["window_reward_s"] / window_s if window_s else 0.0,
            }
        # a method's own figures (DPO's, GRPO's: each method room's METRICS), averaged by TRL over the steps since its last log,
        # under TRL's names
        row |= {k: float(v) for k, v in logs.items() if k.startswith(methods.METRICS) and v is not None}
        self.rows.append(row)
        # the same figures for an experiment tracker (recipe.track), whose callback runs after this one and sends
        # these logs; transformers' own copy (state.log_history) was taken before the callbacks ran
        logs.update({k: v for k, v in row.items() if k not in logs and k != "step" and v is not None})
        if self._file is None:  # not the first process: it counts, the first one writes
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.display.logged(row)

    def _generation_figures(self) -> dict:
        """This session's generated tokens and generation / reward seconds, and the window's since the last log."""
        generated, seconds = self.counter.generated, self.counter.seconds
        generation_s, reward_s = seconds.get("generation_s", 0.0), seconds.get("reward_s", 0.0)
        last_generated, last_generation_s, last_reward_s = self._generation_window
        self._generation_window = (generated, generation_s, reward_s)
        return {
            "generated_tokens": generated,
            "window_generated_tokens": generated - last_generated,
            "generation_s": generation_s,
            "reward_s": reward_s,
            "window_generation_s": generation_s - last_generation_s,
            "window_reward_s": reward_s - last_reward_s,
        }

    def set_activity(self, text: str | None) -> None:
        """Say what is happening between steps (an evaluation), or None when it is over."""
        self.activity = text

    def record_start(self, row: dict) -> None:
        """The starting model's test-case score (step 0), answered before training begins: metrics file, display."""
        self.eval_rows.append(row)
        self.last_eval = row
        if distributed.is_main():  # the file opens with training; this row comes before
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        self.display.evaluated(row, None)

    def record_eval(self, row: dict, stopped: str | None) -> None:
        """An evaluation's results (eval loss, test-case score): metrics file, display."""
        self.eval_rows.append(row)
        self.last_eval = row
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        self.display.evaluated(row, stopped)

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()
        # training's peaks, apart from evaluation's (and before test cases are answered)
        own = (
            {
                "tokens": self.counter.tokens,
                "samples": self.counter.samples,
                "padding": self.counter.padding,
                "generated_tokens": self.counter.generated,
            }
            | m.memory(self.device)
            | self.peaks.report()
        )
        if self._reserved_at_start is not None:
            own["gpu_reserved_at_start_mb"] = self._reserved_at_start
        # and where each process ran, and how many of the model's weights it held
        self.per_process = distributed.gather(own | distributed.whereabouts() | {"weights_held": self._held})
        combined = distributed.combine([{k: p[k] for k in own} for p in self.per_process])
        self.totals = {k: combined[k] for k in ("tokens", "samples", "padding", "generated_tokens")}
        self.totals |= self.counter.seconds  # GRPO's generation_s and reward_s (the first process's clock)
        self.memory = {k: v for k, v in combined.items() if k not in distributed.COUNTS}
        self.close()

    def close(self) -> None:
        self.display.training_ended()
        if self._file is not None:
            self._file.close()
            self._file = None
