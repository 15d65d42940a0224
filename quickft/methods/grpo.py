"""method="grpo": group relative policy optimization, TRL's GRPOTrainer. For each prompt the model writes
`num_generations` answers, the recipe's rewards score them, and each answer is pushed up or down by how much better
it scored than its group. Its data: quickft.data.tasks; its rewards: quickft.rewards; its trainer: grpo_trainer.py."""

from __future__ import annotations

from quickft.data.encode import Prepared, prompt_ids
from quickft.data.split import Split, split_tasks
from quickft.data.tasks import completion_length, prepare_tasks, read_tasks
from quickft.methods.common import reference_text, window_text
from quickft.metrics import duration
from quickft.recipe import Recipe, reward_name
from quickft.rewards import check_signature, guarded

TRAINER = "TRL's GRPOTrainer"
TOKENS_COUNTED = (
    "the sequences trained, each prompt once per generated answer plus the answer (padding not counted); a step's "
    "time includes generating the answers"
)
"""What a bench's tokens/s counts: the tokens each step's forward and backward passes trained."""
METRICS = ("reward", "frac_reward_zero_std", "completions/", "kl", "clip_ratio/", "entropy")
"""The prefixes of the figures TRL's GRPOTrainer logs that go into metrics.jsonl as they are: each reward's mean and
spread, the share of groups whose answers all scored the same, completion lengths, KL, clipping, entropy."""
SCORES_THE_START = True
"""A GRPO run starts from a model that already answers: its test cases are scored before the first step."""
KEYS = (
    "step",
    "window_steps",
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/clipped_ratio",
    "kl",
    "clip_ratio/region_mean",
)
"""The figures the end report takes from the first and last logged windows (with each reward's own)."""


def split(recipe: Recipe) -> Split:
    return split_tasks(recipe, read_tasks)


def rows(recipe: Recipe, items: list, tokenizer) -> Prepared:
    """Prompts (with their columns) as GRPOTrainer samples them; each reward checked, before the run directory
    exists, against the columns the data gives it (a reward asking for one the data lacks is exit 2)."""
    columns = sorted({k for t in items for k in t.columns})
    for fn in recipe.grpo.rewards:
        check_signature(fn, ["answer", "where", "prompt_tokens", *columns])
    return prepare_tasks(items, tokenizer, recipe)


def shown_rows(recipe: Recipe, prepared: Prepared, tokenizer) -> list[dict]:
    """Each prompt as the model reads it; its answers are generated in training."""
    chat = recipe.data.format == "chat"
    shown = []
    for row in prepared.rows:
        ids = prompt_ids(row["prompt"], tokenizer, chat)
        shown.append({"input_ids": ids, "completion_mask": [0] * len(ids)})
    return shown


def trainer(recipe: Recipe, model, tokenizer, dataset, eval_dataset, common: dict, counter, settings: dict):
    """TRL's GRPOTrainer (the counting subclass) with the recipe's rewards, each guarded so a reward that fails
    names itself and the example (quickft.rewards)."""
    from trl import GRPOConfig

    from quickft.methods.grpo_trainer import CountingGRPOTrainer

    g = recipe.grpo
    common = {k: v for k, v in common.items() if k not in ("max_length", "dataset_num_proc")}  # not GRPO's
    args = GRPOConfig(
        **common,
        num_generations=g.num_generations,
        max_completion_length=completion_length(recipe),
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        reward_weights=g.reward_weights,
        mask_truncated_completions=g.mask_truncated_completions,
        **settings,
    )
    kwargs = {
        "reward_funcs": [guarded(fn) for fn in g.rewards],  # each checked against the data's columns in rows()
        "train_dataset": dataset,
        "counter": counter,
        "chat": recipe.data.format == "chat",
    }
    return CountingGRPOTrainer, args, kwargs


