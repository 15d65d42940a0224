"""PNG plots of a run's metrics.jsonl, written into the run directory (matplotlib, non-interactive backend).

The plots every run has are drawn here; a method's own (preference.png, rewards.png, groups.png) are its room's
(quickft.methods.plots), handed in as `more` by the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

PLOTS = {
    "loss.png": "loss per step, with a centered moving average and the eval loss",
    "loss_per_epoch.png": "mean loss of each epoch (a partial last epoch is marked)",
    "loss_log.png": "loss per step on a log scale",
    "learning_rate.png": "learning rate per step",
    "grad_norm.png": "gradient norm per step",
    "test_cases.png": "test-case score at each evaluation, 0-100%, with the recipe's target",
    "rewards.png": "GRPO: the reward (mean ± spread over the answers) and each reward function's mean, per step",
    "groups.png": "GRPO: the share of groups whose answers all scored the same (nothing to learn), and of answers "
    "cut at max_completion_length",
    "preference.png": "DPO, ORPO, SimPO, KTO: the chosen (desirable) and rejected (undesirable) answers' rewards and "
    "their margin, and how often the chosen answer wins (pairs), each TRL's mean over a logging window",
}


def smooth(values: list[float], window: int) -> list[float]:
    """A centered moving average: each point is the mean of the `window` points around it (fewer at the ends).
    Centered, so a falling curve's average runs through it; a trailing average (an EMA) lags above it."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half) : i + half + 1]
        out.append(sum(part) / len(part))
    return out


def smoothing_window(n: int) -> int:
    """About a tenth of the logged points, odd so the window is centered; 1 (no smoothing) for short runs."""
    return max(1, (n // 10) | 1) if n >= 10 else 1


def resume_steps(rows: list[dict]) -> list[int]:
    """The steps a resumed session started at (each session's rows carry the step it started from)."""
    return sorted({r["session_start_step"] for r in rows if r.get("session_start_step")})


def write_plots(
    rows: list[dict],
    run_dir: Path,
    *,
    name: str | None = None,
    target: float | None = None,
    more: Callable | None = None,
) -> list[Path]:
    """Draw every plot in PLOTS from the metric rows into run_dir, and `more`'s (a method's own); returns the files
    written. Each PNG carries its title in its metadata too."""
    import matplotlib.pyplot as plt

    written = []
    for file, fig in figures(rows, name=name, target=target, more=more).items():
        fig.savefig(run_dir / file, metadata={"Title": fig.axes[0].get_title()})
        plt.close(fig)
        written.append(run_dir / file)
    return written


def figures(
    rows: list[dict], *, name: str | None = None, target: float | None = None, more: Callable | None = None
) -> dict:
    """{file name: matplotlib figure} for every plot in PLOTS the rows have data for, then `more(save, rows)`'s (a
    method's own plots, drawn with the same `save`). `name` (the run's) heads every title; `target` (eval.target, a
    share) is drawn on the test-case plot; resumed sessions are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "eval_loss" in r or "case_score" in r]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return {}
    steps = [r["step"] for r in rows]
    resumes = resume_steps(rows)
    prefix = f"{name}: " if name else ""
    drawn = {}

    def save(file: str, title: str, ylabel: str, draw, *, log: bool = False, xlabel: str = "step"):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        draw(ax)
        if xlabel == "step":
            for step in resumes:
                ax.axvline(step, color="gray", linestyle=":", label=f"resumed at step {step}")
        ax.set_title(prefix + title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        drawn[file] = fig

    losses = [r["loss"] for r in rows]
    window = smoothing_window(len(losses))
    eval_losses = [(r["step"], r["eval_loss"]) for r in evals if "eval_loss" in r]

    def loss(ax):
        ax.plot(steps, losses, alpha=0.45, label="loss", marker="." if len(rows) < 50 else None)
        if window > 1:
            ax.plot(steps, smooth(losses, window), linewidth=2, label=f"mean of {window} logged steps (centered)")
        if eval_losses:
            ax.plot(*zip(*eval_losses, strict=True), marker="o", label="eval loss")

    save("loss.png", "training loss", "loss", loss)
    if all(v > 0 for v in losses):  # GRPO's objective hovers around 0: no log scale for it
        save("loss_log.png", "training loss (log scale)", "loss", loss, log=True)

    by_epoch: dict[int, list[float]] = {}
    for r in rows:  # a step logged at epoch 1.25 belongs to the second epoch (index 1)
        by_epoch.setdefault(int(max(r["epoch"] - 1e-9, 0)), []).append(r["loss"])
    epochs = sorted(by_epoch)
    means = [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]
    last_epoch = rows[-1]["epoch"]
    partial = last_epoch - epochs[-1]  # share of the last epoch trained: 1.0 when it was whole

    def per_epoch(ax):
        ax.plot([e + 1 for e in epochs], means, marker="o")
        if partial < 0.999:
            ax.plot(
                [epochs[-1] + 1],
                [means[-1]],
                marker="o",
                markerfacecolor="white",
                linestyle="none",
                label=f"epoch {epochs[-1] + 1}: partial ({partial:.0%} of it trained)",
            )
        ax.set_xticks([e + 1 for e in epochs])

    save("loss_per_epoch.png", "mean training loss per epoch", "loss", per_epoch, xlabel="epoch")
    save(
        "learning_rate.png",
        "learning rate",
        "learning rate",
        lambda ax: ax.plot(steps, [r["learning_rate"] for r in rows]),
    )
    grads = [(r["step"], r["grad_norm"]) for r in rows if r.get("grad_norm") is not None]
    save(
        "grad_norm.png",
        "gradient norm (before clipping)",
        "norm",
        lambda ax: ax.plot(*zip(*grads, strict=True)) if grads else None,
    )
    scores = [(r["step"], 100 * r["case_score"]) for r in evals if "case_score" in r]

    def cases(ax):
        ax.plot(*zip(*scores, strict=True), marker="o", label="test cases right")
        if target:
            ax.axhline(100 * target, color="green", linestyle="--", label=f"target {target:.0%}")
        ax.set_ylim(0, 100)

    if scores:
        save("test_cases.png", "test-case score", "% correct", cases)
    if more is not None:
        more(save, rows)  # a method's own: preference.png, rewards.png, groups.png
    return drawn
