"""`quickft data RECIPE.py`: what the recipe will feed the model, without training.

Counts (read, dropped with reasons and locations, kept), token lengths and truncation, a max_seq_length
recommendation, the padding share under each batching mode, and a masking preview (what the loss sees).
"""

from __future__ import annotations

import json
import math
import random

from rich.console import Console
from rich.table import Table
from rich.text import Text

from quickft.data import encode, read_data
from quickft.recipe import load_recipe

PERCENTILES = (50, 90, 95, 99)
MEGABATCH = 50  # transformers' LengthGroupedSampler sorts megabatches of 50 micro-batches by length


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def padding_share(lengths: list[int], batch: int, mode: str, seed: int) -> float:
    """Share of batch tokens that are padding when `lengths` are batched as `mode` would batch them."""
    if mode == "packed":
        return 0.0  # packing concatenates examples: no padding at all
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if mode == "grouped":
        chunks = [order[i : i + MEGABATCH * batch] for i in range(0, len(order), MEGABATCH * batch)]
        order = [i for chunk in chunks for i in sorted(chunk, key=lambda i: -lengths[i])]
    real = padded = 0
    for i in range(0, len(order), batch):
        chunk = [lengths[j] for j in order[i : i + batch]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    return 1 - real / padded if padded else 0.0


def build_report(recipe_path: str, overrides: list[str]) -> tuple[dict, list, object]:
    recipe = load_recipe(recipe_path, overrides)
    from quickft.backends import private_by_default, quiet_libraries
    from quickft.train import materialize, model_reference, read_recipe_data

    _, examples = read_data(recipe.data.path, recipe.data)
    split = read_recipe_data(recipe)
    model_ref, local = model_reference(recipe)
    private_by_default(local)
    quiet_libraries()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(materialize(recipe, model_ref, split.train), local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from quickft.data import CHAT_TEMPLATES

    if recipe.data.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATES.get(recipe.data.chat_template, recipe.data.chat_template)
    encoded = [encode(ex, tokenizer, recipe.data) for ex in split.train]
    lengths = sorted(len(e["input_ids"]) for e in encoded)
    msl = recipe.max_seq_length
    capped = [min(n, msl) for n in (len(e["input_ids"]) for e in encoded)]
    p99 = percentile(lengths, 99)
    recommended = 8 * math.ceil(p99 / 8)
    report = {
        "recipe": recipe_path,
        "data": recipe.data.path,
        "format": recipe.data.format,
        "counts": {
            "read": len(examples),
            "dropped": len(split.dropped),
            "held_out_test_cases": len(split.case_examples) if not recipe.data.test_path else 0,
            "held_out_eval": len(split.eval) if not recipe.eval.path else 0,
            "kept_for_training": len(split.train),
        },
        "dropped": [{"where": w, "reason": r} for w, r in split.dropped],
        "tokens": {
            "min": lengths[0],
            **{f"p{p}": percentile(lengths, p) for p in PERCENTILES},
            "max": lengths[-1],
            "total": sum(capped),
            "trained": sum(sum(e["completion_mask"][:msl]) for e in encoded),
        },
        "max_seq_length": msl,
        "truncated": sum(n > msl for n in lengths),
        "recommended_max_seq_length": recommended,
        "recommended_truncates": sum(n > recommended for n in lengths),
        "padding_share": {
            mode: padding_share(capped, recipe.micro_batch_size, mode, recipe.seed)
            for mode in ("padded", "grouped", "packed")
        },
        "batching": recipe.data.batching,
    }
    return report, encoded, tokenizer


def preview(encoded: list[dict], tokenizer, n: int) -> list[Text]:
    """Each example's tokens: trained ones bold green, masked (prompt) ones dim; special tokens shown by name."""
    texts = []
    for e in encoded[:n]:
        text = Text()
        for token_id, trained in zip(e["input_ids"], e["completion_mask"], strict=True):
            piece = tokenizer.decode([token_id]).replace("\n", "⏎\n")
            if token_id in tokenizer.all_special_ids:
                piece = f"[{tokenizer.convert_ids_to_tokens(token_id)}]"
            text.append(piece, style="bold green" if trained else "dim")
        texts.append(text)
    return texts


def main(recipe_path: str, overrides: list[str], *, show: int = 3, as_json: bool = False) -> dict:
    report, encoded, tokenizer = build_report(recipe_path, overrides)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return report
    console = Console()
    c, t = report["counts"], report["tokens"]
    table = Table(title=f"quickft data {recipe_path}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("file", f"{report['data']} ({report['format']})")
    table.add_row(
        "examples",
        f"{c['read']} read, {c['dropped']} dropped, {c['held_out_test_cases']} held out as test cases, "
        f"{c['held_out_eval']} held out for eval loss, {c['kept_for_training']} kept for training",
    )
    for d in report["dropped"][:5]:
        table.add_row("", f"dropped {d['where']}: {d['reason']}")
    table.add_row(
        "token lengths",
        f"min {t['min']} · p50 {t['p50']} · p90 {t['p90']} · p95 {t['p95']} · p99 {t['p99']} · max {t['max']}",
    )
    table.add_row(
        "max_seq_length",
        f"{report['max_seq_length']}: truncates {report['truncated']} example(s); "
        f"{report['recommended_max_seq_length']} keeps 99% whole (truncates {report['recommended_truncates']})",
    )
    table.add_row(
        "tokens", f"{t['total']:,} in training, {t['trained']:,} of them in the loss (the rest is masked prompt)"
    )
    share = report["padding_share"]
    table.add_row(
        "padding",
        f"{100 * share['padded']:.1f}% of batch tokens with random batches (data.batching=padded), "
        f"{100 * share['grouped']:.1f}% grouped by length (data.batching=grouped), 0% packed (data.batching=packed); "
        f"this recipe uses {report['batching']}",
    )
    console.print(table)
    for i, text in enumerate(preview(encoded, tokenizer, show), 1):
        console.print(f"[bold]example {i}[/bold] ([bold green]trained[/bold green], [dim]masked[/dim]):")
        console.print(text)
    return report
