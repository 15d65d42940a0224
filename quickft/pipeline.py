"""The stages of a run that `quickft run`, `quickft bench` and `quickft data` share, each once: reading the
recipe's data (split as its method reads data), finding the base model, building it or de-quantizing it where it
must be, preparing the tokenizer and the rows, building the method's trainer.

Nothing here imports torch, transformers or TRL at module level: they load inside the stages that need them, after
the backend's imports (Unsloth, when chosen, patches TRL first).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from quickft import distributed, methods
from quickft.backends import prepare_tokenizer
from quickft.data.encode import Prepared, training_text
from quickft.data.readers import Example
from quickft.data.split import Split, resolved
from quickft.errors import UserError
from quickft.hardware import Choice
from quickft.metrics import TokenCounter
from quickft.models import GGUF, check_hub_model, dense_checkpoint, locate, model_max_length
from quickft.models.scratch import build_scratch
from quickft.recipe import Recipe, Scratch


def read_data(recipe: Recipe) -> tuple[Recipe, Split]:
    """The recipe with its data format resolved (what recipe.json saves: chat and serve frame prompts by it), and its
    data split into training items, test cases and eval items."""
    split = methods.split(recipe)
    return resolved(recipe, split), split


def model_reference(recipe: Recipe) -> tuple[str | Scratch | GGUF, bool]:
    """(local path, hub id, GGUF or Scratch spec; is it local). Checks what can be checked before loading anything."""
    if isinstance(recipe.model, Scratch):
        return recipe.model, True
    path, local = locate(recipe.model)
    if not local:
        check_hub_model(path)
    elif (limit := model_max_length(path)) and recipe.max_seq_length > limit:
        raise UserError(
            f"max_seq_length: {recipe.max_seq_length} is longer than {recipe.model} supports ({limit})",
            hint=f"set max_seq_length={limit} or less",
        )
    return path, local


def materialize(
    recipe: Recipe, model_ref: str | Scratch | GGUF, train_examples: list[Example], *, dtype: str | None = None
) -> str:
    """The model's path or hub id; a Scratch model is built (or found in the cache) first, a GGUF de-quantized to
    `dtype` (or, with dtype None, its tokenizer only: what `quickft data` needs)."""
    if isinstance(model_ref, GGUF):
        return str(dense_checkpoint(model_ref, dtype).path)
    if not isinstance(model_ref, Scratch):
        return model_ref

    corpus = [training_text(ex, recipe.data) for ex in train_examples]
    return str(build_scratch(model_ref, corpus, seed=recipe.seed))


def training_tokenizer(tokenizer, recipe: Recipe, examples: list[Example]) -> None:
    """The tokenizer as training uses it (pad token, the recipe's chat template), and chat data needs a template."""
    prepare_tokenizer(tokenizer, recipe, training=True)
    chat = any(getattr(ex, "messages", None) is not None or getattr(ex, "chat", False) for ex in examples)
    if chat and not tokenizer.chat_template:
        vocab = tokenizer.get_vocab()
        if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
            hint = 'its tokenizer has ChatML\'s tokens: set data=Data(..., chat_template="chatml") in the recipe'
        else:
            hint = (
                "train from the model's instruct/chat version (its tokenizer has the template), or give "
                "data.chat_template a Jinja template written with this tokenizer's own special tokens"
            )
        raise UserError(
            f"{recipe.data.path}: chat data, but the tokenizer of {recipe.model} has no chat template", hint=hint
        )


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def training_rows(recipe: Recipe, items: list, tokenizer) -> Prepared:
    """The training rows of each method: SFT's sequences, preference pairs, KTO's labelled answers, GRPO's prompts."""
    return methods.room(recipe.method).rows(recipe, items, tokenizer)


def make_trainer(
    recipe: Recipe,
    choice: Choice,
    model,
    tokenizer,
    dataset,
    run_dir: Path,
    eval_dataset=None,
    *,
    counter=None,
    settings: dict | None = None,
):
    """The method's TRL trainer (SFTTrainer, DPOTrainer, ORPOTrainer, CPOTrainer, KTOTrainer, GRPOTrainer) as its
    room's counting subclass (counting into `counter`, a new one by default), with the recipe's settings, and
    `settings`: more config fields, set explicitly (bench's like-for-like ones)."""
    common = dict(
        output_dir=str(run_dir / "checkpoints"),
        max_length=recipe.max_seq_length,
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.scheduler,
        warmup_steps=recipe.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed,
        data_seed=recipe.seed,
        optim=recipe.optimizer,
        logging_steps=recipe.logging_steps,
        bf16=choice.precision == "bf16",
        fp16=choice.precision == "fp16",
        use_cpu=choice.device == "cpu",
        gradient_checkpointing=recipe.gradient_checkpointing and choice.backend == "peft",
        save_strategy="steps" if recipe.save_every else "no",
        save_steps=recipe.save_every or 500,
        save_total_limit=recipe.keep_checkpoints,
        # machines that do not see rank 0's run directory keep their own copy of each checkpoint, for --resume
        save_on_each_node=not distributed.storage_shared(),
        **tracker_settings(recipe, run_dir),
        disable_tqdm=True,
        dataset_num_proc=None,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if recipe.data.batching == "grouped" else "random",
        per_device_eval_batch_size=recipe.micro_batch_size,
        # under torchrun: every trainable weight (LoRA's, or all of a full fine-tune's) gets a gradient each step, so
        # DDP need not search the graph for unused ones; "all-linear" may adapt layers the forward never uses (a
        # model's unused heads), so there it is left to transformers
        ddp_find_unused_parameters=False
        if distributed.world_size() > 1 and recipe.lora.target_modules != "all-linear"
        else None,
        **distributed.fsdp_settings(recipe),  # FSDP2 sharding, for recipe.distributed="fsdp" on several processes
        # evaluation in the training precision, never the model cast to 16-bit in place (Unsloth's default)
        fp16_full_eval=False,
        bf16_full_eval=False,
    )
    trainer_class, args, kwargs = methods.room(recipe.method).trainer(
        recipe, model, tokenizer, dataset, eval_dataset, common, counter or TokenCounter(), settings or {}
    )
    one_gpu_per_process(args)
    with distributed.fsdp_on_cpu(args):  # accelerate's FSDP on CPU processes too (gloo)
        trainer = trainer_class(model=model, args=args, processing_class=tokenizer, **kwargs)
    return _quiet(trainer)


def _quiet(trainer):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # quickft's reporter owns the console
    trainer.remove_callback(ProgressCallback)
    # Unsloth's trainer turns full 16-bit evaluation on, which casts the model in place before test cases are answered
    trainer.args.fp16_full_eval = trainer.args.bf16_full_eval = False
    return trainer


def one_gpu_per_process(args) -> None:
    """One process trains on one GPU. On a machine with several, transformers would wrap the model in
    nn.DataParallel over all of them (a batch silently that many times larger, memory figures of GPU 0 only);
    several GPUs are torchrun's (`quickft run --gpus N`), one process each."""
    if distributed.world_size() == 1 and args.n_gpu > 1:
        args._n_gpu = 1


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker(track: str) -> None:
    """The tracker's package must be installed: say so before anything loads, with the install command."""
    package = TRACKER_PACKAGES.get(track)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(
            f"track={track}: the {package} package is not installed", hint=f"pip install {package}, or set track=none"
        )


def tracker_settings(recipe: Recipe, run_dir: Path) -> dict:
    """SFTConfig's report_to and its companions for the recipe's tracker (transformers' own integrations)."""
    if recipe.track == "none":
        return {"report_to": "none"}
    if recipe.track == "tensorboard":  # transformers' TensorBoard callback reads its folder from the environment
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return {"report_to": [recipe.track], "run_name": run_dir.name, "project": recipe.name}


def tracker_callbacks_last(trainer) -> None:
    """Move the tracker's callback after quickft's: quickft's on_log adds its measured figures (tokens/s, memory,
    smoothed loss) to the logs the tracker then sends, so the tracker shows what metrics.jsonl says."""
    from transformers.integrations import get_reporting_integration_callbacks

    for cls in get_reporting_integration_callbacks(trainer.args.report_to):
        callback = trainer.pop_callback(cls)
        if callback is not None:
            trainer.add_callback(callback)
