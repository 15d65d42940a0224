# GRPO on GSM8K with Qwen2.5-0.5B-Instruct, QLoRA, sized for a 4 GB card (a GTX 1050 Ti, a T4 shared in a notebook).
#
#   quickft run recipes/qwen_gsm8k_grpo.py
#   quickft run recipes/qwen_gsm8k_grpo.py max_steps=50 grpo.num_generations=4     # an example override
#
# Needs the hub (the model, and openai/gsm8k's "main" configuration) and a GPU: on a CPU each step generates 64
# answers of up to 256 tokens, minutes a step. quickft reads GSM8K's question/answer records; exact_answer(match=
# "number") compares the final number of each answer with the one after GSM8K's "####", format_match rewards the
# "#### <number>" ending the prompt asks for, and length_penalty discourages answers that run into the limit.
# 8 prompts x 8 answers per step; gradient checkpointing and 4-bit weights keep the peak inside 4 GB.
# Not measured here (no GPU on the project's machines): run it and read the report's memory and reward lines.
from quickft import GRPO, Data, Eval, LoRA, Recipe
from quickft.rewards import exact_answer, format_match, length_penalty

recipe = Recipe(
    name="qwen_gsm8k_grpo",
    model="Qwen/Qwen2.5-0.5B-Instruct",
    method="grpo",
    grpo=GRPO(
        rewards=[exact_answer(match="number"), format_match(r".*#### -?[\d,.]+"), length_penalty(256)],
        reward_weights=[1.0, 0.2, 1.0],
        num_generations=8,
        max_completion_length=256,
        temperature=1.0,
    ),
    data=Data(
        path="openai/gsm8k",
        subset="main",
        prompt_template="Solve the problem step by step, then give the final answer as '#### <number>'.\n\n{prompt}\n",
        holdout=50,
    ),
    eval=Eval(every=50, match="number"),
    mode="qlora",
    lora=LoRA(r=16, alpha=32, dropout=0.0),
    max_seq_length=512,
    micro_batch_size=8,
    gradient_accumulation=8,  # 64 answers per step: 8 prompts x 8 answers
    learning_rate=5e-6,
    scheduler="cosine",
    warmup_ratio=0.05,
    max_steps=250,
    gradient_checkpointing=True,
    logging_steps=1,
    max_new_tokens=256,
    save_every=50,
    seed=42,
)
