"""The preference methods: the model learns from judged answers. method="dpo" (TRL's DPOTrainer), "orpo"
(ORPOTrainer), "simpo" (CPOTrainer with SimPO's loss) train on pairs, a chosen and a rejected answer to one prompt;
"kto" (KTOTrainer) on single answers labelled desirable or not. Their data: quickft.data.pairs; their trainers:
preference_trainer.py."""

from __future__ import annotations

from quickft.data.encode import Prepared
from quickft.data.pairs import prepare_judged, prepare_pairs, read_judged, read_pairs, sequences
from quickft.data.split import Split, split_judged
from quickft.methods.common import reference_text, window_text
from quickft.recipe import PAIRED_METHODS, Recipe

TRAINERS = {
    "dpo": "TRL's DPOTrainer",
    "orpo": "TRL's ORPOTrainer, experimental",
    "simpo": "TRL's CPOTrainer with SimPO's loss, experimental",
    "kto": "TRL's KTOTrainer",
}
PAIRS_COUNTED = "each pair's chosen and rejected sequences, prompts included (padding not counted)"
TOKENS_COUNTED = {
    "dpo": PAIRS_COUNTED,
    "orpo": PAIRS_COUNTED,
    "simpo": PAIRS_COUNTED,
    "kto": "each labelled answer's sequence, prompt included (the KL estimate's mismatched pairs not counted)",
}
"""What a bench's tokens/s counts: the tokens each step's forward and backward passes trained."""
METRICS = ("rewards/", "logps/", "kl", "nll_loss", "log_odds_")
"""The prefixes of the figures TRL's preference trainers log that go into metrics.jsonl as they are: rewards of
chosen and rejected, margin, accuracy, log-probs, KTO's KL estimate, ORPO's and CPO-SimPO's SFT loss, ORPO's log
odds."""
SCORES_THE_START = True
"""A preference run starts from a model that already answers: its test cases are scored before the first step, so
the report can say whether the run raised the score or lowered it."""
KEYS = (
    "step",
    "window_steps",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "kl",
    "nll_loss",
    "log_odds_chosen",
    "log_odds_ratio",
)
"""The figures the end report takes from a preference run's first and last logged windows."""


def split(recipe: Recipe) -> Split:
    if recipe.method == "kto":  # a held-out desirable answer is a test case
        return split_judged(
            recipe, read_judged, what="labelled answers", expected=lambda j: j.answer, may=lambda j: j.good
        )
    return split_judged(recipe, read_pairs, what="preference pairs", expected=lambda p: p.chosen)


def rows(recipe: Recipe, items: list, tokenizer) -> Prepared:
    """Pairs (DPO, ORPO, SimPO) or labelled answers (KTO) into tokens, as SFT's encoder makes them."""
    if recipe.method == "kto":
        return prepare_judged(items, tokenizer, recipe)
    return prepare_pairs(items, tokenizer, recipe)


def shown_rows(recipe: Recipe, prepared: Prepared, tokenizer) -> list[dict]:
    """What the model reads: each prompt + chosen answer, then prompt + rejected (or the one labelled answer)."""
    return sequences(prepared.rows)


def trainer(recipe: Recipe, model, tokenizer, dataset, eval_dataset, common: dict, counter, settings: dict):
    from quickft.methods import preference_trainer as t

    if recipe.method == "dpo":
        from trl import DPOConfig

        d = recipe.dpo
        args = DPOConfig(
            **common,
            beta=d.beta,
            loss_type=[d.loss_type] + (["sft"] if d.sft_weight else []),
            loss_weights=[1.0, d.sft_weight] if d.sft_weight else None,
            label_smoothing=d.label_smoothing,
            padding_free=False,
            **settings,
        )
        trainer_class = t.CountingDPOTrainer
    elif recipe.method == "orpo":
        args, trainer_class = t.ORPOConfig(**common, beta=recipe.orpo.beta, **settings), t.CountingORPOTrainer
    elif recipe.method == "simpo":
        s = recipe.simpo
        args = t.CPOConfig(
            **common,
            loss_type="simpo",
            beta=s.beta,
            simpo_gamma=s.gamma_beta_ratio * s.beta,
            cpo_alpha=s.sft_weight,
            **settings,
        )
        trainer_class = t.CountingCPOTrainer
    else:
        from trl import KTOConfig

        k = recipe.kto
        args = KTOConfig(
            **common | {"train_sampling_strategy": "sequential"},  # prepare_judged shuffled the rows once
            beta=k.beta,
            loss_type=k.loss_type,
            desirable_weight=k.desirable_weight,
            undesirable_weight=k.undesirable_weight,
            **settings,
        )
        trainer_class = t.CountingKTOTrainer
    return trainer_class, args, {"train_dataset": dataset, "eval_dataset": eval_dataset, "counter": counter}


