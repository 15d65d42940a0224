"""What `quickft run` and `quickft bench` plug into the trainer besides its TRL class: the evaluator that runs every
`eval.every` steps (with early stopping and a test-case score target), the callback that stops cleanly on Ctrl-C,
the one that logs the last step, and `quickft bench`'s clock.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from quickft import distributed
from quickft.errors import is_out_of_memory
from quickft.metrics import TokenCounter
from quickft.recipe import Recipe
from quickft.recovery import StopOnSignal


class StopCallback(TrainerCallback):
    """After each step: if any process was asked to stop (Ctrl-C, SIGTERM), save a checkpoint and stop training."""

    def __init__(self, stopper: StopOnSignal):
        self.stopper = stopper

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_process(bool(self.stopper.requested)):
            self.stopper.request("a signal to another process")
            control.should_save = True
            control.should_training_stop = True


class LogTheLastStep(TrainerCallback):
    """Log the step training ends at, whatever logging_steps says: the end of max_steps or of the epochs, an early
    stop, a target reached, Ctrl-C. transformers logs only every logging_steps, so a run of 40 steps logging every 25
    would end with step 25's figures, and steps 26-40 would be in no row. Added after every callback that may stop
    training (transformers' own flow callback comes first, quickft's Evaluator and StopCallback before this one)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop or state.global_step >= state.max_steps:
            control.should_log = True


class Evaluator(TrainerCallback):
    """Every `eval.every` steps: eval loss, test-case score, early stopping, target. Its results go to the recorder.

    Early stopping stays ours rather than transformers' EarlyStoppingCallback: that one works only inside the
    trainer's own evaluation schedule (eval_strategy, metric_for_best_model, the trainer's best-metric bookkeeping,
    which a test-case score is not part of), and stops on one metric only, not on a test-case score target.
    """

    def __init__(self, recipe: Recipe, cases: list[tuple[str, str]], run_dir: Path, recorder):
        self.recipe, self.cases, self.run_dir, self.recorder = recipe, cases, run_dir, recorder
        self.best_step = self.best_loss = self.stopped = None
        self.bad = 0
        self.trainer = None

    def attach(self, trainer) -> None:
        """The trainer to evaluate with (a new one after an out-of-memory retry)."""
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.recipe.eval.every == 0 or state.global_step >= state.max_steps:
            self.evaluate(state, control)

    def evaluate(self, state, control) -> None:
        recipe, trainer, cases = self.recipe, self.trainer, self.cases
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 6)}
        self.recorder.set_activity(
            f"evaluating at step {state.global_step}" + (f": answering {len(cases)} test cases" if cases else "")
        )
        with self.recorder.peaks.phase("evaluation"):
            if trainer.eval_dataset is not None:  # every process evaluates its share
                row["eval_loss"] = eval_loss(trainer)
            # the first process answers and the others wait for its score; under FSDP all of them answer together
            if cases and (distributed.is_main() or distributed.sharded(trainer.model)):
                row["case_score"] = case_score(trainer, recipe, cases)
        row = distributed.broadcast(row)  # every process takes the same early-stopping decision
        if "eval_loss" in row:
            if self.best_loss is None or row["eval_loss"] < self.best_loss:
                self.best_step, self.best_loss, self.bad = state.global_step, row["eval_loss"], 0
                if recipe.eval.patience:
                    best = self.run_dir / "best"
                    trainer.save_model(str(best))
                    # TRL's frozen copy of the starting adapter (DPO, KTO) is saved beside the trained one: not the
                    # model (the run's final save drops it too)
                    shutil.rmtree(best / "ref", ignore_errors=True)
            else:
                self.bad += 1
                if recipe.eval.patience and self.bad >= recipe.eval.patience:
                    self.stopped = (
                        f"early stop at step {state.global_step}: eval loss did not improve for "
                        f"{self.bad} evaluations (best {self.best_loss:.4f} at step {self.best_step})"
                    )
        if recipe.eval.target and row.get("case_score", 0.0) >= recipe.eval.target and not self.stopped:
            self.stopped = (
                f"target reached at step {state.global_step}: test-case score "
                f"{row['case_score']:.1%} ≥ {recipe.eval.target:.1%}"
            )
        self.recorder.set_activity(None)
        self.recorder.record_eval(row, self.stopped)
        if self.stopped:
            control.should_training_stop = True

    def summary(self) -> dict:
        return {
            "best_step": self.best_step,
            "best_eval_loss": self.best_loss,
            "stopped": self.stopped,
            "best_dir": str(self.run_dir / "best") if self.recipe.eval.patience and self.best_step else None,
        }


def eval_loss(trainer) -> float:
    """The trainer's eval loss; out of memory halves the *evaluation* batch and tries again (never the training one)."""
    while True:
        try:
            return trainer.evaluate()["eval_loss"]
        except Exception as e:
            if not is_out_of_memory(e) or trainer.args.per_device_eval_batch_size == 1:
                raise
            trainer.args.per_device_eval_batch_size //= 2
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class StepTimer(TrainerCallback):
    """`quickft bench`'s clock: each step's wall time (on a GPU between two synchronisations, so the step's kernels
    are inside it), its real tokens and samples, and the logged losses, in `timing`."""

    def __init__(self, counter: TokenCounter, cuda: bool, progress=None):
        self.counter, self.cuda, self.progress = counter, cuda, progress
        self.timing: dict[str, list] = {"times": [], "tokens": [], "samples": [], "losses": []}
        self._start, self._tokens, self._samples = 0.0, 0, 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()  # a CPU-GPU sync point: only the bench pays it

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()
        self._tokens, self._samples = self.counter.tokens, self.counter.samples

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.timing["times"].append(time.perf_counter() - self._start)
        if self.progress:
            self.progress(state.global_step)
        self.timing["tokens"].append(self.counter.tokens - self._tokens)
        self.timing["samples"].append(self.counter.samples - self._samples)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.timing["losses"].append(float(logs["loss"]))


def case_score(trainer, recipe: Recipe, cases: list[tuple[str, str]]) -> float:
    """The share of the test cases the trainer's model answers right, as the run's test-case score counts them."""
    from quickft.generation import score_cases

    how, limit = recipe.eval.match, recipe.max_new_tokens
    scored = score_cases(trainer.model, trainer.processing_class, cases, how=how, max_new_tokens=limit)
    return sum(s["correct"] for s in scored) / len(scored)
