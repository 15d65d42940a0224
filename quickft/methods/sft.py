"""method="sft": supervised fine-tuning, TRL's SFTTrainer; the model learns the answers (the loss on the answer
tokens only, unless data.train_on_prompt). Its trainer: sft_trainer.py."""

from __future__ import annotations

from quickft.data.encode import Prepared, prepare
from quickft.data.split import Split, split_examples
from quickft.recipe import Recipe

TRAINER = "TRL's SFTTrainer"
TOKENS_COUNTED = "each step's real (non-padding) tokens"
"""What a bench's tokens/s counts: the tokens each step's forward and backward passes trained."""
METRICS = ()
"""The prefixes of the figures its trainer logs that go into metrics.jsonl as they are (the rest quickft measures)."""
SCORES_THE_START = False
"""SFT does not score its test cases before the first step (`quickft eval --base` does, on demand): its start is
usually a model that has not seen the task's format, and the score would cost a run's worth of answering."""


def split(recipe: Recipe) -> Split:
    return split_examples(recipe)


def rows(recipe: Recipe, items: list, tokenizer) -> Prepared:
    """Examples into the token sequences trained (quickft.data.encode)."""
    return prepare(items, tokenizer, recipe)


def shown_rows(recipe: Recipe, prepared: Prepared, tokenizer) -> list[dict]:
    """What `quickft data` shows of each row: the sequence and its loss mask."""
    return prepared.rows


def trainer(recipe: Recipe, model, tokenizer, dataset, eval_dataset, common: dict, counter, settings: dict):
    from trl import SFTConfig

    from quickft.methods.sft_trainer import CountingTrainer

    # on a CPU, TRL's default chunked loss (it recomputes the output head per chunk to hold fewer logits, for a
    # GPU's memory) cost SmolLM2's bf16 steps 10-17% (3.24-3.30 s vs 2.73-2.96 s, the same losses)
    cpu_loss = {"loss_type": "nll"} if common["use_cpu"] else {}
    args = SFTConfig(
        **common,
        completion_only_loss=not recipe.data.train_on_prompt,
        packing=recipe.data.batching == "packed",
        **cpu_loss | settings,
    )
    return CountingTrainer, args, {"train_dataset": dataset, "eval_dataset": eval_dataset, "counter": counter}


def notes(recipe: Recipe, trainer) -> list[str]:
    return []


def sequences_per_row(recipe: Recipe) -> int:
    """Sequences trained per training row, for the plan's steps per epoch (GRPO: a prompt is num_generations answers;
    packing makes fewer rows than examples, which the trainer's own dataset length already says)."""
    return 1


def probe_sequences(recipe: Recipe) -> int | None:
    """Sequences in one micro-batch's forward pass, for the CPU precision probe's batch (cpu_speed.probe_batch): None,
    as SFT's trainer collates its own rows and the probe uses them."""
    return None


def answer_room(recipe: Recipe) -> int:
    """Tokens each training row needs beyond its own length (GRPO: the answer it generates)."""
    return 0


def trained_rows(method: str) -> str:
    """What `quickft data` calls the rows trained."""
    return "sequences"


def tokens_row(report: dict) -> tuple[str, str] | None:
    """`quickft data`'s tokens row, where the method's differs from the usual one (None: the usual one)."""
    return None


def shown_label(method: str, i: int) -> str:
    """The heading of the i-th row `quickft data --show` prints."""
    return f"[bold]example {i}[/bold] ([bold green]trained[/bold green], [dim]masked[/dim]):"


def data_text(n_rows: int, documents: int, recipe: Recipe) -> str:
    """The header's data row: what the training rows are."""
    if documents:
        return f"{documents:,} documents in {n_rows:,} windows of ≤ {recipe.max_seq_length} tokens"
    return f"{n_rows:,} examples"


def held(method: str) -> str:
    """What its eval loss is computed on."""
    return "examples"


def samples(method: str) -> str:
    """What the end report's samples are."""
    return "samples"


def batch_text(recipe: Recipe, effective: int) -> str:
    return ""


def line_text(row: dict) -> str:
    """The live line's figures of the method's own (none: loss, speed and memory are every method's)."""
    return ""


def panel_rows(row: dict) -> list[tuple[str, str]]:
    return []


def summary(rows: list[dict], totals: dict, steps_time_s: float, method: str) -> dict:
    return {}


def loss_row(loss: dict) -> tuple[str, str] | None:
    """The end report's loss row, where the method's loss is not the usual one (None: the usual row)."""
    return None


def report_rows(s: dict, this: str) -> list[tuple[str, str]]:
    return []


def plots(save, rows: list[dict]) -> None:
    return None
