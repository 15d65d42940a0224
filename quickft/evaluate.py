"""`quickft eval RUN [--cases FILE]`: score a finished run on test cases, through the same code as training.

Without --cases it re-answers the run's own test cases (the prompts saved in samples.jsonl). A cases file is read
as training reads data.test_path: its keys are recognised (quickft/columns.py), or named by the same data.* settings
a recipe takes (data.question_column=prompt), given after the run directory.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quickft.data import read_data
from quickft.data.encode import make_cases
from quickft.errors import UserError
from quickft.generation import score_cases
from quickft.recipe import Data, Recipe, apply_overrides, recipe_from_dict
from quickft.report import Reporter
from quickft.rundir import open_run
from quickft.session import load_session

READING_KEYS = (
    "data.question_column",
    "data.answer_column",
    "data.format",
    "data.text_column",
    "data.split",
    "data.subset",
)
"""The recipe settings `quickft eval` takes: how to read the --cases file. The rest (prompt template, chat template,
max_new_tokens, eval.match) is the run's own, so the cases are framed and scored as in training."""


def cases_data(data: Data, cases_path: str | None, settings: list[str]) -> Data:
    """The run's data settings, to read a --cases file by: any format (auto), with the reading settings given."""
    if settings and not cases_path:
        raise UserError(
            f"{' '.join(settings)}: these say how to read a --cases file, and none was given",
            hint="add --cases FILE (without it, the run's own test cases are answered)",
        )
    wrong = [s for s in settings if s.partition("=")[0].strip() not in READING_KEYS]
    if wrong:
        raise UserError(
            f"quickft eval takes only the settings that say how to read the --cases file, not {', '.join(wrong)}",
            hint=f"use {', '.join(k + '=' for k in READING_KEYS)} (the rest is the run's own, as trained)",
        )
    holder = Recipe(model="", data=replace(data, path=cases_path or data.path, format="auto"))
    problems = apply_overrides(holder, settings)
    if problems:
        raise UserError("; ".join(problems), hint=f"the settings eval takes: {', '.join(READING_KEYS)}")
    return holder.data


def evaluate(
    run_dir: str, cases_path: str | None = None, reporter=None, settings: list[str] = (), *, base: bool = False
) -> dict:
    """The run's answers to its test cases (or a --cases file's), scored as in training; `base`: the answers of the
    model it started from instead (the adapter switched off; a full fine-tune's base loaded beside it), framed and
    scored the same way: the score before fine-tuning."""
    reporter = reporter or Reporter(quiet=True)
    read = read_as = None
    run = open_run(run_dir)  # a run that is not there fails before the model loads
    if cases_path or settings:  # read before the model loads: a bad file or setting fails at once
        data = cases_data(recipe_from_dict(run["recipe"]).data, cases_path, list(settings))
        read = read_data(cases_path, data, setting="--cases")
        if all(ex.document for ex in read.examples):
            raise UserError(
                f"{cases_path}: no test cases: text documents have no question to answer",
                hint="give prompt/answer records (data.question_column= and data.answer_column= name their keys)",
            )
        read_as = read.note("--cases")
        if read_as:
            reporter.info(read_as)
    with reporter.phase("loading the model" + (" (and its base)" if base else "")):
        session = load_session(run_dir, with_base=base)
    recipe = session.recipe
    if read is not None:
        cases = make_cases(read.examples, recipe.data, {}, session.tokenizer)  # documents make none
    else:
        samples = Path(run_dir) / "samples.jsonl"
        rows = (
            [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()] if samples.is_file() else []
        )
        cases = [(r["prompt"], r["reference"]) for r in rows]
        if not cases:
            raise UserError(
                f"{run_dir}: the run has no test cases", hint="pass --cases FILE (any prompt/response format)"
            )
    who = session.base_label if base else "the fine-tuned model"
    with (
        session.base(session) if base else contextlib.nullcontext(),
        reporter.phase(f"answering {len(cases)} test cases" + (f" with the {who}" if base else "")),
    ):
        scored = score_cases(
            session.model, session.tokenizer, cases, how=recipe.eval.match, max_new_tokens=recipe.max_new_tokens
        )
    correct = sum(s["correct"] for s in scored)
    return {
        "run": str(run_dir),
        "answered_by": who,
        "cases": cases_path or "the run's own test cases",
        "read_as": read_as,
        "match": recipe.eval.match,
        "n": len(scored),
        "correct": correct,
        "score": correct / len(scored),
        "answers": scored,
    }


def main(
    run_dir: str,
    *,
    cases_path: str | None = None,
    settings: list[str] = (),
    as_json: bool = False,
    show: int = 5,
    base: bool = False,
) -> dict:
    # what it is doing, while it does it: on stderr, so --json keeps stdout to the JSON
    result = evaluate(run_dir, cases_path, reporter=Reporter(Console(stderr=True)), settings=settings, base=base)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return result
    console = Console()
    console.print(
        f"[bold]{result['score']:.1%}[/bold] of {result['n']} test cases correct ({result['match']} match) — "
        f"{result['cases']}, answered by {result['answered_by']}",
        highlight=False,
    )
    wrong = [a for a in result["answers"] if not a["correct"]][:show]
    if wrong:
        table = Table(title=f"first {len(wrong)} wrong answers")
        for col in ("prompt", "expected", "answer"):
            table.add_column(col)
        for a in wrong:
            table.add_row(a["prompt"], a["reference"], a["answer"])
        console.print(table)
    return result
