# The Phi-2 tutor's training settings on any local model: a benchmark recipe for `quickft bench`.
#
#   quickft bench benchmarks/lora_math.py --isolate                     # CPU: the 14M Llama (build it first)
#   quickft bench benchmarks/lora_math.py model=./benchmarks/models/tinyllama mode=qlora max_seq_length=2048 \
#       micro_batch_size=2 gradient_accumulation=4 --steps 20           # GPU: TinyLlama-1.1B's architecture
#
# Build the model first: python benchmarks/build_model.py llama-14m (or tinyllama, phi-2).
from quickft import Data, LoRA, Recipe

recipe = Recipe(
    name="lora_math",
    model="./benchmarks/models/llama-14m",
    data=Data(path="data/tutor_matematicas.txt", format="blocks", prompt_template="Pregunta: {prompt}\nRespuesta: "),
    mode="lora",
    lora=LoRA(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
    max_seq_length=256,
    micro_batch_size=4,
    gradient_accumulation=1,
    learning_rate=2e-4,
    max_steps=30,
    logging_steps=1,
)
