"""What the studio shows, read from the run directories as plain JSON data (no web code here).

Every figure comes from the files `quickft run` writes (status.json, recipe.json, backend.json, metrics.jsonl,
summary.json, samples.jsonl); the end report is the console's own, as the run recorded it (report.txt);
the differing settings are `quickft compare`'s; the masking preview is `quickft data`'s, made in a child process
(studio/masking.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from quickft.compare import compare, settings_that_differ
from quickft.errors import UserError
from quickft.recipe import METHOD_SECTIONS, Data, Recipe, field_paths, recipe_from_dict, recipe_to_dict
from quickft.rundir import RUN_FILES, read_json
from quickft.studio.children import Busy


def is_run(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in RUN_FILES)


def check_outputs_dir(path: Path) -> None:
    """UserError unless `path` is a directory of runs (an empty one will do: runs appear in it as they start)."""
    if not path.is_dir():
        raise UserError(
            f"{path} is not a directory",
            hint="pass the directory `quickft run` writes runs into (default outputs/), e.g. quickft studio outputs",
        )
    if is_run(path):
        raise UserError(
            f"{path} is one run directory; the studio shows a directory of runs",
            hint=f"pass its parent: quickft studio {path.parent}",
        )
    entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.name != "README.md"]
    if entries and not any(is_run(p) for p in entries):
        raise UserError(
            f"{path} holds no quickft runs (no subdirectory with {' and '.join(RUN_FILES)})",
            hint="pass the directory `quickft run` writes runs into (default outputs/)",
        )


class Outside(UserError):
    """A run, or a file in it, that links to somewhere outside the outputs folder: the studio serves nothing there."""


def inside(folder: Path, path: Path) -> bool:
    """Whether `path`, links followed, is in `folder` (links followed too)."""
    return path.resolve().is_relative_to(folder.resolve())


def check_inside(outputs: Path, path: Path) -> None:
    """Outside unless the run folder and every entry directly in it (the files the studio reads, serves, or hands to
    its children: recipe, metrics, plots, the adapter) resolve inside `outputs`."""
    for entry in (path, *path.iterdir()):
        if not inside(outputs, entry):
            raise Outside(f"{entry} links outside {outputs}: the studio reads nothing outside its outputs folder")


def run_dir(outputs: Path, name: str) -> Path:
    """outputs/<name>, if it is a run: the only paths the studio reads (no '..', no nested paths); KeyError if it is
    not one, Outside if it (or a file in it) links outside `outputs`."""
    path = outputs / name
    if "/" in name or "\\" in name or name.startswith(".") or not is_run(path):
        raise KeyError(name)
    check_inside(outputs, path)
    return path


def metric_rows(path: Path, since: int = 0) -> list[dict]:
    """metrics.jsonl's rows from row `since` on; a line still being written (no newline yet) is left for later."""
    file = path / "metrics.jsonl"
    if not file.is_file():
        return []
    lines = file.read_text(encoding="utf-8").split("\n")[:-1]  # the part after the last newline is unfinished
    return [json.loads(line) for line in lines[since:] if line.strip()]


def _optional_json(file: Path):
    try:
        return read_json(file) if file.is_file() else None
    except json.JSONDecodeError:  # written atomically, so damaged, not half-written: show the run without it
        return None


def samples(path: Path) -> list[dict]:
    file = path / "samples.jsonl"
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def model_name(recipe: dict) -> str:
    model = recipe["model"]
    return model if isinstance(model, str) else "scratch (built from the recipe)"


def best_score(rows: list[dict], summary: dict | None) -> float | None:
    """The best test-case score: of the evaluations during training and the one after it (not the starting model's,
    the row at step 0 that preference and GRPO runs record before training: a run that fell would show its start)."""
    scores = [r["case_score"] for r in rows if "case_score" in r and r.get("step", 1) > 0]
    if summary and summary.get("test_cases"):
        scores.append(summary["test_cases"]["score"])
    return max(scores, default=None)


def run_entry(path: Path) -> dict:
    """One line of the runs list."""
    status = _optional_json(path / "status.json") or {}
    recipe = _optional_json(path / "recipe.json") or {}
    backend = _optional_json(path / "backend.json") or {}
    summary = _optional_json(path / "summary.json")
    rows = metric_rows(path)
    steps = [r["step"] for r in rows if "loss" in r]
    return {
        "name": path.name,
        "status": status.get("status", "unknown"),
        "updated": status.get("updated"),
        "backend": backend.get("backend"),
        "model": model_name(recipe) if recipe else None,
        "method": recipe.get("method", "sft"),
        "steps": summary["train"]["steps"] if summary else (steps[-1] if steps else 0),
        "max_steps": recipe.get("max_steps"),
        "best_score": best_score(rows, summary),
        "mtime": (path / "status.json").stat().st_mtime,
    }


