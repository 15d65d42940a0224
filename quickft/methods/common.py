"""What more than one method's room shares: the header's line on a reference model, the steps a logged figure
averages over, and resuming a run that keeps TRL's frozen copy of the starting adapter."""

from __future__ import annotations

from pathlib import Path


def reference_text(trainer, beta: str) -> list[str]:
    """The reference model a DPO, KTO or GRPO (beta > 0) run compares with, and what it costs in memory, read from
    the trainer: a second copy of the model (mode="full"), TRL's frozen copy of LoRA's starting adapter, or the base
    with the adapter switched off."""
    if trainer.ref_model is not None:
        params = list(trainer.ref_model.parameters())
        size = sum(p.numel() * p.element_size() for p in params)
        return [
            beta + f"a second copy of the model ({sum(p.numel() for p in params):,} weights, {size / 2**20:,.1f} MB "
            "in memory; mode=lora needs none)"
        ]
    ref = [p for n, p in trainer.model.named_parameters() if ".ref." in n]
    if ref:  # TRL copies the starting adapter into a frozen "ref" adapter: the base plus an adapter that is zero
        size = sum(p.numel() * p.element_size() for p in ref)
        return [
            beta + f"the base with LoRA's starting adapter, kept as a frozen copy ({sum(p.numel() for p in ref):,} "
            f"weights, {size / 2**20:,.2f} MB): no second model in memory"
        ]
    return [beta + "the base with the adapter switched off: no second model in memory"]


def window_text(row: dict) -> str:
    """The steps a logged row's method figures average over (TRL's means since its previous log): 'steps 5-8'."""
    steps = row["window_steps"]
    return f"step {row['step']}" if steps == 1 else f"steps {row['step'] - steps + 1}-{row['step']}"


class ResumesWithRef:
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