def notes(recipe: Recipe, trainer) -> list[str]:
    """The header's lines on the answers generated, the reward and the reference model (read from the trainer)."""
    args = trainer.args
    weights = args.reward_weights or [1.0] * len(trainer.reward_func_names)
    rewards = " + ".join(
        reward_name(f) if w == 1.0 else f"{w:g} × {reward_name(f)}"
        for f, w in zip(recipe.grpo.rewards, weights, strict=True)
    )
    lines = [
        f"GRPO: {args.num_generations} answers per prompt (temperature {args.temperature:g}, up to "
        f"{args.max_completion_length} tokens), loss {args.loss_type}, clip {args.epsilon:g}"
        + ("; an answer cut at the limit adds nothing to the loss" if args.mask_truncated_completions else ""),
        f"GRPO's reward: {rewards}",
    ]
    if args.beta == 0:
        return lines + ["GRPO's KL coefficient beta is 0: no reference model (no KL term), nothing kept in memory"]
    return lines + reference_text(trainer, f"GRPO's KL term (beta {args.beta:g}) against a reference model: ")


def sequences_per_row(recipe: Recipe) -> int:
    """Sequences trained per training row, for the plan's steps per epoch (GRPO: a prompt is num_generations answers;
    packing makes fewer rows than examples, which the trainer's own dataset length already says)."""
    return recipe.grpo.num_generations


def probe_sequences(recipe: Recipe) -> int:
    """Sequences in one micro-batch's forward pass, for the CPU precision probe's batch (cpu_speed.probe_batch): one
    answer each."""
    return recipe.micro_batch_size


def answer_room(recipe: Recipe) -> int:
    """Tokens each training row needs beyond its own length (GRPO: the answer it generates)."""
    return completion_length(recipe)


def trained_rows(method: str) -> str:
    """What `quickft data` calls the rows trained."""
    return "prompts (the answers trained on are generated in training: no token of the data is in the loss)"


def tokens_row(report: dict) -> tuple[str, str] | None:
    """`quickft data`'s tokens row, where the method's differs from the usual one (None: the usual one)."""
    t = report["tokens"]
    return (
        "tokens",
        f"{t['total']:,} prompt tokens; the loss is on the answers generated in training (up to "
        f"{report['answer_room']} tokens each), counted in the run",
    )


def shown_label(method: str, i: int) -> str:
    """The heading of the i-th row `quickft data --show` prints."""
    return f"[bold]prompt {i}[/bold] ([dim]as the model reads it[/dim]):"


def data_text(n_rows: int, documents: int, recipe: Recipe) -> str:
    """The header's data row: what the training rows are."""
    return f"{n_rows:,} prompts ({recipe.grpo.num_generations} answers generated for each in training)"


def held(method: str) -> str:
    return "prompts"


def samples(method: str) -> str:
    return "answers (prompt and generated answer: the tokens trained)"


def batch_text(recipe: Recipe, effective: int) -> str:
    """The header's batch row adds what an effective batch of answers is made of."""
    n = recipe.grpo.num_generations
    return f" ({effective // n} prompts × {n} answers)"


def line_text(row: dict, sep: str = " ") -> str:
    """A GRPO row's figures: the reward (and each function's mean, when there are several), how many groups taught
    nothing (every answer scored the same), the answers' mean length and share cut at max_completion_length, and KL
    and clipping where TRL logged them; then where the window's step time went."""
    if "reward" not in row:
        return ""
    return rewards_text(row, sep) + " | " + generation_text(row, sep)


def rewards_text(row: dict, sep: str = " ") -> str:
    each = [(k.split("/")[1], v) for k, v in row.items() if k.startswith("rewards/") and k.endswith("/mean")]
    parts = [
        f"reward {row['reward']:.3f} ± {row['reward_std']:.3f}"
        + (" (" + ", ".join(f"{name} {v:.3f}" for name, v in each) + ")" if len(each) > 1 else ""),
        f"no spread {row['frac_reward_zero_std']:.0%} of groups",
        f"answers {row['completions/mean_length']:.1f} tokens ({row['completions/clipped_ratio']:.0%} cut)",
    ]
    if row.get("kl") is not None:
        parts.append(f"kl {row['kl']:.4f}")
    if row.get("clip_ratio/region_mean") is not None:
        parts.append(f"clipped {row['clip_ratio/region_mean']:.1%}")
    return sep.join(parts)


def generation_text(row: dict, sep: str = " ") -> str:
    """Where a GRPO window's step time went: generating answers, scoring them, the rest (the forward and backward
    passes)."""
    return (
        f"generating {row['generation_share']:.0%} of step time ({row['generated_tokens_per_s']:,.0f} tokens/s){sep}"
        f"rewards {row['reward_share']:.1%}"
    )


