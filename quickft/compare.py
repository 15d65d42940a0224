"""`quickft compare RUN_A RUN_B [...]`: finished runs side by side, each with its ratio to the first.

Reads only the run directories (recipe.json, summary.json).
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quickft.errors import UserError
from quickft.recipe import field_paths, recipe_from_dict
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
    ("eval_loss", "eval loss", "lower"),
    ("case_score", "test cases right", "higher"),
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
        "eval_loss": _eval_loss(s.get("evaluation")),
        "case_score": s["test_cases"]["score"] if s.get("test_cases") else None,
        "peak_memory_mb": mem["gpu_peak_allocated_mb"] if gpu else mem["peak_rss_mb"],
        "memory_kind": "GPU max allocated" if gpu else "peak RSS",
    }


def _eval_loss(evaluation: dict | None) -> float | None:
    """The run's last eval loss: after training, or the last evaluation during it."""
    if not evaluation:
        return None
    if evaluation.get("final_eval_loss") is not None:
        return evaluation["final_eval_loss"]
    losses = [r["eval_loss"] for r in evaluation.get("history", []) if "eval_loss" in r]
    return losses[-1] if losses else None


def settings_that_differ(recipes: list[dict]) -> dict[str, list]:
    """The recipe settings (the key=value names overrides use) whose values are not the same in every run:
    {key: [value per run]}."""
    loaded = [recipe_from_dict(r) for r in recipes]

    def value(recipe, key: str):
        for part in key.split("."):
            recipe = getattr(recipe, part)
        return recipe

    table = {key: [value(r, key) for r in loaded] for key in field_paths()}
    return {k: v for k, v in table.items() if len({json.dumps(x, default=str) for x in v}) > 1}


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
    runs = [open_run(d) for d in run_dirs]
    rows = [run_row(run) for run in runs]
    differ = settings_that_differ([run["recipe"] for run in runs])
    for i, row in enumerate(rows):
        row["settings"] = {k: values[i] for k, values in differ.items()}
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
        "eval_loss": lambda v: f"{v:.4f}",
        "case_score": lambda v: f"{v:.1%}",
        "peak_memory_mb": lambda v: f"{v:,.1f}",
    }
    for key, label, _ in METRICS:
        cells = []
        for i, r in enumerate(rows):
            value = "-" if r[key] is None else fmt[key](r[key])
            if key == "peak_memory_mb":
                value += f" ({r['memory_kind']})"
            cells.append(value if i == 0 else f"{value}  [dim]{r['ratios'][key]['text']}[/dim]")
        if any(r[key] is not None for r in rows):
            table.add_row(label, *cells)
    console.print(table)
    if rows[0]["settings"]:
        settings = Table(title="recipe settings that differ")
        settings.add_column("setting", style="bold")
        for i in range(len(rows)):
            settings.add_column(chr(ord("A") + i))
        for key in rows[0]["settings"]:
            settings.add_row(key, *[escape(json.dumps(r["settings"][key], default=str)) for r in rows])
        console.print(settings)
    else:
        console.print("recipe settings: the same in every run", highlight=False)
    if len({r["steps"] for r in rows}) > 1:
        console.print(
            "the runs trained for different numbers of steps: compare the rates (tokens/s, samples/s) and the "
            "losses; runtime and total FLOPs measure how much work each did, not how fast",
            highlight=False,
        )


def main(run_dirs: list[str], *, as_json: bool = False, console: Console | None = None) -> list[dict]:
    rows = compare(run_dirs)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, console or Console())
    return rows
