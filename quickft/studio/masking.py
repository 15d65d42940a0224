"""The studio's masking preview: `python -m quickft.studio.masking RUN_DIR N`, a child of the studio.

`quickft data RUN_DIR/recipe.json --show N` as data: the report's counts and token lengths, and each of the first N
examples' pieces, trained or masked. It prints one JSON line on stdout, {"report": ..., "examples": [...]} or
{"error": ..., "hint": ...}. A child, as chat's serve and base.py are: transformers and the tokenizer load here, and
the studio's own process stays light (studio.runs.masking_preview starts it, one at a time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from quickft.datareport import preview_pieces, recipe_report
from quickft.errors import UserError
from quickft.recipe import recipe_from_dict
from quickft.rundir import read_json


def preview(path: Path, n: int) -> dict:
    recipe = recipe_from_dict(read_json(path / "recipe.json"))
    report, rows, tokenizer = recipe_report(recipe, str(path / "recipe.json"))
    examples = [
        {"pieces": [{"text": text, "trained": trained} for text, trained in pieces], "more_tokens": more}
        for pieces, more in preview_pieces(rows, tokenizer, n)
    ]
    return {"report": report, "examples": examples}


def main(argv: list[str]) -> int:
    try:
        out = preview(Path(argv[0]), int(argv[1]))
    except UserError as e:
        print(json.dumps({"error": e.message, "hint": e.hint}), flush=True)
        return 2
    print(json.dumps(out, ensure_ascii=False, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