def list_runs(outputs: Path) -> list[dict]:
    """Every run under `outputs`, the most recently updated first (not those that link outside it)."""
    runs = []
    for path in outputs.iterdir():
        try:
            if is_run(path):
                check_inside(outputs, path)
                runs.append(run_entry(path))
        except Outside:
            continue
    return sorted(runs, key=lambda r: -r["mtime"])


def end_report(path: Path) -> str | None:
    """The end report as `quickft run` printed it (report.txt, written with summary.json; None before the end)."""
    file = path / "report.txt"
    return file.read_text(encoding="utf-8") if file.is_file() else None


def run_detail(path: Path) -> dict:
    """Everything the run's page shows except the curves' rows (those are polled: metric_rows)."""
    recipe = read_json(path / "recipe.json")
    summary = _optional_json(path / "summary.json")
    cases = samples(path)
    entry = run_entry(path)
    final = (summary or {}).get("test_cases")
    return {
        **entry,
        "recipe": recipe,
        "settings": settings_view(recipe),
        "backend_info": _optional_json(path / "backend.json"),
        "status_info": _optional_json(path / "status.json"),
        "target": (recipe.get("eval") or {}).get("target"),
        "final_score": {"step": summary["train"]["steps"], "score": final["score"]} if final else None,
        "progress": progress(path) if entry["status"] == "running" else None,
        "report": end_report(path),
        "samples": cases,
        "plots": sorted(p.name for p in path.glob("*.png")),
    }


# ---------------------------------------------------------------------------------------------- a running run

RECENT_S = 60.0
"""The ETA's window: the pace (seconds per step) over the training rows of the last minute of this session."""
STABLE_AFTER = (2, 5.0)
"""The ETA says "estimating" until its window spans this many logging windows and seconds after the session's first
logged step (whose time holds the warm-up: compilation, the first allocations)."""


def _local_time(stamp: str | None) -> float | None:
    """status.json's local timestamps ("2026-12-06T04:25:44") as seconds since the epoch."""
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp else None
    except ValueError:
        return None


def progress(path: Path, now: float | None = None) -> dict:
    """Where a running run is: its step of the planned steps (max_steps, else about epochs x steps per epoch), the
    time it has trained (metrics.jsonl's elapsed_s, every session's, plus the time since its last row), and the time
    left at its recent pace (RECENT_S), or "estimating" while that pace rests on too little (STABLE_AFTER). Before
    the first logged step: the time since the run started (or resumed), setting up."""
    now = time.time() if now is None else now
    recipe = _optional_json(path / "recipe.json") or {}
    status = _optional_json(path / "status.json") or {}
    rows = [r for r in metric_rows(path) if "loss" in r]
    max_steps = recipe.get("max_steps") or 0
    if not rows:
        began = _local_time(status.get("updated") if status.get("resumed_from") else status.get("started"))
        return {
            "phase": "setting up",
            "step": 0,
            "planned": max_steps if max_steps > 0 else None,
            "planned_exact": max_steps > 0,
            "fraction": 0.0,
            "elapsed_s": max(0.0, now - began) if began else None,
            "eta_s": None,
            "estimating": True,
            "pace_s": None,
        }
    last = rows[-1]
    since_last = max(0.0, now - (path / "metrics.jsonl").stat().st_mtime)
    if max_steps > 0:
        planned, exact = max_steps, True
    elif last.get("epoch"):  # epochs: the steps per epoch so far, times the epochs asked for
        planned, exact = max(last["step"], round(recipe.get("epochs", 1.0) * last["step"] / last["epoch"])), False
    else:
        planned, exact = None, False
    session = [r for r in rows if r.get("session_start_step") == last.get("session_start_step")]
    recent = [r for r in session[:-1] if last["elapsed_s"] - r["elapsed_s"] <= RECENT_S] or session[-2:-1]
    pace = None
    if recent and last["step"] > recent[0]["step"]:
        pace = (last["elapsed_s"] - recent[0]["elapsed_s"]) / (last["step"] - recent[0]["step"])
    windows, measured = len(session) - 1, last["elapsed_s"] - session[0]["elapsed_s"]
    estimating = pace is None or windows < STABLE_AFTER[0] or measured < STABLE_AFTER[1]
    eta = None
    if not estimating and planned is not None:
        eta = max(0.0, (planned - last["step"]) * pace - since_last)
    return {
        "phase": "training",
        "step": last["step"],
        "planned": planned,
        "planned_exact": exact,
        "fraction": min(1.0, last["step"] / planned) if planned else None,
        "elapsed_s": last["elapsed_s"] + since_last,
        "eta_s": eta,
        "estimating": estimating,
        "pace_s": pace,
    }


