"""quickft: quick LoRA / QLoRA / full fine-tuning of causal language models, on the GPU you have (or none)."""

from quickft.recipe import DPO, GRPO, Data, Eval, LoRA, Recipe, Scratch

__all__ = ["DPO", "GRPO", "Data", "Eval", "LoRA", "Recipe", "Scratch"]
__version__ = "0.1.0"
