# The offline demo: a 0.9M-parameter Llama built here from a config, trained from scratch on two-digit sums.
#
#   quickft run recipes/tiny_math.py
#   quickft run recipes/tiny_math.py max_steps=300 learning_rate=2e-3     # an example override
#
# No download: the model has random weights and its tokenizer is trained on the data on the spot (both cached,
# so a second run does not rebuild them). It should answer >= 95% of 1,000 unseen sums exactly after ~2-3 minutes
# on 2 CPU cores. Data: data/sumas.txt (9,000 sums) and data/sumas_test.txt (1,000 held out), from data/make_sums.py.
from quickft import Data, Recipe, Scratch

recipe = Recipe(
    name="tiny_math",
    model=Scratch(architecture="llama", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                  vocab_size=512, max_position_embeddings=64),
    data=Data(
        path="data/sumas.txt",
        format="blocks",
        prompt_template="Pregunta: {prompt}\nRespuesta: ",
        test_path="data/sumas_test.txt",
        max_test_examples=1000,
    ),
    mode="full",
    max_seq_length=32,
    micro_batch_size=64,
    gradient_accumulation=1,
    learning_rate=3e-3,
    scheduler="cosine",
    warmup_ratio=0.05,
    max_steps=1500,
    weight_decay=0.01,
    logging_steps=50,
    max_new_tokens=4,
    seed=42,
)
