"""Build a new model with random weights plus a tokenizer trained on the data: no download, cached on disk.

Used by the offline demo (recipes/tiny_math.py) and by the tests. Random weights train at exactly the speed and
memory of trained ones, so the same builder also serves benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from quickft.models.cache import cache_root
from quickft.recipe import Scratch

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def build_scratch(spec: Scratch, corpus: list[str], *, seed: int = 0) -> Path:
    """Return a local model directory for `spec`, building it (model + tokenizer) only if it is not cached yet."""
    key = hashlib.sha256(json.dumps([dataclasses.asdict(spec), seed, corpus], ensure_ascii=False).encode()).hexdigest()[
        :16
    ]
    target = cache_root() / f"scratch-{spec.architecture}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        tokenizer = train_tokenizer(corpus, spec.vocab_size)
        model = _random_model(spec, tokenizer, seed)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a half-built model is never seen under the final name
        except OSError:  # another process built it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, with digits split one by one (arithmetic needs that).

    Merges may cross spaces (no GPT-2 word regex), so text repeated in every example ("Pregunta: ¿Cuánto es ")
    becomes a few tokens: sequences about half as long, so training is about twice as fast.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
        model_max_length=4096,
    )


def _random_model(spec: Scratch, tokenizer, seed: int):
    import torch
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.architecture == "llama":
        config = transformers.LlamaConfig(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            intermediate_size=spec.intermediate_size,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=True,
            **common,
        )
    elif spec.architecture == "phi":
        config = transformers.PhiConfig(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=spec.intermediate_size,
            max_position_embeddings=spec.max_position_embeddings,
            **common,
        )
    else:
        config = transformers.GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_positions=spec.max_position_embeddings,
            **common,
        )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)
