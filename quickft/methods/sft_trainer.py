"""SFT's trainer: TRL's SFTTrainer, counting the real tokens it trains.

Imported only when a trainer is built, after the backend's imports: `from trl import SFTTrainer` here is Unsloth's
patched class when Unsloth was imported first.
"""

from __future__ import annotations

from trl import SFTTrainer

from quickft.metrics import TokenCounter


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
