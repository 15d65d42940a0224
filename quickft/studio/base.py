"""The studio's base-vs-fine-tuned worker: `python -m quickft.studio.base RUN_DIR`, a child of the studio.

It loads the run as `quickft chat RUN --compare-base` does (chat.load_session with the base), says "ready" on
stderr, then answers one JSON line per question on stdin, {"messages": [...]}, with one JSON line on stdout:
{"tuned": ..., "base": ..., "base_label": ...} for the last user message (chat.answer_both: one prompt, no history,
as --compare-base), or {"error": ...}.
"""

from __future__ import annotations

import json
import sys

from quickft.errors import UserError


def main(run_dir: str) -> int:
    from quickft.chat import answer_both, load_session

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
            tuned, base = answer_both(session, text)
            answer = {"tuned": tuned, "base": base, "base_label": session.base_label, "prompt": text}
        except UserError as e:
            answer = {"error": str(e)}
        except (ValueError, KeyError, TypeError, StopIteration):
            answer = {"error": 'send {"messages": [...]} with a user message'}
        print(json.dumps(answer, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
