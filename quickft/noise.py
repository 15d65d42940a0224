"""Library messages known to be harmless, kept off the screen: they read as errors to a user and say nothing about
the run. Each is matched by its logger and its text, so a new or different message from the same library still
comes through. Under --debug they come through too, each marked as one quickft would hide and why.

Imports nothing heavy: `quickft.cli` installs the filters before any verb imports a library.
"""

from __future__ import annotations

import logging
import os
import re

KNOWN = [
    (
        "bitsandbytes.backends.cpu.ops",
        r"Failed to load CPU gemm_4bit_forward from kernels-community",
        "bitsandbytes tries the optional `kernels` package's faster CPU 4-bit matmul and, without it, uses its own",
    ),
    (
        "torch.utils._pytree",
        r"is an Enum subclass and is now natively supported",
        "torchao registering its enums with torch at import time",
    ),
]
"""(logger, message pattern, why it is harmless) for messages any verb may meet at import time."""

TIED_MISSING = re.compile(r"There were missing keys in the checkpoint model loaded: \[(.*)\]")
"""transformers' warning when it resumes a full fine-tune whose checkpoint lacks some weights."""

_debug = False


def show_hidden(debug: bool) -> None:
    """--debug: let the known messages through, marked (the CLI calls this before each verb)."""
    global _debug
    _debug = debug


def debugging() -> bool:
    """Whether known-harmless output is shown (--debug, or QUICKFT_DEBUG in the environment)."""
    return _debug or bool(os.environ.get("QUICKFT_DEBUG"))


class Harmless(logging.Filter):
    """Drops the records of one logger whose message matches `pattern` and `accept` (or marks them, under --debug)."""

    def __init__(self, pattern: str, why: str, accept=None):
        super().__init__()
        self.pattern, self.why, self.accept = re.compile(pattern), why, accept

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        found = self.pattern.search(text)
        if not found or (self.accept is not None and not self.accept(found)):
            return True
        if not debugging():
            return False
        record.msg, record.args = f"{text} [quickft: known harmless, hidden without --debug: {self.why}]", ()
        return True


def hide_known_harmless() -> None:
    """Install the filters for KNOWN on their loggers (once; cheap: no library is imported)."""
    for name, pattern, why in KNOWN:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Harmless) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(Harmless(pattern, why))


def tied_weights_not_missing(model) -> Harmless | None:
    """On resuming a full fine-tune: transformers saves a tied weight once (the output head that is the input
    embedding), then warns that the checkpoint lacks the copy it did not save: "There were missing keys in the
    checkpoint model loaded: ['lm_head.weight']". Loading the embedding loads it. Hide that warning when every key it
    names is such a copy of this model, and only then. Returns the filter installed (None when the model ties
    nothing); remove it with `logging.getLogger("transformers.trainer").removeFilter`."""
    tied = tied_copies(model)
    if not tied:
        return None

    def all_tied(found: re.Match) -> bool:
        keys = {k.strip().strip("'\"") for k in found[1].split(",") if k.strip()}
        return bool(keys) and keys <= tied

    why = f"{', '.join(sorted(tied))}: tied to another weight, saved once and loaded with it"
    harmless = Harmless(TIED_MISSING.pattern, why, accept=all_tied)
    logging.getLogger("transformers.trainer").addFilter(harmless)
    return harmless


def tied_copies(model) -> set[str]:
    """The names of the parameters that are the same tensor as one named before them (a tied output head)."""
    seen: set[int] = set()
    copies = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            copies.add(name)
        seen.add(id(parameter))
    return copies
