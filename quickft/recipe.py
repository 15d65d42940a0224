"""Recipes: typed dataclasses, loading a recipe file, dotted key=value overrides, validation.

A recipe file is plain Python that defines `recipe = Recipe(...)`. Everything here is pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import runpy
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from quickft.errors import UserError

DataFormat = Literal["auto", "blocks", "alpaca", "chat", "sharegpt", "pairs", "csv", "text"]


@dataclass
class LoRA:
    r: int = 16
    """Rank of the low-rank update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt (e.g. ["q_proj", "v_proj"]), or "all-linear"."""


@dataclass
class Scratch:
    """A new model with random weights built from a config, with a tokenizer trained on the training data.

    Built once and cached (in $QUICKFT_CACHE or ~/.cache/quickft), so a second run does not rebuild it.
    """

    architecture: Literal["llama", "gpt2", "phi"] = "llama"
    """Which transformers architecture to instantiate."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    """Width of the MLP (ignored by gpt2, which uses 4 x hidden_size)."""
    vocab_size: int = 512
    """Size of the byte-level BPE vocabulary trained on the data."""
    max_position_embeddings: int = 512


@dataclass
class Data:
    path: str
    """Training data: a file relative to the current directory, a `datasets` save_to_disk folder or .arrow file, or
    a hub dataset id ("org/name", loaded with datasets.load_dataset; needs the hub)."""
    format: DataFormat = "auto"
    """The shape of the examples: blocks (### with Pregunta:/Respuesta:), alpaca (instruction/input/output),
    chat (OpenAI-style messages, tool turns included), sharegpt (conversations), pairs (a prompt key and an answer key,
    found by their names or named below), text (documents for completion / continued pre-training); csv is pairs read from a CSV.
    auto tells them apart by the file's extension and its records' keys. JSON, JSON Lines, CSV and parquet files all
    hold records, so any record shape can come in any of them."""
    prompt_template: str = "{prompt}\n"
    """How a prompt is shown to the model for prompt/response data; the response follows, then end-of-sequence."""
    chat_template: str | None = None
    """For chat data: "chatml", a Jinja template, or None to use the tokenizer's own."""
    use_chat_template: bool = False
    """Prompt/response data (blocks, Alpaca, pairs, CSV) as one-turn conversations: the prompt as the user's message,
    the response as the assistant's, rendered by the chat template (the tokenizer's, or chat_template) instead of
    prompt_template. For instruct models, which answer best in the format they were tuned on; chat, serve, eval and
    Ollama then talk to the run as to a chat model."""
    history: Literal["auto", "per_turn", "whole"] = "auto"
    """For chat data, how conversations with several assistant turns are trained. Each assistant turn is trained on
    the tokens the model writes for it at inference (its reasoning, content, tool calls and end-of-turn token).
    per_turn: one row per assistant turn, the conversation before it rendered as inference renders it then (exact,
    costs more tokens); whole: the conversation once, as the template renders it whole, training the turns it keeps
    (a turn whose reasoning the template drops from history, as Qwen3's does, is context only); auto: whole where
    the template keeps every turn as the model wrote it, else per_turn. `quickft data` shows each choice's cost."""
    question_column: str | None = None
    """The record key (JSON) or column (CSV, parquet) holding the prompt, for pairs. None: found by the keys published
    sets use (quickft/columns.py: prompt/completion, prompt/response, question/answer, query/response,
    problem/solution, Alpaca's and Dolly's, ...). Named, it is used wherever a record has it."""
    answer_column: str | None = None
    """The record key or column holding the response, for pairs (None: found as question_column says)."""
    text_column: str = "text"
    """The record key or column holding a document, for text records ({"text": ...} JSON Lines)."""
    split: str = "train"
    """For a hub dataset id ("tatsu-lab/alpaca") or a save_to_disk folder of several splits: the split to read."""
    subset: str | None = None
    """For a hub dataset with several configurations: the one to read (openai/gsm8k: "main")."""
    documents: Literal["auto", "paragraphs", "lines", "file"] = "auto"
    """How a plain-text file splits into documents: at blank lines, one per line, or the whole file as one.
    auto: paragraphs if the file has blank lines, else one per line if the lines are long (200+ characters on
    average), else the whole file."""
    stride: int = 0
    """Text is cut into windows of max_seq_length tokens; a stride below that makes windows overlap by
    max_seq_length - stride tokens, which are context only (not trained twice). 0: no overlap."""
    too_long: Literal["truncate_prompt", "drop", "truncate"] = "truncate_prompt"
    """Prompt/response examples longer than max_seq_length: cut the prompt from the left so the whole response fits
    (dropped, with the reason, when even the response does not fit), drop them, or cut the end (the response's
    tail and end-of-sequence are lost). Every example dropped or cut is counted in `quickft data` and the run."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt tokens (default: loss on response tokens only)."""
    test_path: str | None = None
    """Test cases: a prompt/response file whose prompts quickft answers and scores (after training, and every
    eval.every steps)."""
    holdout: int = 3
    """Without test_path: this many training examples are held out as test cases (never more than a tenth of the
    data; none for text documents, which have no question to answer)."""
    max_test_examples: int = 200
    """At most this many test cases are answered."""
    batching: Literal["padded", "grouped", "packed"] = "padded"
    """padded: random batches padded to their longest; grouped: batches of similar lengths (less padding);
    packed: examples concatenated without padding (`quickft data` estimates the saving)."""


@dataclass
class Eval:
    """Evaluation during training, early stopping, and test cases scored by generating answers."""

    every: int = 0
    """Evaluate every this many optimizer steps (0: only after training)."""
    fraction: float = 0.0
    """Hold out this fraction of the training examples to compute eval loss."""
    path: str | None = None
    """Or compute eval loss on this separate file (same format as data)."""
    patience: int = 0
    """Early stopping: stop after this many evaluations without a lower eval loss (0: off). The best checkpoint is
    kept in <run>/best as well as the last one."""
    cases: dict[str, str] = field(default_factory=dict)
    """Extra test cases, prompt -> expected answer (besides data.test_path / data.holdout)."""
    match: Literal["exact", "contains", "number"] = "exact"
    """How an answer is scored: the same text, contains the expected text, or the same first number."""
    target: float | None = None
    """Stop as soon as the test-case score reaches this (0-1), e.g. 0.95. Scored every `every` steps."""


@dataclass
class DPO:
    """Direct preference optimization (method="dpo", TRL's DPOTrainer): the model learns to prefer each pair's chosen
    answer over its rejected one, against a reference (the base: LoRA's starting adapter; a second copy of the model
    for mode="full")."""

    beta: float = 0.1
    """How far the model may move from the reference: higher stays closer (TRL's beta)."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "bco_pair", "apo_zero", "apo_down"] = "sigmoid"
    """TRL's DPO loss: sigmoid is the DPO paper's; ipo, hinge (SLiC), robust, bco_pair, apo_zero / apo_down."""
    label_smoothing: float = 0.0
    """How noisy the preference labels are taken to be (cDPO, with loss_type sigmoid or robust)."""
    sft_weight: float = 0.0
    """Also the chosen answer's own loss (SFT's negative log-likelihood), with this weight: RPO, TRL's loss_type
    "sft" added to the preference loss. DPO alone can lower the chosen answer's likelihood along with the rejected
    one's; this keeps it up."""


