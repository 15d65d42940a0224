"""`quickft compare RUN_A RUN_B [...]`: finished runs side by side, each with its ratio to the first.

Reads only the run directories (recipe.json, summary.json).
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from quickft.errors import UserError
from quickft.rundir import open_run

# (key, label, better): "lower", "higher", or "neutral" for totals that measure how much work was done, not how
# well (a longer run takes longer and does more FLOPs: that is neither better nor worse)
METRICS = [
    ("runtime_s", "runtime", "neutral"),
    ("samples_per_s", "samples/s", "higher"),
    ("tokens_per_s", "tokens/s", "higher"),
    ("total_flos", "total FLOPs", "neutral"),
    ("final_loss", "final loss", "lower"),
    ("min_loss", "min loss", "lower"),
    ("peak_memory_mb", "peak memory (MB)", "lower"),
]


def run_row(run: dict) -> dict:
    s, recipe = run["summary"], run["recipe"]
    if s is None:
        raise UserError(f"{run['dir']}: no summary.json", hint="compare runs that finished training")
    mem = s["memory"]
    gpu = "gpu_peak_allocated_mb" in mem
    model = recipe["model"] if isinstance(recipe["model"], str) else "scratch"
    return {
        "run": str(run["dir"]),
        "model": model,
        "backend": s["backend"]["backend"],
        "device": s["backend"]["device"],
        "steps": s["train"]["steps"],
        "epochs": s["train"]["epochs"],
        "runtime_s": s["train"]["runtime_s"],
        "samples_per_s": s["train"]["samples_per_s"],
        "tokens_per_s": s["train"]["tokens_per_s"],
        "total_flos": s["train"]["total_flos"],
        "final_loss": s["loss"]["final"] if s["loss"] else None,
        "min_loss": s["loss"]["min"] if s["loss"] else None,
        "peak_memory_mb": mem["gpu_peak_allocated_mb"] if gpu else mem["peak_rss_mb"],
        "memory_kind": "GPU max allocated" if gpu else "peak RSS",
    }


def ratio_text(key: str, better: str, first: float | None, value: float | None) -> tuple[float | None, str]:
    """(value / first, words) e.g. (0.56, '0.56× (lower)'). Rates and losses say which way is better; totals
    (runtime, FLOPs) only how much more or less there was: speed words belong to rates."""
    if first in (None, 0) or value in (None, 0):
        return None, "-"
    r = value / first
    if abs(r - 1) < 0.005:
        return r, "same"
    if key == "peak_memory_mb":
        return r, f"{1 / r:.1f}× less memory" if r < 1 else f"{r:.1f}× more memory"
    if better == "neutral":
        return r, f"{r:.2f}× as much"
    if better == "higher":
        return r, f"{r:.2f}×"
    return r, f"{r:.2f}× ({'lower' if r < 1 else 'higher'})"


def compare(run_dirs: list[str]) -> list[dict]:
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories", hint="quickft compare outputs/a outputs/b")
    rows = [run_row(open_run(d)) for d in run_dirs]
    first = rows[0]
    for row in rows:
        row["ratios"] = {}
        for key, _, better in METRICS:
            if key == "peak_memory_mb" and row["memory_kind"] != first["memory_kind"]:
                row["ratios"][key] = {"ratio": None, "text": f"n/a ({row['memory_kind']} vs {first['memory_kind']})"}
                continue
            r, text = ratio_text(key, better, first[key], row[key])
            row["ratios"][key] = {"ratio": r, "text": text}
    return rows


def print_table(rows: list[dict], console: Console) -> None:
    table = Table(title="quickft compare (ratios are to the first run)")
    table.add_column("", style="bold")
    for i, row in enumerate(rows):
        table.add_column(f"{chr(ord('A') + i)}: {row['run']}")
    for label, key in [("model", "model"), ("backend", "backend"), ("device", "device"), ("steps", "steps")]:
        table.add_row(label, *[str(r[key]) for r in rows])
    table.add_row("epochs", *[f"{r['epochs']:.2f}" for r in rows])
    fmt = {
        "runtime_s": lambda v: f"{v:,.1f} s",
        "samples_per_s": lambda v: f"{v:,.2f}",
        "tokens_per_s": lambda v: f"{v:,.0f}",
        "total_flos": lambda v: f"{v:.3e}",
        "final_loss": lambda v: f"{v:.4f}",
        "min_loss": lambda v: f"{v:.4f}",
        "peak_memory_mb": lambda v: f"{v:,.1f}",
    }
    for key, label, _ in METRICS:
        cells = []
        for i, r in enumerate(rows):
            value = "-" if r[key] is None else fmt[key](r[key])
            if key == "peak_memory_mb":
                value += f" ({r['memory_kind']})"
            cells.append(value if i == 0 else f"{value}  [dim]{r['ratios'][key]['text']}[/dim]")
        table.add_row(label, *cells)
    console.print(table)


def main(run_dirs: list[str], *, as_json: bool = False, console: Console | None = None) -> list[dict]:
    rows = compare(run_dirs)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, console or Console())
    return rows
