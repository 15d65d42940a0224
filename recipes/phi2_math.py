# Phi-2 (2.7B) as a Spanish basic-math tutor, QLoRA, sized for a 4 GB GTX 1050 Ti.
#
#   quickft run recipes/phi2_math.py
#   quickft run recipes/phi2_math.py max_steps=20 lora.r=8     # an example override
#
# Needs the model from the hub (or model=<local directory>). On a Pascal card (compute capability 6.1) quickft
# falls back from Unsloth to PEFT + bitsandbytes 4-bit in fp16, and says so. Micro-batch 1 with accumulation 8,
# 256-token sequences and gradient checkpointing keep the peak memory inside 4 GB.
from quickft import Data, LoRA, Recipe

recipe = Recipe(
    name="phi2_math",
    model="microsoft/phi-2",
    data=Data(
        path="data/tutor_matematicas.txt",
        format="blocks",
        prompt_template="Pregunta: {prompt}\nRespuesta: ",
        holdout=5,
    ),
    mode="qlora",
    lora=LoRA(r=16, alpha=32, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]),
    max_seq_length=256,
    micro_batch_size=1,
    gradient_accumulation=8,
    learning_rate=2e-4,
    scheduler="cosine",
    warmup_ratio=0.05,
    epochs=2,
    weight_decay=0.0,
    gradient_checkpointing=True,
    logging_steps=1,
    max_new_tokens=128,
    seed=42,
)
