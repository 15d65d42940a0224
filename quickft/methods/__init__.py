"""Training methods, one room each, answering the same questions under the same names:
  sft.py         supervised fine-tuning (TRL's SFTTrainer)
  preference.py  DPO, ORPO, SimPO and KTO: learning from judged answers
  grpo.py        GRPO: learning from rewards of the model's own answers
and beside each, its TRL subclass (<room>_trainer.py), imported only when a trainer is built: after the backend's
imports, so that Unsloth, when chosen, has patched TRL first. `room` is the one dispatch.

Every room defines the same names (tests/test_layout.py holds them to SFT's): its data (split, rows, shown_rows,
trained_rows, held, answer_room, sequences_per_row, probe_sequences), its trainer (trainer, TRAINER, TOKENS_COUNTED,
SCORES_THE_START), what the header and the end report say (notes, data_text, batch_text, report_rows, loss_row,
summary, samples), and its logged figures (METRICS, line_text, panel_rows, plots).

Adding a method (say TRL's RLOO or BCO) touches three files: its literal and settings in recipe.py (Recipe.method,
its section, recipe_from_dict), a room here (rloo.py beside grpo.py, or a case in preference.py for BCO's labelled
answers, as KTO's), and a line in `room`; data/ too if it reads a shape no room reads yet. The studio's curves
(static/plots.js) draw a new method's own figures only once taught them; its common curves need nothing.
"""

from __future__ import annotations

from quickft.methods import grpo, preference, sft


def room(method: str):
    """The module that holds a method's data, trainer, header lines, figures and plots."""
    match method:
        case "sft":
            return sft
        case "dpo" | "orpo" | "simpo" | "kto":
            return preference
        case "grpo":
            return grpo
    raise ValueError(f"unknown method {method!r}")


ROOMS = (sft, preference, grpo)
METRICS = tuple(dict.fromkeys(prefix for r in ROOMS for prefix in r.METRICS))
"""Every method's logged figures that go into metrics.jsonl as its trainer logs them (the recorder keeps those)."""


def trainer_name(method: str) -> str:
    r = room(method)
    return r.TRAINERS[method] if r is preference else r.TRAINER


def tokens_counted(method: str) -> str:
    counted = room(method).TOKENS_COUNTED
    return counted[method] if isinstance(counted, dict) else counted


def line_text(row: dict) -> str:
    """A logged row's method figures for the plain log line, from whichever method logged them ("" for SFT)."""
    return " | ".join(text for r in ROOMS if (text := r.line_text(row)))


def panel_rows(row: dict) -> list[tuple[str, str]]:
    """The live panel's rows of a logged row's method figures."""
    return [entry for r in ROOMS for entry in r.panel_rows(row)]


def plots(save, rows: list[dict]) -> None:
    """Each method's own plots, drawn where the rows hold its figures."""
    for r in ROOMS:
        r.plots(save, rows)


def split(recipe):
    """The recipe's data split into training items, test cases and eval items, as its method reads data."""
    return room(recipe.method).split(recipe)
