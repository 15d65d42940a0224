"""`quickft compare RUN_A RUN_B [...]`: finished runs side by side, each with its ratio to the first.

Reads only the run directories (recipe.json, summary.json).
"""

from __future__ import annotations

import json
from pathlib import PurePath

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quickft.errors import UserError
from quickft.recipe import field_paths, recipe_from_dict
from quickft.rundir import open_run

# (key, label, better): "lower", "higher", or "neutral" for totals that measure how much work was done, not how
# well (a longer run takes longer and does more FLOPs: that is neither better nor worse); "points" for a score,
# compared by its difference in percentage points
METRICS = [
    ("runtime_s", "runtime", "neutral"),
    ("samples_per_s", "samples/s", "higher"),
    ("tokens_per_s", "tokens/s", "higher"),
    ("total_flos", "total FLOPs", "neutral"),
    ("final_loss", "final loss", "lower"),
    ("min_loss", "min loss", "lower"),
    ("eval_loss", "eval loss", "lower"),
    ("case_score", "test cases right", "points"),
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
        "method": recipe.get("method", "sft"),
        "model": model,
        "backend": s["backend"]["backend"],
        "device": s["backend"]["device"],
        "steps": s["train"]["steps"],
        "epochs": s["train"]["epochs"],
        "runtime_s": s["train"]["runtime_s"],
        "samples_per_s": s["train"]["samples_per_s"],
        "tokens_per_s": s["train"]["tokens_per_s"],
        "total_flos": s["train"]["total_flos"] or None,  # 0: the trainer made no estimate (GRPO's)
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


LOSSES = ("final_loss", "min_loss", "eval_loss")


def ratio_text(key: str, better: str, first: float | None, value: float | None) -> tuple[float | None, str]:
    """(value / first, words) e.g. (0.56, '0.56× (lower)'). Rates and losses say which way is better; totals
    (runtime, FLOPs) only how much more or less there was: speed words belong to rates; a score says its difference
    in points. A figure missing on either side is "n/a", never a ratio of 0."""
    if first is None or value is None:
        return None, "n/a (not measured in both runs)"
    if better == "points":
        r = value / first if first else None
        points = 100 * (value - first)
        return r, "same" if abs(points) < 0.05 else f"{points:+.1f} points"
    if first == 0 or value == 0:
        return None, "n/a (0 in one run)"
    r = value / first
    if abs(r - 1) < 0.005:
        return r, "same"
    if key == "peak_memory_mb":  # a share below 2×: "1.0× less" said nothing about a 4% difference
        if r < 1:
            return r, f"{1 - r:.0%} less memory" if r > 0.5 else f"{1 / r:.1f}× less memory"
        return r, f"{r - 1:.0%} more memory" if r < 2 else f"{r:.1f}× more memory"
    if better == "neutral":
        return r, f"{r:.2f}× as much"
    if better == "higher":
        return r, f"{r:.2f}×"
    return r, f"{r:.2f}× ({'lower' if r < 1 else 'higher'})"


def not_comparable(key: str, first: dict, row: dict) -> str | None:
    """Why a figure of `row` cannot be set against the first run's, or None when it can: a loss is its method's own
    quantity (an SFT cross-entropy, a DPO loss, GRPO's policy objective, around 0 by construction), so only losses of
    the same method compare, and GRPO's not even then; peak memory only of the same kind (GPU or process memory)."""
    if key == "peak_memory_mb" and row["memory_kind"] != first["memory_kind"]:
        return f"n/a ({row['memory_kind']} vs {first['memory_kind']})"
    if key in LOSSES:
        if row["method"] != first["method"]:
            return f"n/a ({row['method'].upper()} loss vs {first['method'].upper()} loss: different quantities)"
        if row["method"] == "grpo":
            return "n/a (GRPO's objective is around 0 by construction: compare rewards and test cases)"
    return None


def short_names(runs: list[str]) -> list[str]:
    """Each run by the fewest trailing parts of its path that tell it from the others: outputs/a/tiny_math and
    outputs/b/tiny_math are a/tiny_math and b/tiny_math, outputs/tiny_math and outputs/tiny_math_grpo their names."""
    parts = [PurePath(r).parts or (r,) for r in runs]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = [str(PurePath(*p[-k:])) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(PurePath(*p)) for p in parts]  # the same run twice: its whole path each time


def compare(run_dirs: list[str]) -> list[dict]:
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories", hint="quickft compare outputs/a outputs/b")
    runs = [open_run(d) for d in run_dirs]
    rows = [run_row(run) for run in runs]
    differ = settings_that_differ([run["recipe"] for run in runs])
    for i, row in enumerate(rows):
        row["settings"] = {k: values[i] for k, values in differ.items()}
    first = rows[0]
    for row, name in zip(rows, short_names([row["run"] for row in rows]), strict=True):
        row["name"] = name
        row["ratios"] = {}
        for key, _, better in METRICS:
            if why := not_comparable(key, first, row):
                row["ratios"][key] = {"ratio": None, "text": why}
                continue
            r, text = ratio_text(key, better, first[key], row[key])
            row["ratios"][key] = {"ratio": r, "text": text}
    return rows


def print_table(rows: list[dict], console: Console) -> None:
    for i, row in enumerate(rows):  # the whole paths once; the table's columns carry the part that differs
        console.print(f"[bold]{chr(ord('A') + i)}[/bold] {escape(row['run'])}", highlight=False, soft_wrap=True)
    table = Table(title="quickft compare (ratios are to the first run)")
    table.add_column("", style="bold")
    for i, row in enumerate(rows):
        table.add_column(f"{chr(ord('A') + i)}: {escape(row['name'])}", overflow="fold")
    for label, key in [
        ("method", "method"),
        ("model", "model"),
        ("backend", "backend"),
        ("device", "device"),
        ("steps", "steps"),
    ]:
        table.add_row(label, *[escape(str(r[key])) for r in rows])
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
            value = "n/a" if r[key] is None else fmt[key](r[key])
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
    if len(methods := list(dict.fromkeys(r["method"] for r in rows))) > 1:
        console.print(
            f"the runs trained with different methods ({', '.join(methods)}): each loss is its own method's quantity, "
            "so losses are not compared; the test cases are",
            highlight=False,
        )
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