@dataclass
class ORPO:
    """Odds ratio preference optimization (method="orpo", TRL's ORPOTrainer): the chosen sequence's SFT loss (TRL
    computes it over the prompt too) plus a term that raises the chosen answer's odds over the rejected one's. No
    reference model: nothing more in memory than SFT."""

    beta: float = 0.1
    """The odds-ratio term's weight against the SFT loss (the paper's lambda, TRL's beta)."""


@dataclass
class SimPO:
    """Simple preference optimization (method="simpo", TRL's CPOTrainer with loss_type="simpo"): the chosen answer's
    average log-probability per token must beat the rejected one's by a margin. No reference model."""

    beta: float = 2.0
    """Scale of the length-normalized rewards (the paper uses 2.0 to 2.5)."""
    gamma_beta_ratio: float = 0.5
    """The target margin, as a share of beta (TRL's simpo_gamma = gamma_beta_ratio x beta)."""
    sft_weight: float = 0.0
    """Also the chosen answer's own SFT loss, with this weight (CPO-SimPO; TRL's cpo_alpha)."""


@dataclass
class KTO:
    """Kahneman-Tversky optimization (method="kto", TRL's KTOTrainer): single answers labelled desirable or not, no
    pairs needed (a preference file's pairs are split into a desirable chosen and an undesirable rejected answer).
    The reference is the base, as for DPO."""

    beta: float = 0.1
    """How far the model may move from the reference: higher stays closer."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the paper's loss, with its KL estimate from mismatched prompt/answer pairs of the same micro-batch (so
    micro_batch_size >= 2, batches in a fixed order); apo_zero_unpaired: APO-zero, no KL estimate."""
    desirable_weight: float = 1.0
    """Weight of the desirable answers' loss (raise it when they are fewer than the undesirable ones)."""
    undesirable_weight: float = 1.0
    """Weight of the undesirable answers' loss."""


