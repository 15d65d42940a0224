"""Build a random-weight checkpoint from a written-out public config, plus a tokenizer trained on our data.

Random weights train at exactly the speed and memory of the real ones, which is all a benchmark measures, and they
need no model hub:

    python benchmarks/build_model.py llama-14m   # ./benchmarks/models/llama-14m (CPU benchmarks)
    python benchmarks/build_model.py tinyllama   # TinyLlama-1.1B's architecture (GPU benchmarks)
    python benchmarks/build_model.py phi-2       # microsoft/phi-2's architecture, 2.7B (GPU benchmarks)

The tokenizer is trained on data/tutor_matematicas.txt; the model keeps the real vocabulary size (rows the small
tokenizer never uses cost the same memory and time as in the real model).
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T, config.json
    "tinyllama": transformers.LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    # microsoft/phi-2, config.json
    "phi-2": transformers.PhiConfig(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        partial_rotary_factor=0.4,
        layer_norm_eps=1e-5,
        rope_theta=10000.0,
        vocab_size=51200,
        resid_pdrop=0.1,
        hidden_act="gelu_new",
        tie_word_embeddings=False,
    ),
    # a small Llama for CPU benchmarks (about 14M parameters)
    "llama-14m": transformers.LlamaConfig(
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=1024,
        vocab_size=8000,
        tie_word_embeddings=True,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(CONFIGS))
    parser.add_argument("--out", type=Path, help="default: benchmarks/models/NAME")
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "models" / args.name

    from quickft.data import read_examples
    from quickft.data.encode import training_text
    from quickft.models.scratch import train_tokenizer
    from quickft.recipe import Data

    data = Data(path=str(ROOT / "data/tutor_matematicas.txt"), prompt_template="Pregunta: {prompt}\nRespuesta: ")
    corpus = [training_text(ex, data) for ex in read_examples(data.path, data)]
    config = CONFIGS[args.name]
    tokenizer = train_tokenizer(corpus, min(config.vocab_size, 4000))
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.bfloat16 if config.vocab_size > 8000 else None
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"{out}: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
