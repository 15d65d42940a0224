"""Which keys of a record hold its prompt and its answer: the pairs published data sets use, told apart by their keys
in this one place, for SFT data, data.test_path, eval.path, `quickft eval --cases` and GRPO prompts.

Pure Python: recipes and `quickft --help` never import torch through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from quickft.errors import UserError


@dataclass(frozen=True)
class Columns:
    """The keys of a record's prompt and answer; `context`, where a set has one, is optional in each record and joins
    the prompt after a blank line (Alpaca's input, Dolly's context)."""

    prompt: str
    answer: str
    context: str | None = None
    known_as: str = ""
    """The data set (or library) that publishes these keys; empty for columns the recipe names."""

    @property
    def shape(self) -> str:
        """A short name: "alpaca", "dolly", else the keys ("query/response")."""
        return self.known_as.lower() if self.context else f"{self.prompt}/{self.answer}"

    def describe(self) -> str:
        """What is read where, in words: "'instruction' (+ 'context') as the prompt, 'response' as the answer (Dolly)"."""
        prompt = repr(self.prompt) + (f" (+ {self.context!r})" if self.context else "")
        known = f" ({self.known_as})" if self.known_as else ""
        return f"{prompt} as the prompt, {self.answer!r} as the answer{known}"

    def settings(self) -> str:
        """The settings that name these columns, as a recipe override (run, data) or an eval setting takes them."""
        return f"data.question_column={self.prompt} data.answer_column={self.answer}"


KNOWN = (
    Columns("instruction", "output", "input", "Alpaca"),
    Columns("instruction", "response", "context", "Dolly"),
    Columns("prompt", "completion", known_as="TRL's prompt/completion"),
    Columns("prompt", "response"),
    Columns("question", "answer", known_as="GSM8K"),
    Columns("question", "response"),
    Columns("query", "response", known_as="MetaMathQA"),
    Columns("problem", "solution", known_as="MATH"),
    Columns("input", "output"),
    Columns("prompt", "answer"),
)
"""The pairs recognised without naming them, in the order a message lists them."""
ALPACA = KNOWN[0]
PROMPT_KEYS = tuple(dict.fromkeys(c.prompt for c in KNOWN))
ANSWER_KEYS = tuple(dict.fromkeys(c.answer for c in KNOWN))


def find_columns(keys: Iterable[str], data, where: str) -> Columns | None:
    """The columns of a record with these keys: the ones data.question_column / data.answer_column name when the
    record has both, else the one known pair it has. A pair inside another one it has does not count (input/output
    inside Alpaca's instruction/input/output). None: no pair fits. Two that fit are a UserError naming both and the
    settings that pick one, unless a column named by itself picks one of them."""
    keys = set(keys)
    question = getattr(data, "question_column", None)
    answer = getattr(data, "answer_column", None)
    if question or answer:
        named = Columns(question or "question", answer or "answer")
        if {named.prompt, named.answer} <= keys:  # a known pair keeps its context: named Alpaca keys are Alpaca
            return next((c for c in KNOWN if (c.prompt, c.answer) == (named.prompt, named.answer)), named)
    fits = [c for c in KNOWN if {c.prompt, c.answer} <= keys]
    fits = [c for c in fits if not any(_used(c, keys) < _used(other, keys) for other in fits)]
    if len(fits) > 1:
        picked = [c for c in fits if c.prompt == (question or c.prompt) and c.answer == (answer or c.answer)]
        fits = picked or fits
    if len(fits) > 1:
        raise UserError(
            f"{where}: {len(fits)} pairs of keys fit these records: " + "; ".join(c.describe() for c in fits),
            hint="pick one: " + ", or ".join(c.settings() for c in fits),
        )
    return fits[0] if fits else None


def _used(columns: Columns, keys: set) -> set:
    return {columns.prompt, columns.answer} | ({columns.context} & keys if columns.context else set())


def prompt_and_answer(record: dict, columns: Columns):
    """(prompt, answer) of a record, as `columns` say. With a context key (Alpaca, Dolly) both are text, stripped,
    the context joined to the prompt after a blank line; otherwise as given: prompt/completion text is often meant to
    join exactly ("The sky is" + " blue."), and TRL's conversational prompt/completion are lists of messages."""
    prompt, answer = record.get(columns.prompt), record.get(columns.answer)
    if not columns.context:
        return prompt, answer
    prompt = str(prompt).strip()
    if str(record.get(columns.context) or "").strip():
        prompt += "\n\n" + str(record[columns.context]).strip()
    return prompt, None if answer is None else str(answer).strip()


def answers_for(prompt: str) -> list[str]:
    """The answer keys published with this prompt key, for a message about a record that has none of them."""
    return [f"{c.answer!r}" + (f" ({c.known_as})" if c.known_as else "") for c in KNOWN if c.prompt == prompt]
