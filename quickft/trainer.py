"""The pieces quickft plugs into TRL's trainer: the trainer that counts real tokens, the evaluator that runs every
`eval.every` steps (with early stopping), the callback that stops cleanly on Ctrl-C, and `quickft bench`'s clock.

Imported only by train.py's functions, after the backend's imports: `from trl import SFTTrainer` here is Unsloth's
patched class when Unsloth was imported first, which is why none of this can live in a module imported earlier.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback
from trl import DPOTrainer, GRPOTrainer, KTOTrainer, SFTTrainer

with warnings.catch_warnings():  # TRL's experimental warning: quickft pins TRL, and README says these are experimental
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from quickft import distributed
from quickft.metrics import TokenCounter
from quickft.recipe import Recipe
from quickft.recovery import StopOnSignal, is_out_of_memory

__all__ = ["CPOConfig", "ORPOConfig"]  # train.py's configs for them, imported here where the warning is silenced


class CountingTrainer(SFTTrainer):
    """SFTTrainer that counts the real (non-padding) tokens, samples and padding of every batch it trains. TRL's own
    `num_tokens` counts tokens only (no samples, no padding), at the forward pass, so a batch whose backward pass
    then runs out of memory is counted although it was not trained."""

    def __init__(self, *args, counter: TokenCounter, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.counter.add(inputs)  # after the step: a batch that failed (out of memory) was not trained
        return loss

    def passes(self) -> dict:
        """The passes a step runs besides the policy's forward and backward (quickft.metrics.flops_by_pass): none."""
        return {}


