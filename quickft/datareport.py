"""`quickft data RECIPE.py`: what the recipe will feed the model, without training.

Counts (read, dropped with reasons and locations, kept), token lengths and truncation, a max_seq_length
recommendation, the padding share under each batching mode, and a masking preview (what the loss sees).
"""

from __future__ import annotations

import itertools
import json
import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from quickft import methods
from quickft.backends import private_by_default, quiet_libraries
from quickft.data.batching import padding_share
from quickft.data.encode import history_costs
from quickft.models import model_max_length
from quickft.pipeline import materialize, model_reference, read_data, training_rows, training_tokenizer
from quickft.recipe import Scratch, load_recipe
from quickft.report import grouped_reasons

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def build_report(recipe_path: str, overrides: list[str]) -> tuple[dict, object, object]:
    """The data report, through the same stages as `quickft run` (quickft.pipeline: the split, the rows)."""
    return recipe_report(load_recipe(recipe_path, overrides), recipe_path)


def recipe_report(recipe, recipe_path: str) -> tuple[dict, object, object]:
    """build_report for a Recipe already loaded (the studio's, from a run's recipe.json): (report, rows, tokenizer)."""
    recipe, split = read_data(recipe)
    model_ref, local = model_reference(recipe)
    private_by_default(local)
    quiet_libraries()
    from transformers import AutoTokenizer

    model_path = materialize(recipe, model_ref, split.train)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=local)
    training_tokenizer(tokenizer, recipe, split.train)
    room = methods.room(recipe.method)
    prepared = training_rows(recipe, split.train, tokenizer)
    rows = room.shown_rows(recipe, prepared, tokenizer)  # what the model reads (a pair: two sequences)
    lengths = sorted(prepared.lengths)
    msl = recipe.max_seq_length
    limit = _model_limit(recipe, model_ref, local)
    p99 = percentile(lengths, 99)
    answer = room.answer_room(recipe)  # GRPO: each prompt needs room for its generated answer
    recommended = 8 * math.ceil((p99 + answer) / 8)
    if limit and recommended > limit:
        recommended = limit
    report = {
        "recipe": recipe_path,
        "data": recipe.data.path,
        "format": recipe.data.format,
        "counts": split.counts(prepared),
        "dropped": [{"where": w, "reason": r} for w, r in split.dropped + prepared.dropped],
        "truncated": [{"where": w, "how": h} for w, h in prepared.truncated],
        "notes": split.notes + prepared.notes,
        "history": prepared.history,
        "history_costs": history_costs(split.train, tokenizer, recipe) if prepared.history else {},
        "tokens": {
            "min": lengths[0],
            **{f"p{p}": percentile(lengths, p) for p in PERCENTILES},
            "max": lengths[-1],
            "total": prepared.tokens,
            "trained": prepared.trained_tokens,
        },
        "method": recipe.method,
        "lengths_of": "documents" if prepared.documents else room.held(recipe.method),
        "max_seq_length": msl,
        "model_max_length": limit,
        "longer_than_max_seq_length": sum(n + answer > msl for n in lengths),
        "answer_room": answer,
        "recommended_max_seq_length": recommended,
        "recommended_cuts": sum(n + answer > recommended for n in lengths),
        "padding_share": {
            mode: padding_share([len(r["input_ids"]) for r in rows], recipe.micro_batch_size, mode, recipe.seed)
            for mode in ("padded", "grouped", "packed")
        },
        "batching": recipe.data.batching,
    }
    return report, rows, tokenizer


def _model_limit(recipe, model_ref, local: bool) -> int | None:
    """The longest sequence the model takes (its position embeddings, a GGUF's context length), when it can be read
    without a download."""
    if isinstance(recipe.model, Scratch):
        return recipe.model.max_position_embeddings
    if not local:
        return None

    return model_max_length(model_ref)


SHOW_TOKENS = 160  # --show prints at most this many tokens of an example


def preview(rows: list[dict], tokenizer, n: int) -> list[Text]:
    """Each example's tokens: trained ones bold green, masked (prompt) ones dim; special tokens shown by name.
    Runs of tokens are decoded together, so characters split across tokens (Chinese, emoji) come out whole;
    long examples are cut after SHOW_TOKENS tokens, saying how many more there are."""
    texts = []
    for pieces, more in preview_pieces(rows, tokenizer, n):
        text = Text()
        for piece, trained in pieces:
            text.append(piece, style="bold green" if trained else "dim")
        if more:
            text.append(f" … ({more} more tokens)", style="italic")
        texts.append(text)
    return texts