@dataclass
class GRPO:
    """Group relative policy optimization (method="grpo", TRL's GRPOTrainer): for each prompt the model writes
    `num_generations` answers, the rewards score them, and each answer is pushed up or down by how much better it
    scored than its group's mean. The data are prompts (with answer columns the rewards may read)."""

    rewards: list[Callable] = field(default_factory=list)
    """Reward functions: quickft.rewards' built-ins (exact_answer, format_match, length_penalty) or any function in
    the recipe, with TRL's signature: f(prompts, completions, **columns) -> one float (or None) per completion. The
    data's columns come as keyword arguments: `answer` (the reference answer) and every other key of the record."""
    reward_weights: list[float] | None = None
    """One weight per reward (default 1 each): an answer's reward is the weighted sum."""
    num_generations: int = 8
    """Answers written per prompt: the group each answer is compared with."""
    max_completion_length: int | None = None
    """Longest answer generated in training, in tokens (default max_new_tokens)."""
    temperature: float = 1.0
    """Sampling temperature of the answers generated in training: they must differ for a group to teach anything."""
    top_p: float = 1.0
    beta: float = 0.0
    """KL coefficient against the reference (the base: LoRA's adapter switched off; a second copy for mode="full").
    0 (TRL's and DAPO's default): no KL term, no reference model."""
    epsilon: float = 0.2
    """How far one update may move an answer's probability ratio (PPO's clip)."""
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    """TRL's GRPO losses: dapo (token-level, TRL's default), grpo (the paper's per-sequence mean), dr_grpo, bnpo."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide each advantage by its group's reward spread (group), the batch's (batch) or not at all (none:
    Dr. GRPO)."""
    mask_truncated_completions: bool = False
    """DAPO's overlong filtering (TRL's option of that name): an answer cut at max_completion_length adds nothing to
    the loss. It is still generated, scored, read by the step's passes and counted in the tokens."""


PAIRED_METHODS = ("dpo", "orpo", "simpo")
"""The methods trained on preference pairs (a chosen and a rejected answer to one prompt)."""
PREFERENCE_METHODS = (*PAIRED_METHODS, "kto")
"""The methods that learn from judged answers (pairs, or KTO's labelled answers)."""


