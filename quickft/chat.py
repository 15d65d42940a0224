"""`quickft chat RUN_DIR`: talk to what a run produced.

Layers, each testable alone: generation.stream (tokens) -> `turn` (one answer, printed as it streams) ->
`loop` (the interactive prompt and its /commands) -> `main` (load the run, pick the mode).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quickft.data.chat_template import opens_thinking, split_thinking
from quickft.errors import UserError
from quickft.generation import generate, stream
from quickft.recipe import recipe_from_dict
from quickft.rundir import open_run
from quickft.session import Session, build_prompt, chat_style, framing, load_session

HELP = (
    "commands: /help (this, and how the model expects messages), /reset (forget the conversation), "
    "/params [temperature=0.7 top_p=0.9 max_new_tokens=128], /exit"
)


# ---------------------------------------------------------------------------------------------- loading


# ---------------------------------------------------------------------------------------------- one turn


def turn(session: Session, user_text: str, *, out=None, err: Console | None = None) -> str:
    """Answer one message, streaming it to `out` as it is generated; timing goes to `err`, dimmed.

    Ctrl-C stops this answer (what was generated so far is kept) without ending the chat.
    """
    out = out or sys.stdout
    err = err or Console(stderr=True, soft_wrap=True)
    prompt = build_prompt(session, user_text)
    stats: dict = {}
    pieces = []
    view = ThinkingView(out, thinking=opens_thinking(prompt), show=session.show_thinking)
    stopped = False
    try:
        for piece in stream(session.model, session.tokenizer, prompt, stats=stats, **_gen_kwargs(session)):
            pieces.append(piece)
            view.write(piece)
    except KeyboardInterrupt:
        stopped = True
        err.print("[dim](stopped)[/dim]")
    view.flush()
    out.write("\n")
    out.flush()
    reasoning, answer = split_thinking("".join(pieces), opens_thinking(prompt))
    if session.style == "chat":  # the history as the template expects it: the reasoning apart from the answer
        reply = {"role": "assistant", "content": answer} | ({"reasoning": reasoning} if reasoning else {})
        session.history += [{"role": "user", "content": user_text}, reply]
    err.print(f"[dim]{escape(timing_text(stats))}[/dim]", highlight=False)
    if not answer and not stopped:  # stopped before any text: the user ended it, not the model
        err.print(f"[yellow]empty answer[/yellow]: {escape(empty_hint(session))}", highlight=False)
    return answer


class ThinkingView:
    """Writes an answer as it streams, the reasoning between <think> and </think> dim (ANSI, on a terminal) or
    left out. A tag split across pieces is held back until it is whole."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self, out, *, thinking: bool = False, show: bool = True):
        self.out, self.thinking, self.show = out, thinking, show
        self.styled = hasattr(out, "isatty") and out.isatty()
        self.pending = ""

    def write(self, piece: str) -> None:
        self.pending += piece
        while self.pending:
            tag = self.CLOSE if self.thinking else self.OPEN
            at = self.pending.find(tag)
            if at >= 0:
                self._emit(self.pending[:at])
                self.pending = self.pending[at + len(tag) :]
                self.thinking = not self.thinking
                if not self.thinking:
                    self.pending = self.pending.lstrip("\n")
                    if self.show:
                        self.out.write("\n")
                continue
            keep = max((k for k in range(1, len(tag)) if self.pending.endswith(tag[:k])), default=0)
            self._emit(self.pending[: len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep :]
            break

    def flush(self) -> None:
        self._emit(self.pending)
        self.pending = ""

    def _emit(self, text: str) -> None:
        if not text or (self.thinking and not self.show):
            return
        self.out.write(f"\x1b[2m{text}\x1b[0m" if self.thinking and self.styled else text)
        self.out.flush()


def empty_hint(session: Session) -> str:
    if session.example:
        return f"the model ended at once; it was trained on messages like {session.example!r}: try that wording"
    return "the model ended at once; try wording like its training data's, or /params temperature=0.7"


def timing_text(stats: dict) -> str:
    tokens, total = stats.get("tokens", 0), stats.get("total_s", 0.0)
    first = stats.get("first_token_s")
    rate = tokens / total if total else 0.0
    first_text = f"{first * 1000:.0f} ms" if first is not None else "-"
    invalid = stats.get("invalid_utf8", 0)
    left_out = f" · {invalid} piece(s) of invalid UTF-8 left out" if invalid else ""
    return f"time to first token {first_text} · {tokens} tokens in {total:.4f} s · {rate:.1f} tokens/s{left_out}"


def answer_both(session: Session, user_text: str) -> tuple[str, str]:
    """(fine-tuned answer, base answer) to the same prompt, greedy unless the params say otherwise."""
    prompt = build_prompt(session, user_text)
    kwargs = _gen_kwargs(session)
    tuned = generate(session.model, session.tokenizer, [prompt], **kwargs)[0]
    with _as_base(session):
        base = generate(session.model, session.tokenizer, [prompt], **kwargs)[0]
    return tuned, base


def _as_base(session: Session):
    if session.base is None:
        raise UserError("--compare-base: this run's base model is not available")
    return session.base(session)


def _gen_kwargs(session: Session) -> dict:
    p = session.params
    return {"max_new_tokens": p["max_new_tokens"], "temperature": p["temperature"], "top_p": p["top_p"]}


# ---------------------------------------------------------------------------------------------- the loop


def loop(session: Session, *, read=input, out=None, err: Console | None = None, compare_base: bool = False) -> None:
    """The interactive chat: read a message, answer it, handle /reset, /params, /exit; Ctrl-D exits."""
    err = err or Console(stderr=True, soft_wrap=True)
    out = out or sys.stdout
    err.print(f"[dim]{escape(session.description)}\n{escape(framing(session))}\n{escape(HELP)}[/dim]", highlight=False)
    while True:
        try:
            text = read(">>> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            err.print("\n[dim](Ctrl-D or /exit to quit)[/dim]")
            continue
        text = text.strip()
        if not text:
            continue
        if text.startswith("/"):
            if command(session, text, err):
                return
            continue
        if compare_base:
            print_comparison(user_text=text, answers=answer_both(session, text), out=out, base_label=session.base_label)
        else:
            turn(session, text, out=out, err=err)


def command(session: Session, text: str, err: Console) -> bool:
    """Run a /command; True means exit."""
    name, *args = text.split()
    if name in ("/exit", "/quit"):
        return True
    if name == "/help":
        err.print(f"{escape(framing(session))}\n{escape(HELP)}", highlight=False)
    elif name == "/reset":
        session.history.clear()
        err.print("[dim]conversation cleared[/dim]")
    elif name == "/params":
        for arg in args:
            key, _, value = arg.partition("=")
            if key not in session.params:
                err.print(f"unknown parameter {key!r}; parameters: {', '.join(session.params)}")
                continue
            try:
                session.params[key] = int(value) if key == "max_new_tokens" else float(value)
            except ValueError:
                err.print(f"{key}={value!r}: expected a number")
        err.print(" ".join(f"{k}={v}" for k, v in session.params.items()), highlight=False)
    else:
        err.print(f"unknown command {escape(name)}; {escape(HELP)}", highlight=False)
    return False


def print_comparison(*, user_text: str, answers: tuple[str, str], out, base_label: str = "base model") -> None:
    tuned, base = answers
    if getattr(out, "isatty", lambda: False)():
        table = Table(title=escape(user_text), show_lines=True)
        table.add_column(escape(base_label))
        table.add_column("fine-tuned")
        table.add_row(escape(base), escape(tuned))
        Console(file=out).print(table)
    else:
        out.write(f"base: {base}\nfine-tuned: {tuned}\n")
        out.flush()


# ---------------------------------------------------------------------------------------------- main


def main(
    run_dir: str,
    *,
    prompt: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    compare_base: bool = False,
    system: str | None = None,
    hide_thinking: bool = False,
) -> None:
    err = Console(stderr=True, soft_wrap=True)
    recipe = recipe_from_dict(open_run(run_dir)["recipe"])  # a run that is not there fails before the model loads
    if system is not None:
        if chat_style(recipe) != "chat":
            raise UserError(
                f"--system: {run_dir} was trained on {recipe.data.format} data, which has no system prompt",
                hint="--system is for runs trained on chat data (messages or ShareGPT conversations)",
            )
    if sys.stderr.isatty():
        with err.status("loading the model ..."):
            session = load_session(run_dir, with_base=compare_base)
    else:
        err.print("[dim]loading the model ...[/dim]", highlight=False)
        session = load_session(run_dir, with_base=compare_base)
    session.system = system
    session.show_thinking = not hide_thinking
    for key, value in (("temperature", temperature), ("top_p", top_p), ("max_new_tokens", max_new_tokens)):
        if value is not None:
            session.params[key] = value
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    if prompt is not None or not sys.stdin.isatty():
        err.print(f"[dim]{escape(session.description)}\n{escape(framing(session))}[/dim]", highlight=False)
        if compare_base:
            err.print(f"[dim]base: the {escape(session.base_label)}[/dim]", highlight=False)
        prompts = [prompt] if prompt is not None else [line.strip() for line in sys.stdin if line.strip()]
        for text in prompts:
            if compare_base:
                print_comparison(
                    user_text=text, answers=answer_both(session, text), out=sys.stdout, base_label=session.base_label
                )
            else:
                turn(session, text, err=err)
        return
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    loop(session, err=err, compare_base=compare_base)
