# GPT-2 XL (1.5B) answering Pokémon questions in Spanish, LoRA on attention and MLP.
#
#   quickft run recipes/pokemon_gpt2xl.py
#   quickft run recipes/pokemon_gpt2xl.py epochs=1 lora.r=8     # an example override
#
# Needs the model from the hub (or model=<local directory>). Settings from the original script: LoRA r=16,
# alpha=32, dropout 0.1 on c_attn, c_proj, c_fc; 5 epochs, micro-batch 1 x 4 accumulation, lr 5e-5, cosine.
from quickft import Data, LoRA, Recipe

recipe = Recipe(
    name="pokemon_gpt2xl",
    model="gpt2-xl",
    data=Data(
        path="data/pokemon_qa.jsonl",
        format="alpaca",
        prompt_template="Pregunta: {prompt}\nRespuesta: ",
        holdout=5,
    ),
    mode="lora",
    lora=LoRA(r=16, alpha=32, dropout=0.1, target_modules=["c_attn", "c_proj", "c_fc"]),
    max_seq_length=256,
    micro_batch_size=1,
    gradient_accumulation=4,
    learning_rate=5e-5,
    scheduler="cosine",
    epochs=5,
    weight_decay=0.01,
    logging_steps=5,
    max_new_tokens=96,
    seed=42,
)