@dataclass
class Recipe:
    model: str | Scratch
    """A hub id (microsoft/phi-2), a local model directory, or Scratch(...) for a new random model."""
    data: Data
    name: str = ""
    """Run name; defaults to the recipe file's name. The run goes to outputs/<name> unless output_dir is set."""
    mode: Literal["lora", "qlora", "full"] = "lora"
    """lora: 16/32-bit base + adapter; qlora: 4-bit base + adapter; full: every weight is trained."""
    method: Literal["sft", "dpo", "orpo", "simpo", "kto", "grpo"] = "sft"
    """sft: learn the answers (supervised fine-tuning); dpo, orpo, simpo: learn to prefer each pair's chosen answer
    over its rejected one (data: preference pairs; settings in `dpo`, `orpo`, `simpo`); kto: learn from answers
    labelled desirable or not (data: labelled answers, or preference pairs; settings in `kto`); grpo: learn from
    rewards of the model's own answers (data: prompts, and answers the rewards compare with; settings in `grpo`)."""
    dpo: DPO = field(default_factory=DPO)
    orpo: ORPO = field(default_factory=ORPO)
    simpo: SimPO = field(default_factory=SimPO)
    kto: KTO = field(default_factory=KTO)
    grpo: GRPO = field(default_factory=GRPO)
    lora: LoRA = field(default_factory=LoRA)
    eval: Eval = field(default_factory=Eval)
    max_seq_length: int = 512
    """Examples longer than this are truncated."""
    micro_batch_size: int = 1
    """Examples per forward pass."""
    gradient_accumulation: int = 1
    """Micro-batches per optimizer step; effective batch = micro_batch_size x gradient_accumulation."""
    learning_rate: float = 2e-4
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming up the learning rate."""
    epochs: float = 1.0
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs when set."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this value (0 turns clipping off)."""
    seed: int = 42
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    logging_steps: int = 1
    """Log metrics every this many optimizer steps."""
    optimizer: str = "adamw_torch"
    """Any transformers optimizer name (adamw_torch, adamw_8bit, paged_adamw_8bit, sgd, ...)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """auto: bf16 on GPUs that support it, fp16 on older GPUs; on a CPU, LoRA in bf16 where the CPU has bf16
    instructions and a probe of the run's own passes finds bf16 faster, else fp32."""
    max_new_tokens: int = 64
    """Longest answer generated for held-out prompts (and the default in `quickft chat`)."""
    temperature: float | None = None
    """Sampling temperature for chat; None: greedy for prompt/response data, 0.7 for chat data."""
    top_p: float = 0.9
    """Nucleus sampling threshold, when sampling."""
    output_dir: str | None = None
    """Run directory; default outputs/<name> (a fresh name is picked if that one is taken)."""
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """With several processes (--gpus, --nnodes, torchrun): ddp keeps a whole copy of the model in each process;
    fsdp shards the weights, gradients and optimizer state across them (PyTorch's FSDP2, through accelerate), for a
    model that does not fit one card. mode lora or full, method sft. With one process both are the same."""
    save_every: int = 0
    """Write a checkpoint every this many steps (0: only when interrupted). `--resume` continues from the last."""
    keep_checkpoints: int = 2
    """Keep only the newest this many checkpoints."""
    auto_batch: bool = False
    """On a CUDA out-of-memory error, halve the micro-batch, double the accumulation (same effective batch) and
    continue from where it was."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust the model's authors."""
    track: Literal["none", "tensorboard", "trackio", "wandb", "mlflow"] = "none"
    """Also send the metrics to an experiment tracker (transformers' report_to), under the names metrics.jsonl uses,
    prefixed train/ (eval/ for evaluations). TensorBoard writes to <run>/tensorboard; trackio keeps a local
    project named after the recipe. metrics.jsonl stays the record."""


# ---------------------------------------------------------------------------------------------- loading


