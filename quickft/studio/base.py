"""The studio's base-vs-fine-tuned worker: `python -m quickft.studio.base RUN_DIR`, a child of the studio.

It loads the run as `quickft chat RUN --compare-base` does (chat.load_session with the base), says "ready" on
stderr, then answers one JSON line per question on stdin, {"messages": [...]}, with one JSON line on stdout:
{"tuned": ..., "base": ..., "base_label": ..., "invalid_utf8": {"tuned": N, "base": M}} for the last user message
(one prompt, no history, as --compare-base), or {"error": ...}.

Each answer is generated as `quickft chat` generates what it prints (generation.stream): whole characters only, the
bytes that never formed one (an answer cut mid-character, sampled garbage) left out and counted, never shown as
U+FFFD.
"""

from __future__ import annotations

import json
import sys

from quickft.errors import UserError
from quickft.generation import stream
from quickft.session import build_prompt, load_session


def answer(session, text: str) -> tuple[str, int]:
    """One greedy (or the run's sampling) answer to `text`, as chat streams it: (its text, invalid UTF-8 pieces)."""
    p, stats = session.params, {}
    pieces = stream(
        session.model,
        session.tokenizer,
        build_prompt(session, text),
        max_new_tokens=p["max_new_tokens"],
        temperature=p["temperature"],
        top_p=p["top_p"],
        stats=stats,
    )
    return "".join(pieces).strip(), stats.get("invalid_utf8", 0)


def answer_both(session, text: str) -> dict:
    """The fine-tuned model's answer, then the base model's (session.base: the adapter off)."""
    if session.base is None:
        raise UserError("this run's base model is not available")
    tuned, tuned_invalid = answer(session, text)
    with session.base(session):
        base, base_invalid = answer(session, text)
    return {"tuned": tuned, "base": base, "invalid_utf8": {"tuned": tuned_invalid, "base": base_invalid}}


def main(run_dir: str) -> int:
    try:
        session = load_session(run_dir, with_base=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print("ready", file=sys.stderr, flush=True)
    for line in sys.stdin:
        try:
            messages = json.loads(line)["messages"]
            text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            out = answer_both(session, text) | {"base_label": session.base_label, "prompt": text}
        except UserError as e:
            out = {"error": str(e)}
        except (ValueError, KeyError, TypeError, StopIteration):
            out = {"error": 'send {"messages": [...]} with a user message'}
        print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