def panel_rows(row: dict) -> list[tuple[str, str]]:
    """The live panel's rewards and generation rows."""
    if "reward" not in row:
        return []
    return [("rewards", rewards_text(row, "   ")), ("generation", generation_text(row, "   "))]


def summary(rows: list[dict], totals: dict, steps_time_s: float, method: str) -> dict:
    """summary.json's "grpo": the rewards (each function's mean and spread, the total's) and the answers at the first
    and last logged step (TRL's averages since its previous log); the generated tokens and the time spent generating
    and scoring, as shares of this session's time inside the steps."""
    logged = [r for r in rows if "reward" in r]
    if not logged:
        return {"grpo": None}
    keys = [k for k in (*KEYS, *(k for k in logged[-1] if k.startswith("rewards/"))) if k in logged[-1]]
    generation_s, reward_s = totals.get("generation_s", 0.0), totals.get("reward_s", 0.0)
    generated = totals.get("generated_tokens", 0)
    return {
        "grpo": {
            "first": {k: logged[0].get(k) for k in keys},
            "last": {k: logged[-1].get(k) for k in keys},
            "generated_tokens": logged[-1].get("generated_tokens", generated),
            "session_generated_tokens": generated,
            "generation_s": generation_s,
            "reward_s": reward_s,
            "generation_share": generation_s / steps_time_s if steps_time_s else 0.0,
            "reward_share": reward_s / steps_time_s if steps_time_s else 0.0,
            "generated_tokens_per_s": generated / generation_s if generation_s else 0.0,
        }
    }


def loss_row(loss: dict) -> tuple[str, str] | None:
    """GRPO's loss is the policy objective: around 0 by construction, not progress."""
    return (
        "loss",
        f"GRPO's objective, {loss['initial']:+.4f} → {loss['final']:+.4f}: around 0 by construction "
        "(advantages are centred per group); progress is the reward and the test cases",
    )


def report_rows(s: dict, this: str) -> list[tuple[str, str]]:
    """The end report's rewards and generation rows."""
    g = s.get("grpo")
    if not g:
        return []
    first, last = g["first"], g["last"]
    return [
        (
            "rewards",
            f"{window_text(last)}: {rewards_text(last)}; {window_text(first)}: reward {first['reward']:.3f}, "
            f"no spread in {first['frac_reward_zero_std']:.0%} of groups (TRL's means over each logging window)",
        ),
        (
            "generation",
            f"{g['generated_tokens']:,} tokens generated ({g['generated_tokens_per_s']:,.0f} tokens/s while "
            f"generating); generating {duration(g['generation_s'])} = {g['generation_share']:.0%} of {this}"
            f"training steps' time, rewards {g['reward_s']:.1f} s = {g['reward_share']:.1%}; tokens/s above "
            "counts the tokens trained (prompts and answers)",
        ),
    ]


def plots(save, rows: list[dict]) -> None:
    """rewards.png: the reward (mean ± spread over the answers) and each reward function's mean, per step;
    groups.png: the share of groups whose answers all scored the same (nothing to learn), and of answers cut at
    max_completion_length."""
    rows = [r for r in rows if "reward" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    names = [k for k in rows[-1] if k.startswith("rewards/") and k.endswith("/mean")]

    def rewards(ax):
        mean = [r["reward"] for r in rows]
        spread = [r["reward_std"] for r in rows]
        ax.plot(steps, mean, linewidth=2, label="reward (weighted sum)")
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, spread, strict=True)],
            [m + s for m, s in zip(mean, spread, strict=True)],
            alpha=0.2,
            label="± its spread over the answers",
        )
        if len(names) > 1:
            for key in names:
                ax.plot(steps, [r.get(key) for r in rows], alpha=0.7, label=key.split("/")[1])

    def groups(ax):
        ax.plot(steps, [100 * r["frac_reward_zero_std"] for r in rows], label="groups with no spread (no signal)")
        ax.plot(steps, [100 * r["completions/clipped_ratio"] for r in rows], label="answers cut at the length limit")
        ax.set_ylim(0, 100)

    save("rewards.png", "GRPO rewards", "reward", rewards)
    save("groups.png", "GRPO groups and answers", "%", groups)
