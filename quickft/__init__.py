"""quickft: quick LoRA / QLoRA / full fine-tuning of causal language models, on the GPU you have (or none)."""

from quickft.recipe import DPO, GRPO, KTO, ORPO, Data, Eval, LoRA, Recipe, Scratch, SimPO

__all__ = ["DPO", "GRPO", "KTO", "ORPO", "Data", "Eval", "LoRA", "Recipe", "Scratch", "SimPO"]
__version__ = "0.1.0"