METHOD_SECTIONS = tuple(
    m
    for m in typing.get_args(typing.get_type_hints(Recipe)["method"])
    if m in {f.name for f in dataclasses.fields(Recipe)}
)
"""The recipe's sections that hold one method's settings (dpo, orpo, simpo, kto, grpo): read from Recipe itself, so a
method added there (its literal and its section) is one here too."""


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Run a recipe file, apply `key=value` overrides, validate, and return the Recipe."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}", hint="pass the path of a .py file, e.g. recipes/tiny_math.py")
    try:
        namespace = runpy.run_path(str(path), run_name="__recipe__")
    except SyntaxError as e:
        raise UserError(
            f"{path}:{e.lineno}: syntax error in the recipe: {e.msg}",
            hint="fix the Python syntax on that line",
        ) from e
    except Exception as e:
        line = _line_in(e, path)
        where = f"{path}:{line}" if line else str(path)
        if isinstance(e, UserError):  # quickft's own helpers in a recipe (packaged_gguf) say what to do themselves
            raise UserError(f"{where}: {e.message}", hint=e.hint) from e
        if isinstance(e, TypeError) and "unexpected keyword argument" in str(e):
            cls, _, name = str(e).partition(".__init__() got an unexpected keyword argument ")
            fields = [f.name for f in dataclasses.fields(globals().get(cls, Recipe))]
            raise UserError(
                f"{where}: {cls} has no field {name}",
                hint=f"valid fields of {cls}: {', '.join(fields)}",
            ) from e
        raise UserError(
            f"{where}: the recipe raised {type(e).__name__}: {e}",
            hint="a recipe should only build `recipe = Recipe(...)`",
        ) from e
    recipe = namespace.get("recipe")
    if recipe is None:
        raise UserError(
            f"{path}: no `recipe` defined",
            hint="define `recipe = Recipe(model=..., data=Data(path=...))` at the top level of the file",
        )
    if not isinstance(recipe, Recipe):
        raise UserError(
            f"{path}: `recipe` is a {type(recipe).__name__}, not a quickft Recipe",
            hint="use `from quickft import Recipe` and `recipe = Recipe(...)`",
        )
    if not recipe.name:
        recipe.name = path.stem
    problems = apply_overrides(recipe, overrides)
    problems += validate(recipe)
    if problems:
        raise UserError(
            f"{path}: {len(problems)} problem(s) in the recipe:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return recipe


def _line_in(exc: BaseException, path: Path) -> int | None:
    tb, line = exc.__traceback__, None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# ---------------------------------------------------------------------------------------------- overrides


def field_paths(obj=Recipe, prefix: str = "") -> list[str]:
    """Every settable dotted key of a recipe class, e.g. ["model", "data.path", ..., "lora.r", ...]."""
    keys = []
    for f in dataclasses.fields(obj):
        hint = typing.get_type_hints(obj)[f.name]
        nested = _dataclass_in(hint)
        if nested is not None and nested is not Scratch:
            keys += field_paths(nested, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def apply_overrides(recipe: Recipe, overrides: list[str]) -> list[str]:
    """Set each `dotted.key=value` on the recipe, parsed to the field's type. Returns the problems found."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"override {item!r} is not key=value (e.g. max_steps=20 or lora.r=8)")
            continue
        *parents, name = key.split(".")
        target, cls = recipe, Recipe
        try:
            for p in parents:
                target = getattr(target, p)
                if not dataclasses.is_dataclass(target):
                    raise AttributeError(p)
                cls = type(target)
            if name not in {f.name for f in dataclasses.fields(cls)}:
                raise AttributeError(name)
        except AttributeError:
            close = difflib.get_close_matches(key, field_paths(), n=2, cutoff=0.6)
            guess = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(f"unknown key {key!r}{guess} (valid keys: {', '.join(field_paths())})")
            continue
        hint = typing.get_type_hints(cls)[name]
        try:
            setattr(target, name, parse_value(text.strip(), hint))
        except ValueError as e:
            problems.append(f"{key}={text!r}: {e}")
    return problems


def parse_value(text: str, hint):
    """Parse command-line text to a value of type `hint` (int, float, bool, str, Literal, list[str], X | None)."""
    options = _union_members(hint)
    if type(None) in options and text.lower() in ("none", "null", ""):
        return None
    options = [o for o in options if o is not type(None)]
    errors = []
    for option in options:
        try:
            return _parse_one(text, option)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(" or ".join(errors))


def _parse_one(text: str, hint):
    origin = typing.get_origin(hint)
    if origin is Literal:
        if text not in hint.__args__:
            raise ValueError(f"expected one of {', '.join(map(str, hint.__args__))}")
        return text
    if origin is list:
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"expected a JSON list: {e}") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
        return [_parse_one(str(v), hint.__args__[0]) for v in value]
    if hint is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if hint is str:
        return text
    raise ValueError(f"cannot be set from the command line ({_type_name(hint)})")


# ---------------------------------------------------------------------------------------------- validation


def validate(recipe: Recipe) -> list[str]:
    """Every problem with the recipe's types and values, as messages naming the key."""
    problems = _check_types(recipe, Recipe, "")
    if problems:  # value checks below assume the types are right
        return problems
    r = recipe

    def need(ok: bool, key: str, message: str):
        if not ok:
            problems.append(f"{key}: {message}")

    need(r.learning_rate > 0, "learning_rate", f"must be > 0, got {r.learning_rate}")
    need(r.max_steps is None or r.max_steps > 0, "max_steps", f"must be > 0 (or None to use epochs), got {r.max_steps}")
    need(r.epochs > 0, "epochs", f"must be > 0, got {r.epochs}")
    need(r.micro_batch_size > 0, "micro_batch_size", f"must be > 0, got {r.micro_batch_size}")
    need(r.gradient_accumulation > 0, "gradient_accumulation", f"must be > 0, got {r.gradient_accumulation}")
    need(r.max_seq_length > 0, "max_seq_length", f"must be > 0, got {r.max_seq_length}")
    need(0 <= r.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {r.warmup_ratio}")
    need(r.weight_decay >= 0, "weight_decay", f"must be >= 0, got {r.weight_decay}")
    need(r.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {r.max_grad_norm}")
    need(r.logging_steps > 0, "logging_steps", f"must be > 0, got {r.logging_steps}")
    need(r.save_every >= 0, "save_every", f"must be >= 0, got {r.save_every}")
    need(r.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {r.keep_checkpoints}")
    need(r.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {r.max_new_tokens}")
    need(r.temperature is None or r.temperature >= 0, "temperature", f"must be >= 0, got {r.temperature}")
    need(0 < r.top_p <= 1, "top_p", f"must be in (0, 1], got {r.top_p}")
    need(r.lora.r > 0, "lora.r", f"LoRA rank must be > 0, got {r.lora.r}")
    need(r.lora.alpha > 0, "lora.alpha", f"must be > 0, got {r.lora.alpha}")
    need(0 <= r.lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {r.lora.dropout}")
    need(bool(r.data.path), "data.path", "is empty; give the training data file")
    need(r.data.holdout >= 0, "data.holdout", f"must be >= 0, got {r.data.holdout}")
    need(r.data.stride >= 0, "data.stride", f"must be >= 0, got {r.data.stride}")
    need(
        r.data.stride < r.max_seq_length,
        "data.stride",
        f"must be below max_seq_length ({r.max_seq_length}), got {r.data.stride}",
    )
    need(r.eval.every >= 0, "eval.every", f"must be >= 0, got {r.eval.every}")
    need(0 <= r.eval.fraction < 1, "eval.fraction", f"must be in [0, 1), got {r.eval.fraction}")
    need(r.eval.patience >= 0, "eval.patience", f"must be >= 0, got {r.eval.patience}")
    need(
        not r.eval.patience or (r.eval.every and (r.eval.fraction or r.eval.path)),
        "eval.patience",
        "early stopping needs eval loss during training: set eval.every and eval.fraction (or eval.path)",
    )
    need(r.dpo.beta > 0, "dpo.beta", f"must be > 0, got {r.dpo.beta}")
    need(r.dpo.sft_weight >= 0, "dpo.sft_weight", f"must be >= 0, got {r.dpo.sft_weight}")
    need(0 <= r.dpo.label_smoothing < 0.5, "dpo.label_smoothing", f"must be in [0, 0.5), got {r.dpo.label_smoothing}")
    need(r.orpo.beta > 0, "orpo.beta", f"must be > 0, got {r.orpo.beta}")
    need(r.simpo.beta > 0, "simpo.beta", f"must be > 0, got {r.simpo.beta}")
    need(r.simpo.gamma_beta_ratio >= 0, "simpo.gamma_beta_ratio", f"must be >= 0, got {r.simpo.gamma_beta_ratio}")
    need(r.simpo.sft_weight >= 0, "simpo.sft_weight", f"must be >= 0, got {r.simpo.sft_weight}")
    need(r.kto.beta > 0, "kto.beta", f"must be > 0, got {r.kto.beta}")
    need(
        r.kto.desirable_weight > 0 and r.kto.undesirable_weight > 0,
        "kto.desirable_weight",
        f"both weights must be > 0, got {r.kto.desirable_weight} and {r.kto.undesirable_weight}",
    )
    if r.method in PREFERENCE_METHODS:
        m = repr(r.method)
        need(not r.data.train_on_prompt, "data.train_on_prompt", f"method={m} compares the answers only")
        need(r.data.batching != "packed", "data.batching", f"method={m} answers cannot be packed")
    if r.method == "kto" and r.kto.loss_type == "kto":
        need(
            r.micro_batch_size >= 2,
            "micro_batch_size",
            "method='kto' estimates its KL term from the other answers of the same micro-batch: it needs "
            f"micro_batch_size >= 2, got {r.micro_batch_size} (or kto.loss_type='apo_zero_unpaired', which needs none)",
        )
        need(
            r.data.batching != "grouped",
            "data.batching",
            "method='kto' keeps its micro-batches in a fixed order (its KL pairs are built within them): 'grouped' "
            "would reorder them",
        )
    if r.method == "grpo":
        problems += _grpo_problems(r)
    if r.distributed == "fsdp":
        need(
            r.mode != "qlora",
            "distributed",
            "'fsdp' cannot shard mode='qlora' with this stack: FSDP2 (transformers 5's FSDP) gathers each shard back "
            "as a plain tensor, without bitsandbytes' 4-bit quantization state, so accelerate leaves the 4-bit "
            "weights whole in every process (no memory saved); use mode='lora' with distributed='fsdp', or "
            "mode='qlora' with distributed='ddp'",
        )
        need(
            r.method == "sft",
            "distributed",
            f"'fsdp' is run with method='sft' only; method={r.method!r} (a reference model, generation) has not been "
            "run sharded here: use distributed='ddp'",
        )
    need(r.eval.target is None or 0 < r.eval.target <= 1, "eval.target", f"must be in (0, 1], got {r.eval.target}")
    need(not r.eval.target or r.eval.every > 0, "eval.target", "a target is checked every eval.every steps: set it")
    need("{prompt}" in r.data.prompt_template, "data.prompt_template", "must contain {prompt}")
    need(
        not r.data.use_chat_template or r.method == "sft",
        "data.use_chat_template",
        f"is for SFT's prompt/response data; method={r.method!r} reads chat-shaped data as chats by itself",
    )
    if isinstance(r.model, Scratch):
        s = r.model
        need(s.hidden_size % s.num_heads == 0, "model.hidden_size", "must be divisible by model.num_heads")
        need(s.vocab_size >= 300, "model.vocab_size", "must be >= 300 (256 bytes + special tokens + merges)")
        need(
            r.max_seq_length <= s.max_position_embeddings,
            "max_seq_length",
            f"{r.max_seq_length} is longer than the model supports ({s.max_position_embeddings})",
        )
        need(r.mode == "full", "mode", "a Scratch model has random weights: train it with mode='full'")
        need(
            r.method == "sft",
            "method",
            "a Scratch model has random weights and no answer to prefer: train it with method='sft' first, then "
            f"point a {r.method.upper()} recipe's model at that run",
        )
    else:
        need(bool(r.model.strip()), "model", "is empty; give a hub id or a local model directory")
    return problems


def _grpo_problems(r: Recipe) -> list[str]:
    g, problems = r.grpo, []
    if not g.rewards:
        problems.append(
            "grpo.rewards: method='grpo' needs at least one reward function, e.g. "
            "rewards=[exact_answer()] (from quickft.rewards import exact_answer)"
        )
    names = [getattr(f, "__name__", repr(f)) for f in g.rewards]
    if len(set(names)) < len(names):
        problems.append(
            f"grpo.rewards: two rewards share a name ({', '.join(names)}): each is logged under its own; give each "
            "function its own name (built-ins take name=)"
        )
    if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
        problems.append(
            f"grpo.reward_weights: {len(g.reward_weights)} weight(s) for {len(g.rewards)} reward(s): give one each"
        )
    if g.num_generations < 2:
        problems.append(f"grpo.num_generations: must be >= 2 (a group compares answers), got {g.num_generations}")
    elif (r.micro_batch_size * r.gradient_accumulation) % g.num_generations:
        problems.append(
            f"micro_batch_size: micro_batch_size x gradient_accumulation ({r.micro_batch_size} x "
            f"{r.gradient_accumulation}) answers per step must be a multiple of grpo.num_generations "
            f"({g.num_generations}): a step trains whole groups"
        )
    if g.max_completion_length is not None and not 0 < g.max_completion_length < r.max_seq_length:
        problems.append(
            f"grpo.max_completion_length: must be in (0, max_seq_length={r.max_seq_length}), "
            f"got {g.max_completion_length}"
        )
    if g.temperature <= 0:
        problems.append(f"grpo.temperature: must be > 0 (the group's answers must differ), got {g.temperature}")
    if not 0 < g.top_p <= 1:
        problems.append(f"grpo.top_p: must be in (0, 1], got {g.top_p}")
    if g.beta < 0 or g.epsilon <= 0:
        problems.append(f"grpo.beta must be >= 0 and grpo.epsilon > 0, got {g.beta} and {g.epsilon}")
    if r.eval.fraction or r.eval.path:
        problems.append(
            "eval.fraction: eval loss is not computed for method='grpo': its held-out test cases (data.holdout or "
            "data.test_path) are answered and scored"
        )
    if r.data.batching == "packed":
        problems.append("data.batching: method='grpo' generates answers per prompt: it cannot pack")
    if r.data.train_on_prompt:
        problems.append("data.train_on_prompt: method='grpo' trains on the answers it generates only")
    return problems


def _check_types(obj, cls, prefix: str) -> list[str]:
    problems = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, hint, key = getattr(obj, f.name), hints[f.name], prefix + f.name
        if not _matches(value, hint):
            problems.append(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
        elif dataclasses.is_dataclass(value):
            problems += _check_types(value, type(value), key + ".")
    return problems


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in hint.__args__)
    if origin is Literal:
        return value in hint.__args__
    if origin is list:
        return isinstance(value, list) and all(_matches(v, hint.__args__[0]) for v in value)
    if origin is dict:
        key_type, value_type = hint.__args__
        return isinstance(value, dict) and all(
            _matches(k, key_type) and _matches(v, value_type) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _union_members(hint) -> list:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(hint.__args__)
    return [hint]


def _dataclass_in(hint):
    for h in _union_members(hint):
        if dataclasses.is_dataclass(h):
            return h
    return None


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in hint.__args__)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in hint.__args__)
    if origin is list:
        return f"a list of {_type_name(hint.__args__[0])}"
    if origin is dict:
        return f"a dict of {_type_name(hint.__args__[0])} -> {_type_name(hint.__args__[1])}"
    return {type(None): "None"}.get(hint, getattr(hint, "__name__", str(hint)))


# ---------------------------------------------------------------------------------------------- saving


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain JSON data (saved in every run directory)."""
    d = dataclasses.asdict(recipe)
    d["grpo"]["rewards"] = [reward_name(f) for f in recipe.grpo.rewards]  # functions: saved by name
    if isinstance(recipe.model, Scratch):
        d["model"] = {"scratch": d["model"]}
    return d


def recipe_from_dict(d: dict) -> Recipe:
    """Inverse of recipe_to_dict: rebuild the Recipe saved in a run directory."""
    d = dict(d)
    model = d.pop("model")
    if isinstance(model, dict):
        model = Scratch(**model["scratch"])
    return Recipe(
        model=model,
        data=Data(**d.pop("data")),
        lora=LoRA(**d.pop("lora")),
        eval=Eval(**d.pop("eval", {})),
        dpo=DPO(**d.pop("dpo", {})),
        orpo=ORPO(**d.pop("orpo", {})),
        simpo=SimPO(**d.pop("simpo", {})),
        kto=KTO(**d.pop("kto", {})),
        grpo=GRPO(**d.pop("grpo", {})),  # its rewards are the names of the functions, not code to run
        **d,
    )


def reward_name(f) -> str:
    """How recipe.json and the reports name a reward: a built-in with its settings, else the function's name."""
    return f if isinstance(f, str) else getattr(f, "quickft_spec", None) or getattr(f, "__name__", repr(f))