def notes(recipe: Recipe, trainer) -> list[str]:
    """The header's lines on the method's loss and its reference model (read from the trainer as it runs)."""
    args = trainer.args
    if recipe.method == "orpo":
        return [
            f"ORPO: the chosen sequence's SFT loss (its prompt included, as TRL's ORPO computes it) + {args.beta:g} "
            "× the odds-ratio term (chosen answer over rejected); no reference model, nothing more in memory than SFT"
        ]
    if recipe.method == "simpo":
        sft = f" + {args.cpo_alpha:g} × the chosen answer's SFT loss" if args.cpo_alpha else ""
        return [
            f"SimPO: length-normalized rewards (beta {args.beta:g}), target margin {args.simpo_gamma:g}{sft}; "
            "no reference model, nothing more in memory than SFT"
        ]
    if recipe.method == "kto":
        kl = (
            "KL estimated from mismatched prompt/answer pairs of each micro-batch, whose order is fixed (shuffled "
            "once, with the recipe's seed)"
            if args.loss_type == "kto"
            else "no KL estimate"
        )
        beta = (
            f"KTO (beta {args.beta:g}, loss {args.loss_type}, weights {args.desirable_weight:g} desirable / "
            f"{args.undesirable_weight:g} undesirable; {kl}) against a reference model: "
        )
        return reference_text(trainer, beta)
    weights = args.loss_weights or [1.0] * len(args.loss_type)
    names = ["the chosen answer's SFT loss" if t == "sft" else t for t in args.loss_type]
    loss = " + ".join(n if w == 1.0 else f"{w:g} × {n}" for n, w in zip(names, weights, strict=True))
    return reference_text(trainer, f"DPO (beta {args.beta:g}, loss {loss}) against a reference model: ")


def sequences_per_row(recipe: Recipe) -> int:
    """Sequences trained per training row, for the plan's steps per epoch (GRPO: a prompt is num_generations answers;
    packing makes fewer rows than examples, which the trainer's own dataset length already says)."""
    return 1


def probe_sequences(recipe: Recipe) -> int:
    """Sequences in one micro-batch's forward pass, for the CPU precision probe's batch (cpu_speed.probe_batch): a
    pair is two (chosen and rejected), a KTO answer one."""
    return recipe.micro_batch_size * (2 if recipe.method in PAIRED_METHODS else 1)


def answer_room(recipe: Recipe) -> int:
    """Tokens each training row needs beyond its own length (GRPO: the answer it generates)."""
    return 0


def trained_rows(method: str) -> str:
    """What `quickft data` calls the rows trained."""
    return (
        "pairs (a chosen and a rejected sequence each)"
        if method in PAIRED_METHODS
        else "labelled answers (one sequence each)"
    )


def tokens_row(report: dict) -> tuple[str, str] | None:
    """`quickft data`'s tokens row, where the method's differs from the usual one (None: the usual one)."""
    return None


def shown_label(method: str, i: int) -> str:
    """The heading of the i-th row `quickft data --show` prints."""
    what = f"pair {(i + 1) // 2}, {'chosen' if i % 2 else 'rejected'}" if method in PAIRED_METHODS else f"example {i}"
    return f"[bold]{what}[/bold] ([bold green]trained[/bold green], [dim]masked[/dim]):"


def data_text(n_rows: int, documents: int, recipe: Recipe) -> str:
    """The header's data row: what the training rows are."""
    if recipe.method in PAIRED_METHODS:
        return f"{n_rows:,} preference pairs (the model reads each prompt twice: before chosen, before rejected)"
    return f"{n_rows:,} labelled answers (one sequence each)"


def held(method: str) -> str:
    """What its eval loss is computed on."""
    return "labelled answers" if method == "kto" else "pairs"


def samples(method: str) -> str:
    """What the end report's samples are."""
    return "labelled answers" if method == "kto" else "sequences (each pair's chosen and rejected)"


def batch_text(recipe: Recipe, effective: int) -> str:
    return ""


