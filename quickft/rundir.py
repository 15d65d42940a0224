"""The run directory: picking a fresh one, writing its files atomically, and reading a finished run back.

Layout of outputs/<run>/:
  recipe.json      the resolved recipe (enough to chat, compare or resume with no flags)
  backend.json     which backend/precision/quantization was used, and why
  status.json      {"status": "running" | "completed" | "failed", ...}
  metrics.jsonl    one JSON object per logging step (and per evaluation)
  metrics.csv      the same rows as CSV
  summary.json     end-of-run numbers
  samples.jsonl    answers to held-out prompts generated after training
  adapter_model.safetensors + adapter_config.json (LoRA)   or   model.safetensors + config.json (full)
  tokenizer files
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from quickft.errors import UserError

RUN_FILES = ("recipe.json", "status.json")


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a reader (or a crash) never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write JSON Lines atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    """The same rows as a CSV file (columns: every key seen, in first-seen order), written atomically."""
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def set_status(run_dir: Path, status: str, **extra) -> None:
    path = run_dir / "status.json"
    data = read_json(path) if path.is_file() else {}
    data.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
    write_json(path, data)


def pick_run_dir(name: str, requested: str | None) -> Path:
    """A directory for a new run that never overwrites an earlier one.

    With no `requested` dir, outputs/<name> or, if taken, outputs/<name>-2, -3, ... A requested dir that already
    holds a run is an error.
    """
    if requested:
        path = Path(requested)
        if path.exists() and any(path.iterdir()):
            raise UserError(
                f"output directory {path} is not empty; quickft never overwrites an earlier run",
                hint="choose another --output-dir, or delete that directory yourself",
            )
        return path
    base = Path("outputs") / name
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_writable(path: Path) -> None:
    """Fail early, before any training, if `path` could not be created and written."""
    parent = Path(path).absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(
            f"cannot write to the output directory {path}: {parent} is not a writable directory",
            hint="choose a writable --output-dir",
        )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoints/checkpoint-N directory, if any."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric rows logged after `last_step` (a resumed run logs those steps again)."""
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    write_jsonl(path, [r for r in rows if r.get("step", 0) <= last_step])


def resumable_run(name: str) -> Path:
    """The newest unfinished run of a recipe under outputs/ (outputs/<name>, <name>-2, ...)."""
    candidates = [p for p in Path("outputs").glob(f"{name}*") if (p / "status.json").is_file()]
    candidates = [p for p in candidates if p.name == name or p.name[len(name) + 1 :].isdigit()]
    unfinished = [p for p in candidates if read_json(p / "status.json").get("status") != "completed"]
    if not unfinished:
        raise UserError(
            f"no unfinished run of {name!r} in outputs/", hint="pass the run directory: --resume outputs/<run>"
        )
    return max(unfinished, key=lambda p: (p / "status.json").stat().st_mtime)


def create_run_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write to the output directory {path}: {e.strerror}", hint="choose a writable --output-dir"
        ) from None


def open_run(run_dir: str | Path, *, need_finished: bool = True) -> dict:
    """Read a run directory (recipe, status, backend, summary). UserError if it is not a usable run."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}", hint="runs are in outputs/; `ls outputs` lists them")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise UserError(
            f"{path} is not a quickft run directory (no {', '.join(missing)})",
            hint="pass a directory created by `quickft run`, e.g. outputs/tiny_math",
        )
    try:
        run = {name: read_json(path / f"{name}.json") for name in ("recipe", "status")}
        for name in ("backend", "summary"):
            f = path / f"{name}.json"
            run[name] = read_json(f) if f.is_file() else None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: a run file is damaged ({e})", hint="the run cannot be used; train it again") from None
    status = run["status"].get("status")
    if need_finished and status != "completed":
        raise UserError(
            f"{path}: the run is {status}, not completed",
            hint="train it to the end with `quickft run`, or pick a completed run",
        )
    run["dir"] = path
    return run
