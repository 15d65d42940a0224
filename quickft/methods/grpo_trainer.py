"""GRPO's trainer: TRL's GRPOTrainer, counting what it generates and trains and timing generation apart.

Imported only when a trainer is built, after the backend's imports (Unsloth, when chosen, patches TRL first).
"""

from __future__ import annotations

import time

from trl import GRPOTrainer

from quickft.data.encode import prompt_ids
from quickft.methods.common import ResumesWithRef
from quickft.metrics import TokenCounter


class CountingGRPOTrainer(ResumesWithRef, GRPOTrainer):
    """GRPOTrainer that counts what it generates and what it trains, and times generation and rewards apart from the
    rest of the step (generation is where GRPO's time goes), into the run's TokenCounter:
    - generated: the completion tokens sampled (its end-of-sequence token included, padding not), as TRL's
      completion lengths count them;
    - trained: each micro-batch's prompt and completion tokens (padding not counted), the sequences the forward and
      backward passes read, counted after the step as for SFT; as TRL's num_tokens counts them, an answer cut at
      max_completion_length is in both even when mask_truncated_completions leaves it out of the loss (TRL zeroes its
      completion mask, so the mask cannot count it: its length travels with the batch instead);
    - generation_s / reward_s: wall time inside TRL's generate and reward calls.
    Prompts are tokenized as `quickft chat` and the test cases tokenize them (quickft.data.encode.prompt_ids), not by TRL's
    own rules: a chat template's text already holds its special tokens."""

    LENGTHS = "quickft_completion_lengths"
    """The batch key of each answer's length as generated (split and shuffled with the batch, read by no loss)."""

    def __init__(self, *args, counter: TokenCounter, chat: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter, self.chat = counter, chat
        self._prepared = self._lengths = None

    def _tokenize_prompts(self, prompts: list):
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
