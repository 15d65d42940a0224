"""The preference methods' trainers: TRL's DPOTrainer, ORPOTrainer, CPOTrainer (SimPO's loss) and KTOTrainer, each
training on the tokens quickft made (quickft.data.pairs) and counting what it trains.

Imported only when a trainer is built, after the backend's imports (Unsloth, when chosen, patches TRL first).
"""

from __future__ import annotations

import warnings

from trl import DPOTrainer, KTOTrainer

from quickft.methods.common import ResumesWithRef
from quickft.metrics import TokenCounter

with warnings.catch_warnings():  # TRL's experimental warning: quickft pins TRL, and README says these are experimental
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["CPOConfig", "ORPOConfig"]  # their configs, imported here where the warning is silenced


class CountingDPOTrainer(ResumesWithRef, DPOTrainer):
    """DPOTrainer that counts like CountingTrainer (a batch is each pair's chosen rows, then its rejected rows: the
    samples counted are sequences, twice the pairs), and trains on the pairs quickft tokenized (quickft.data.pairs:
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


class CountingKTOTrainer(ResumesWithRef, KTOTrainer):
    """KTOTrainer that counts like CountingTrainer (the labelled answers trained; the mismatched sequences of its KL
    estimate are read without gradient and not counted), and trains on the answers quickft tokenized
    (quickft.data.pairs.prepare_judged) in the order they were shuffled there."""

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
