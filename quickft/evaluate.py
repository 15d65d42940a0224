"""`quickft eval RUN [--cases FILE]`: score a finished run on test cases, through the same code as training.

Without --cases it re-answers the run's own test cases (the prompts saved in samples.jsonl).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quickft.chat import load_session
from quickft.data import read_examples
from quickft.encode import make_cases
from quickft.errors import UserError
from quickft.generation import score_cases


def evaluate(run_dir: str, cases_path: str | None = None, reporter=None) -> dict:
    from quickft.report import Reporter

    reporter = reporter or Reporter(quiet=True)
    with reporter.phase("loading the model"):
        session = load_session(run_dir)
    recipe = session.recipe
    if cases_path:
        data = replace(recipe.data, path=cases_path, format="auto")  # the cases file may be in any format
        cases = make_cases(read_examples(cases_path, data), recipe.data, {}, session.tokenizer)
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
    with reporter.phase(f"answering {len(cases)} test cases"):
        scored = score_cases(
            session.model, session.tokenizer, cases, how=recipe.eval.match, max_new_tokens=recipe.max_new_tokens
        )
    correct = sum(s["correct"] for s in scored)
    return {
        "run": str(run_dir),
        "cases": cases_path or "the run's own test cases",
        "match": recipe.eval.match,
        "n": len(scored),
        "correct": correct,
        "score": correct / len(scored),
        "answers": scored,
    }


def main(run_dir: str, *, cases_path: str | None = None, as_json: bool = False, show: int = 5) -> dict:
    from quickft.report import Reporter

    # what it is doing, while it does it: on stderr, so --json keeps stdout to the JSON
    result = evaluate(run_dir, cases_path, reporter=Reporter(Console(stderr=True)))
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return result
    console = Console()
    console.print(
        f"[bold]{result['score']:.1%}[/bold] of {result['n']} test cases correct ({result['match']} match) — {result['cases']}",
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