def preview_pieces(rows: list[dict], tokenizer, n: int) -> list[tuple[list[tuple[str, bool]], int]]:
    """What `preview` draws, as data: for each example, its (text, trained?) pieces and how many tokens were left
    out after SHOW_TOKENS (the studio draws the same pieces as HTML)."""
    examples = []
    special = set(tokenizer.all_special_ids)
    for row in rows[:n]:
        ids, mask = row["input_ids"][:SHOW_TOKENS], row["completion_mask"][:SHOW_TOKENS]
        pieces = []
        for (trained, is_special), group in itertools.groupby(
            zip(ids, mask, strict=True), key=lambda t: (t[1], t[0] in special)
        ):
            group_ids = [token for token, _ in group]
            if is_special:
                piece = "".join(f"[{tokenizer.convert_ids_to_tokens(t)}]" for t in group_ids)
            else:
                piece = tokenizer.decode(group_ids).replace("\n", "⏎\n")
            pieces.append((piece, bool(trained)))
        examples.append((pieces, max(0, len(row["input_ids"]) - SHOW_TOKENS)))
    return examples


def main(recipe_path: str, overrides: list[str], *, show: int = 3, as_json: bool = False) -> dict:
    report, rows, tokenizer = build_report(recipe_path, overrides)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return report
    console = Console()
    if not console.is_terminal:  # pipes and logs: wide enough that the table's sentences do not wrap
        console = Console(width=160)
    c, t = report["counts"], report["tokens"]
    table = Table(title=f"quickft data {recipe_path}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("file", f"{report['data']} ({report['format']})")
    unit = "documents" if c["documents"] else report["lengths_of"]
    table.add_row(
        unit,
        f"{c['read']} read, {c['dropped_reading']} dropped reading, {c['held_out_test_cases']} held out as test "
        f"cases, {c['held_out_eval']} held out for eval loss, {c['kept_for_training']} kept for training",
    )
    if c["test_cases_from_file"] or c["eval_from_file"]:
        table.add_row(
            "other files",
            f"{c['test_cases_from_file']} test cases from data.test_path, {c['eval_from_file']} eval examples from "
            "eval.path",
        )
    room = methods.room(report["method"])
    trained = f"{c['rows']} training " + room.trained_rows(report["method"])
    if c["documents"]:
        trained += f": the documents cut into windows of ≤ {report['max_seq_length']} tokens"
    else:
        trained += f" ({c['dropped_while_tokenizing']} dropped, {c['truncated']} cut to fit max_seq_length)"
    table.add_row("trained", trained)
    for line in grouped_reasons((d["where"], d["reason"]) for d in report["dropped"]):
        table.add_row("", f"dropped {line}")
    for line in grouped_reasons((d["where"], d["how"]) for d in report["truncated"]):
        table.add_row("", f"cut {line}")
    for note in report["notes"]:
        table.add_row("note", note)
    for how, cost in report["history_costs"].items():
        chosen = " (used)" if set(report["history"]) == {how} else ""
        table.add_row(
            f"history={how}",
            f"{cost['rows']:,} rows, {cost['tokens']:,} tokens, {cost['trained_tokens']:,} trained{chosen}",
        )
    table.add_row(
        f"token lengths ({report['lengths_of']})",
        f"min {t['min']} · p50 {t['p50']} · p90 {t['p90']} · p95 {t['p95']} · p99 {t['p99']} · max {t['max']}",
    )
    limit = report["model_max_length"]
    advice = f"{report['recommended_max_seq_length']} would leave {report['recommended_cuts']} longer" + (
        f" (the model takes at most {limit})" if limit else ""
    )
    answer = f" with a {report['answer_room']}-token answer" if report["answer_room"] else ""
    table.add_row(
        "max_seq_length",
        f"{report['max_seq_length']}: {report['longer_than_max_seq_length']} {report['lengths_of']} are longer{answer}; "
        + advice,
    )
    if own := room.tokens_row(report):  # GRPO's: its loss is on answers generated in training, not on the data
        table.add_row(*own)
        console.print(table)
        for i, text in enumerate(preview(rows, tokenizer, show), 1):
            console.print(room.shown_label(report["method"], i))
            console.print(text)
        return report
    table.add_row(
        "tokens", f"{t['total']:,} in training, {t['trained']:,} of them in the loss (the rest is masked context)"
    )
    share = report["padding_share"]
    table.add_row(
        "padding",
        f"{100 * share['padded']:.1f}% of batch tokens with random batches (data.batching=padded), "
        f"{100 * share['grouped']:.1f}% grouped by length (data.batching=grouped), 0% packed (data.batching=packed); "
        f"this recipe uses {report['batching']}",
    )
    console.print(table)
    for i, text in enumerate(preview(rows, tokenizer, show), 1):
        console.print(room.shown_label(report["method"], i))
        console.print(text)
    return report
