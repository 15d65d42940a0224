"""Losing nothing: Ctrl-C / SIGTERM stop cleanly after a checkpoint, and CUDA out-of-memory errors either explain
themselves or (with auto_batch) continue with half the micro-batch."""

from __future__ import annotations

import sys
import threading
from dataclasses import replace
from pathlib import Path

from quickft import distributed, rundir
from quickft.errors import UserError
from quickft.hardware import Choice, describe
from quickft.recipe import Recipe, recipe_to_dict


class StopOnSignal:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the step, save a checkpoint, stop cleanly. Second: stop at once.

    Under torchrun every process gets Ctrl-C twice, from the terminal and forwarded by torchrun a moment later, so a
    repeat within a second is the same request. The processes stop after the same step: each step ends by asking
    them all whether any was asked to stop (torchrun kills them `--shutdown-timeout` seconds after forwarding it,
    30 by default: the step and the checkpoint must fit in that)."""

    REPEAT_S = 1.0

    def __init__(self):
        self.requested: str | None = None
        self._at = 0.0
        self._previous: dict = {}

    def __enter__(self):
        import signal

        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        import signal
        import time

        if self.requested:
            if distributed.world_size() > 1 and time.monotonic() - self._at < self.REPEAT_S:
                return  # the same Ctrl-C, forwarded by torchrun
            raise KeyboardInterrupt  # the second one: files are written atomically, so stopping here is safe
        self.requested, self._at = signal.Signals(signum).name, time.monotonic()
        if distributed.is_main():
            print(
                f"\n{self.requested}: saving a checkpoint after this step, then stopping (again to quit at once)",
                file=sys.stderr,
                flush=True,
            )

    def request(self, why: str) -> None:
        """Stop after this step for `why` (another process's signal), unless already asked to."""
        self.requested = self.requested or why


def smaller_micro_batch(micro_batch: int) -> int:
    """The largest divisor of `micro_batch` that is at most half of it: the effective batch (micro-batch x
    accumulation) then stays exactly the same (6 -> 3, 3 -> 1 with three times the accumulation)."""
    return max(d for d in range(1, micro_batch // 2 + 1) if micro_batch % d == 0)


def recover_from_oom(error, trainer, recipe: Recipe, choice: Choice, run_dir: Path) -> tuple[Path, Recipe]:
    """Either a clear message (UserError) or, with auto_batch, a checkpoint to continue from and the recipe to
    continue with: a smaller micro-batch and more accumulation (the effective batch stays exactly the same)."""
    import torch

    step = trainer.state.global_step
    card = "no GPU memory figures here"
    if choice.device == "cuda":
        card = describe(choice.hardware)
    what = (
        f"out of GPU memory at step {step} ({recipe.mode}, micro-batch {recipe.micro_batch_size}, "
        f"max_seq_length {recipe.max_seq_length}, {choice.precision}); {card}"
    )
    if not recipe.auto_batch or recipe.micro_batch_size == 1:
        raise UserError(
            what,
            hint=(
                "try, in this order: 1. a smaller micro_batch_size with a larger gradient_accumulation (or "
                "auto_batch=true); 2. gradient_checkpointing=true; 3. mode=qlora (4-bit); 4. a shorter max_seq_length"
            ),
        ) from error
    trainer.model.zero_grad(set_to_none=True)
    if choice.device == "cuda":
        torch.cuda.empty_cache()
    trainer._save_checkpoint(trainer.model, trial=None)  # the state after the last completed step
    before = (recipe.micro_batch_size, recipe.gradient_accumulation)
    micro_batch = smaller_micro_batch(before[0])
    recipe = replace(recipe, micro_batch_size=micro_batch, gradient_accumulation=before[1] * before[0] // micro_batch)
    status = rundir.read_json(run_dir / "status.json")
    retries = status.get("retries", []) + [
        {
            "step": step,
            "error": str(error).splitlines()[0][:200],
            "micro_batch_size": [before[0], recipe.micro_batch_size],
            "gradient_accumulation": [before[1], recipe.gradient_accumulation],
        }
    ]
    rundir.set_status(run_dir, "running", retries=retries)
    rundir.write_json(run_dir / "recipe.json", recipe_to_dict(recipe))
    print(
        f"{what}\nauto_batch: continuing from step {step} with micro-batch {recipe.micro_batch_size} × "
        f"{recipe.gradient_accumulation} accumulation",
        file=sys.stderr,
        flush=True,
    )
    return rundir.latest_checkpoint(run_dir), recipe
