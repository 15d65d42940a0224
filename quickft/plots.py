"""PNG plots of a run's metrics.jsonl, written into the run directory (matplotlib, non-interactive backend)."""

from __future__ import annotations

from pathlib import Path

PLOTS = {
    "loss.png": "loss per step, with the smoothed loss",
    "loss_per_epoch.png": "mean loss of each epoch",
    "loss_log.png": "loss per step on a log scale",
    "learning_rate.png": "learning rate per step",
    "grad_norm.png": "gradient norm per step",
    "test_cases.png": "test-case score at each evaluation (when the recipe evaluates during training)",
}


def write_plots(rows: list[dict], run_dir: Path) -> list[Path]:
    """Draw every plot in PLOTS from the metric rows; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "eval_loss" in r or "case_score" in r]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    written = []

    def save(name: str, title: str, ylabel: str, draw, *, log: bool = False, xlabel: str = "step"):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        draw(ax)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / name)
        plt.close(fig)
        written.append(run_dir / name)

    losses = [r["loss"] for r in rows]
    smoothed = [r["loss_smoothed"] for r in rows]

    eval_losses = [(r["step"], r["eval_loss"]) for r in evals if "eval_loss" in r]

    def loss(ax):
        ax.plot(steps, losses, alpha=0.45, label="loss", marker="." if len(rows) < 50 else None)
        ax.plot(steps, smoothed, linewidth=2, label="smoothed")
        if eval_losses:
            ax.plot(*zip(*eval_losses, strict=True), marker="o", label="eval loss")

    save("loss.png", "training loss", "loss", loss)
    save("loss_log.png", "training loss (log scale)", "loss", loss, log=True)

    by_epoch: dict[int, list[float]] = {}
    for r in rows:  # a step logged at epoch 1.25 belongs to the second epoch (index 1)
        by_epoch.setdefault(int(max(r["epoch"] - 1e-9, 0)), []).append(r["loss"])
    epochs = sorted(by_epoch)
    save(
        "loss_per_epoch.png",
        "mean training loss per epoch",
        "loss",
        lambda ax: ax.plot([e + 1 for e in epochs], [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], marker="o"),
        xlabel="epoch",
    )
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
    if scores:
        save(
            "test_cases.png", "test-case score", "% correct", lambda ax: ax.plot(*zip(*scores, strict=True), marker="o")
        )
    return written