def line_text(row: dict, sep: str = " ") -> str:
    """A preference row's figures, as its trainer logged them (TRL's means over the logging window's micro-batches):
    how often the chosen answer wins (pairs only), by how much, each side's reward (DPO, KTO: beta times the
    log-probability ratio to the reference model; ORPO, SimPO: beta times the answer's own log-probability, SimPO's
    per token), KTO's KL estimate, ORPO's and CPO-SimPO's SFT loss, and ORPO's log odds ratio (TRL's
    log_odds_chosen: log odds of the chosen answer less the rejected one's, 0 when neither is preferred) and its
    odds-ratio loss (-log σ of it: TRL's log_odds_ratio negated, ln 2 = 0.693 when neither is preferred).

    Before DPO's or KTO's first update the policy is the reference: every reward is exactly 0, and TRL counts each tie
    as the chosen answer losing ("chosen wins 0%"). That window is said to be so, not shown as a measurement. KTO's
    answers are judged one at a time: its margin is averaged over the micro-batches holding both kinds, each reward
    over those holding its kind, so the margin need not be the difference of the two rewards shown."""
    if "rewards/margins" not in row:
        return ""
    paired = "rewards/accuracies" in row  # KTO's answers are judged one at a time: no pair to win
    chosen, rejected = ("chosen", "rejected") if paired else ("desirable", "undesirable")
    if row["rewards/chosen"] == row["rewards/rejected"] == 0.0:
        parts = ["rewards 0: the policy is still the reference model (no preference measured yet)"]
    else:
        parts = [f"chosen wins {row['rewards/accuracies']:.0%}"] if paired else []
        parts.append(f"margin {row['rewards/margins']:+.3f}" + ("" if paired else " (micro-batches with both kinds)"))
        parts.append(f"rewards {row['rewards/chosen']:+.3f} {chosen}, {row['rewards/rejected']:+.3f} {rejected}")
    if not paired and "kl" in row:
        parts.append(f"KL {row['kl']:.3f}")
    if row.get("nll_loss"):  # CPO logs 0 when it adds no SFT loss
        parts.append(f"SFT loss {row['nll_loss']:.4f}")
    if "log_odds_chosen" in row:
        parts.append(f"log odds ratio {row['log_odds_chosen']:+.3f}")
    if "log_odds_ratio" in row:
        parts.append(f"odds-ratio loss {-row['log_odds_ratio']:.4f}")
    return sep.join(parts)


def panel_rows(row: dict) -> list[tuple[str, str]]:
    """The live panel's preference row."""
    return [("preference", line_text(row, "   "))] if "rewards/margins" in row else []


def summary(rows: list[dict], totals: dict, steps_time_s: float, method: str) -> dict:
    """summary.json's "preference": the figures of KEYS its trainer logs in the first and last logging window with
    both answers' rewards (a KTO window may hold only one kind of answer). Each is TRL's mean over the window's
    micro-batches (window_steps steps ending at step), each micro-batch's figure a mean over its pairs (KTO: rewards
    over the micro-batches holding that kind of answer, the margin over those holding both)."""
    logged = [r for r in rows if "rewards/margins" in r]
    if not logged:
        return {"preference": None}
    first, last = ({k: row[k] for k in KEYS if k in row} for row in (logged[0], logged[-1]))
    return {"preference": {"method": method, "first": first, "last": last}}


def loss_row(loss: dict) -> tuple[str, str] | None:
    return None


def report_rows(s: dict, this: str) -> list[tuple[str, str]]:
    """The end report's preference row: the last window's figures, and the first one's."""
    pref = s.get("preference")
    if not pref:
        return []
    first, last = pref["first"], pref["last"]
    if first["rewards/chosen"] == first["rewards/rejected"] == 0.0:  # before the first update (DPO, KTO)
        start = "rewards 0, the policy still the reference model"
    else:
        wins = f"chosen wins {first['rewards/accuracies']:.0%}, " if "rewards/accuracies" in first else ""
        start = f"{wins}margin {first['rewards/margins']:+.3f}"
    earlier = f"; {window_text(first)}: {start}" if first["step"] != last["step"] else ""
    return [
        (
            "preference",
            f"{window_text(last)}: {line_text(last)}{earlier} (TRL's means over each logging window's micro-batches"
            + ("; KTO's margin over those holding both kinds of answer)" if pref["method"] == "kto" else ")"),
        )
    ]


def plots(save, rows: list[dict]) -> None:
    """preference.png: the chosen (desirable) and rejected (undesirable) answers' rewards and their margin, and how
    often the chosen answer wins (pairs), each TRL's mean over a logging window."""
    rows = [r for r in rows if "rewards/margins" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    paired = "rewards/accuracies" in rows[-1]  # KTO judges answers one at a time: no pair to win
    chosen, rejected = ("chosen", "rejected") if paired else ("desirable", "undesirable")

    def rewards(ax):
        ax.plot(steps, [r["rewards/chosen"] for r in rows], label=f"{chosen} answers' reward")
        ax.plot(steps, [r["rewards/rejected"] for r in rows], label=f"{rejected} answers' reward")
        # KTO's margin is TRL's mean over the micro-batches holding both kinds: not the difference of the two curves
        margin = "margin" if paired else "margin (micro-batches with both kinds)"
        ax.plot(steps, [r["rewards/margins"] for r in rows], linewidth=2, label=margin)
        ax.axhline(0, color="gray", linewidth=0.8)
        if paired:
            wins = ax.twinx()
            wins.plot(steps, [100 * r["rewards/accuracies"] for r in rows], color="gray", linestyle="--")
            wins.set_ylabel("chosen wins (%, dashed)")
            wins.set_ylim(0, 100)

    save("preference.png", "preference rewards (mean over each logging window)", "reward", rewards)