class _ResumesWithRef:
    """For the trainers that keep TRL's frozen "ref" copy of the starting adapter (DPO, KTO, GRPO with a KL term):
    a checkpoint holds the trained adapter at its root and the copy in ref/, and transformers, finding an adapter
    subfolder, loads only the subfolders, so a resumed run would go on from the starting adapter. Load the trained
    one too."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        from peft import PeftModel

        model = model or self.model
        root = Path(resume_from_checkpoint) / "adapter_model.safetensors"
        if isinstance(model, PeftModel) and "ref" in model.peft_config and root.is_file():
            trained = model.active_adapter  # "default": the adapter being trained
            model.load_adapter(resume_from_checkpoint, trained, is_trainable=True)
            model.set_adapter(trained)


class CountingDPOTrainer(_ResumesWithRef, DPOTrainer):
    """DPOTrainer that counts like CountingTrainer (a batch is each pair's chosen rows, then its rejected rows: the
    samples counted are sequences, twice the pairs), and trains on the pairs quickft tokenized (quickft.preference:
    the same tokens SFT's encoder makes), not on TRL's own tokenization of text."""

    def __init__(self, *args, counter: TokenCounter, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # prompt_ids / chosen_ids / rejected_ids already, each pair within max_seq_length

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.counter.add(inputs)
        return loss

    def passes(self) -> dict:
        """The reference model's forward pass over the same sequences, each step (none when TRL precomputed it)."""
        return {"reference": not self.precompute_ref_logps}


class _PairRows:
    """For TRL's ORPO and CPO trainers, which tokenize text pairs row by row: train on the pairs quickft tokenized
    (prompt_ids, chosen_ids, rejected_ids: the tokens SFT's encoder makes), in the keys their collator pads; and
    count a batch's two halves, chosen and rejected sequences, as CountingTrainer counts a batch."""

    def __init__(self, *args, counter: TokenCounter, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter

    def tokenize_row(self, feature, model=None) -> dict:
        prompt = feature["prompt_ids"]
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for key in ("chosen", "rejected"):
            answer = feature[f"{key}_ids"]
            row[f"{key}_input_ids"] = prompt + answer
            row[f"{key}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{key}_labels"] = [-100] * len(prompt) + answer  # the loss reads the answer only
        return row

    def floating_point_ops(self, inputs) -> int:
        # transformers estimates from "input_ids", which these batches lack: both halves, as DPO's batch holds them
        estimate = super().floating_point_ops
        return sum(estimate({"input_ids": inputs[f"{k}_input_ids"]}) for k in ("chosen", "rejected"))

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        for key in ("chosen", "rejected"):
            self.counter.add(
                {"input_ids": inputs[f"{key}_input_ids"], "attention_mask": inputs[f"{key}_attention_mask"]}
            )
        return loss

    def passes(self) -> dict:
        """No reference model (ORPO, SimPO): the policy's forward and backward pass only."""
        return {}


class CountingORPOTrainer(_PairRows, ORPOTrainer):
    """ORPOTrainer on quickft's tokens, counting (see _PairRows)."""


class CountingCPOTrainer(_PairRows, CPOTrainer):
    """CPOTrainer (SimPO's loss) on quickft's tokens, counting (see _PairRows)."""


class CountingKTOTrainer(_ResumesWithRef, KTOTrainer):
    """KTOTrainer that counts like CountingTrainer (the labelled answers trained; the mismatched sequences of its KL
    estimate are read without gradient and not counted), and trains on the answers quickft tokenized
    (quickft.preference.prepare_judged) in the order they were shuffled there."""

    def __init__(self, *args, counter: TokenCounter, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset
        size = args.per_device_train_batch_size

        def mismatched(rows):  # as TRL's own: each prompt with the previous answer of its micro-batch
            rows["KL_completion_ids"] = [rows["completion_ids"][-1]] + rows["completion_ids"][:-1]
            return rows

        return dataset.map(mismatched, batched=True, batch_size=size)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.counter.add({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
        return loss

    def passes(self) -> dict:
        """The reference's forward pass over the answers; with the KL estimate (loss "kto"), the policy's and the
        reference's forward passes over the mismatched prompt/answer pairs too."""
        return {"reference": not self.precompute_ref_logps, "kl": self.calculate_KL}


class CountingGRPOTrainer(_ResumesWithRef, GRPOTrainer):
    """GRPOTrainer that counts what it generates and what it trains, and times generation and rewards apart from the
    rest of the step (generation is where GRPO's time goes), into the run's TokenCounter:
    - generated: the completion tokens sampled (its end-of-sequence token included, padding not), as TRL's
      completion lengths count them;
    - trained: each micro-batch's prompt and completion tokens (padding not counted), the sequences the forward and
      backward passes read, counted after the step as for SFT; as TRL's num_tokens counts them, an answer cut at
      max_completion_length is in both even when mask_truncated_completions leaves it out of the loss (TRL zeroes its
      completion mask, so the mask cannot count it: its length travels with the batch instead);
    - generation_s / reward_s: wall time inside TRL's generate and reward calls.
    Prompts are tokenized as `quickft chat` and the test cases tokenize them (quickft.grpo.prompt_ids), not by TRL's
    own rules: a chat template's text already holds its special tokens."""

    LENGTHS = "quickft_completion_lengths"
    """The batch key of each answer's length as generated (split and shuffled with the batch, read by no loss)."""

    def __init__(self, *args, counter: TokenCounter, chat: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter, self.chat = counter, chat
        self._prepared = self._lengths = None

    def _tokenize_prompts(self, prompts: list):
        from quickft.grpo import prompt_ids

        return [prompt_ids(p, self.processing_class, self.chat) for p in prompts], None, {}

    def _generate(self, prompts: list):
        started = time.perf_counter()
        out = super()._generate(prompts)
        self.counter.timed("generation_s", time.perf_counter() - started)
        self._lengths = [len(ids) for ids in out[1]]  # (prompt ids, completion ids, ...): each answer as sampled
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        started = time.perf_counter()
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.counter.timed("reward_s", time.perf_counter() - started)
        return out

    def _generate_and_score_completions(self, inputs):
        import torch

        out = super()._generate_and_score_completions(inputs)
        lengths = torch.tensor(self._lengths, device=out["completion_ids"].device)
        out[self.LENGTHS] = lengths
        self.counter.add_generated(lengths.sum())
        return out

    def _prepare_inputs(self, generation_batch):
        self._prepared = super()._prepare_inputs(generation_batch)  # this micro-batch's slice of a generation batch
        return self._prepared

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        import torch

        batch = self._prepared
        completion = batch["completion_ids"]
        generated = torch.arange(completion.shape[1], device=completion.device) < batch[self.LENGTHS][:, None]
        self.counter.add(
            {
                "input_ids": torch.cat([batch["prompt_ids"], completion], dim=1),
                "attention_mask": torch.cat([batch["prompt_mask"], generated.to(batch["prompt_mask"].dtype)], dim=1),
            }
        )
        return loss

    def passes(self) -> dict:
        """Generating the answers; the reference's forward pass over them when beta > 0 (the KL term)."""
        return {"reference": self.beta != 0.0, "generation": True}


class StopCallback(TrainerCallback):
    """After each step: if any process was asked to stop (Ctrl-C, SIGTERM), save a checkpoint and stop training."""

    def __init__(self, stopper: StopOnSignal):
        self.stopper = stopper

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_process(bool(self.stopper.requested)):
            self.stopper.request("a signal to another process")
            control.should_save = True
            control.should_training_stop = True


class Evaluator(TrainerCallback):
    """Every `eval.every` steps: eval loss, test-case score, early stopping, target. Its results go to the recorder.

    Early stopping stays ours rather than transformers' EarlyStoppingCallback: that one works only inside the
    trainer's own evaluation schedule (eval_strategy, metric_for_best_model, the trainer's best-metric bookkeeping,
    which a test-case score is not part of), and stops on one metric only, not on a test-case score target.
    """

    def __init__(self, recipe: Recipe, cases: list[tuple[str, str]], run_dir: Path, recorder):
        self.recipe, self.cases, self.run_dir, self.recorder = recipe, cases, run_dir, recorder
        self.best_step = self.best_loss = self.stopped = None
        self.bad = 0
        self.trainer = None

    def attach(self, trainer) -> None:
        """The trainer to evaluate with (a new one after an out-of-memory retry)."""
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.recipe.eval.every == 0 or state.global_step >= state.max_steps:
            self.evaluate(state, control)

    def evaluate(self, state, control) -> None:
        from quickft.generation import score_cases

        recipe, trainer, cases = self.recipe, self.trainer, self.cases
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 6)}
        self.recorder.set_activity(
            f"evaluating at step {state.global_step}" + (f": answering {len(cases)} test cases" if cases else "")
        )
        with self.recorder.peaks.phase("evaluation"):
            if trainer.eval_dataset is not None:  # every process evaluates its share
                row["eval_loss"] = eval_loss(trainer)
            # the first process answers and the others wait for its score; under FSDP all of them answer together
            if cases and (distributed.is_main() or distributed.sharded(trainer.model)):
                scored = score_cases(
                    trainer.model,
                    trainer.processing_class,
                    cases,
                    how=recipe.eval.match,
                    max_new_tokens=recipe.max_new_tokens,
                )
                row["case_score"] = sum(s["correct"] for s in scored) / len(scored)
        row = distributed.broadcast(row)  # every process takes the same early-stopping decision
        if "eval_loss" in row:
            if self.best_loss is None or row["eval_loss"] < self.best_loss:
                self.best_step, self.best_loss, self.bad = state.global_step, row["eval_loss"], 0
                if recipe.eval.patience:
                    best = self.run_dir / "best"
                    trainer.save_model(str(best))
                    # TRL's frozen copy of the starting adapter (DPO, KTO) is saved beside the trained one: not the
                    # model (the run's final save drops it too)
                    shutil.rmtree(best / "ref", ignore_errors=True)
            else:
                self.bad += 1
                if recipe.eval.patience and self.bad >= recipe.eval.patience:
                    self.stopped = (
                        f"early stop at step {state.global_step}: eval loss did not improve for "
                        f"{self.bad} evaluations (best {self.best_loss:.4f} at step {self.best_step})"
                    )
        if recipe.eval.target and row.get("case_score", 0.0) >= recipe.eval.target and not self.stopped:
            self.stopped = (
                f"target reached at step {state.global_step}: test-case score "
                f"{row['case_score']:.1%} ≥ {recipe.eval.target:.1%}"
            )
        self.recorder.set_activity(None)
        self.recorder.record_eval(row, self.stopped)
        if self.stopped:
            control.should_training_stop = True

    def summary(self) -> dict:
        return {
            "best_step": self.best_step,
            "best_eval_loss": self.best_loss,
            "stopped": self.stopped,
            "best_dir": str(self.run_dir / "best") if self.recipe.eval.patience and self.best_step else None,
        }


def eval_loss(trainer) -> float:
    """The trainer's eval loss; out of memory halves the *evaluation* batch and tries again (never the training one)."""
    while True:
        try:
            return trainer.evaluate()["eval_loss"]
        except Exception as e:
            if not is_out_of_memory(e) or trainer.args.per_device_eval_batch_size == 1:
                raise
            trainer.args.per_device_eval_batch_size //= 2
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class StepTimer(TrainerCallback):
    """`quickft bench`'s clock: each step's wall time (on a GPU between two synchronisations, so the step's kernels
    are inside it), its real tokens and samples, and the logged losses, in `timing`."""

    def __init__(self, counter: TokenCounter, cuda: bool, progress=None):
        self.counter, self.cuda, self.progress = counter, cuda, progress
        self.timing: dict[str, list] = {"times": [], "tokens": [], "samples": [], "losses": []}
        self._start, self._tokens, self._samples = 0.0, 0, 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()  # a CPU-GPU sync point: only the bench pays it

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()
        self._tokens, self._samples = self.counter.tokens, self.counter.samples

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.timing["times"].append(time.perf_counter() - self._start)
        if self.progress:
            self.progress(state.global_step)
        self.timing["tokens"].append(self.counter.tokens - self._tokens)
        self.timing["samples"].append(self.counter.samples - self._samples)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.timing["losses"].append(float(logs["loss"]))
