# DPO on UltraFeedback's binarized preferences with Qwen2.5-0.5B-Instruct, QLoRA, sized for a 4 GB card.
#
#   quickft run recipes/qwen_dpo.py
#   quickft run recipes/qwen_dpo.py method=orpo     # the same pairs with ORPO (no reference pass), or simpo / kto
#
# Needs the hub (the model, and trl-lib/ultrafeedback_binarized: chosen/rejected message lists that repeat the
# prompt, read as TRL's implicit-prompt shape) and a GPU. The reference model is the base with LoRA's starting
# adapter: no second copy in memory. Pairs longer than 1,024 tokens are dropped and counted (cutting an answer
# would change which one is better). Held-out pairs' prompts are answered after training and scored against the
# chosen answer ("contains" is a rough check for free-form answers: read the answers in samples.jsonl).
# Not measured here (no GPU on the project's machines): run it and read the report's memory and preference lines.
from quickft import DPO, Data, Eval, LoRA, Recipe

recipe = Recipe(
    name="qwen_dpo",
    model="Qwen/Qwen2.5-0.5B-Instruct",
    method="dpo",
    dpo=DPO(beta=0.1),
    data=Data(path="trl-lib/ultrafeedback_binarized", split="train", holdout=20, max_test_examples=20),
    eval=Eval(match="contains"),
    mode="qlora",
    lora=LoRA(r=16, alpha=32, dropout=0.05),
    max_seq_length=1024,
    micro_batch_size=1,
    gradient_accumulation=8,
    learning_rate=5e-6,
    scheduler="cosine",
    warmup_ratio=0.1,
    max_steps=500,
    gradient_checkpointing=True,
    logging_steps=5,
    max_new_tokens=256,
    save_every=100,
    seed=42,
)