# ---------------------------------------------------------------------------------------------- settings


def _lookup(recipe: dict, key: str):
    value = recipe
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def settings_view(recipe: dict) -> dict:
    """recipe.json's settings, each beside the Recipe dataclass's default (what a recipe file that leaves it out
    gets) and whether it differs; the run's own method's section only. `model` and `data.path` have no default."""
    defaults = recipe_to_dict(Recipe(model="", data=Data(path="")))
    required = {"model", "data.path"}
    method = recipe.get("method", "sft")
    rows, hidden = [], []
    for key in field_paths():
        section = key.split(".")[0]
        if section in METHOD_SECTIONS and section != method:
            if section not in hidden:
                hidden.append(section)
            continue
        value, default = _lookup(recipe, key), None if key in required else _lookup(defaults, key)
        rows.append(
            {
                "key": key,
                "value": value,
                "default": default,
                "required": key in required,
                "differs": key in required or value != default,
            }
        )
    return {"rows": rows, "hidden_sections": hidden, "method": method}


def compare_runs(paths: list[Path]) -> dict:
    """The recipe settings that differ (compare.settings_that_differ, as `quickft compare` shows them) and, when
    every run has finished, compare's whole table (figures and ratios to the first run)."""
    if len(paths) < 2:
        raise UserError("compare needs at least two runs")
    recipes = [read_json(p / "recipe.json") for p in paths]
    differ = settings_that_differ(recipes)
    table, why_not = None, None
    try:
        table = compare([str(p) for p in paths])
    except UserError as e:  # a run still training, or one that failed: its settings still compare
        why_not = e.message
    return {
        "runs": [p.name for p in paths],
        "settings": {key: [json.loads(json.dumps(v, default=str)) for v in values] for key, values in differ.items()},
        "table": table,
        "table_missing": why_not,
    }


def check_data_paths(recipe, roots: list[Path]) -> None:
    """Outside unless each data file the recipe names (data.path, data.test_path, eval.path) lies in one of `roots`
    (the studio's working directory, where relative paths are read from, and the outputs folder): recipe.json is a
    file in the outputs folder, and whoever wrote it must not make the studio show /etc/passwd."""
    for key, value in (
        ("data.path", recipe.data.path),
        ("data.test_path", recipe.data.test_path),
        ("eval.path", recipe.eval.path),
    ):
        if value and not any(inside(root, Path(value)) for root in roots):
            raise Outside(
                f"{key} {value!r} is outside {' and '.join(str(r) for r in roots)}: the studio reads no data there",
                hint="start the studio from the directory the run was started in (relative data paths are read from "
                "there), or run `quickft data RECIPE --show N` yourself",
            )


PREVIEW_S = 300
"""How long the masking preview's child may take (it loads the tokenizer and reads the data) before the request fails."""
_previewing = threading.Lock()


def masking_preview(path: Path, roots: list[Path], n: int = 3) -> dict:
    """`quickft data --show N` for the run's recipe (recipe.json; relative data paths are read from the studio's
    working directory, as `quickft data` reads them, and must lie in one of `roots`): counts, token lengths, and each
    example's pieces, trained or masked. Made by a child process (studio/masking.py), one at a time: another
    request meanwhile is refused as Busy (503)."""
    check_data_paths(recipe_from_dict(read_json(path / "recipe.json")), roots)
    if not _previewing.acquire(blocking=False):
        raise Busy("a masking preview is being made", hint="ask again when it is done")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quickft.studio.masking", str(path), str(n)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=PREVIEW_S,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"the masking preview took over {PREVIEW_S} s", hint=f"run `quickft data {path}/recipe.json` yourself"
        ) from None
    finally:
        _previewing.release()
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        out = json.loads(lines[-1])  # its one line is the last: a library may have printed before it
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise UserError(
            f"the masking preview failed: {tail[0]}", hint=f"run `quickft data {path}/recipe.json` to see why"
        ) from None
    if "error" in out:
        raise UserError(out["error"], hint=out.get("hint"))
    return out
