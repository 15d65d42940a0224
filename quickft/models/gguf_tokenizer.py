"""A GGUF's tokenizer as llama.cpp tokenizes with it, read by transformers and then corrected (see gguf_tokenizer).
Imported only in the de-quantizing process (quickft.models.gguf)."""

from __future__ import annotations

from pathlib import Path

LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "default"), "gpt-2"),
    **dict.fromkeys(("starcoder", "smollm", "refact", "command-r", "codeshell", "exaone", "minerva"), "starcoder"),
    **dict.fromkeys(("llama3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), "qwen2"),
}
"""llama.cpp's pre-tokenizer names (tokenizer.ggml.pre, src/llama-vocab.cpp) whose splitting rules quickft writes as
the Hugging Face pre-tokenizer with the same rules: GPT-2's byte-level regex; digits one by one then GPT-2's
(StarCoder's, SmolLM's); Llama 3's regex; Qwen2's."""


def _byte_level_pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers

    if kind == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "starcoder":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    split = LLAMA3_SPLIT if kind == "llama3" else QWEN2_SPLIT
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def gguf_tokenizer(folder: str, name: str):
    """The tokenizer and chat template from the GGUF's metadata, as llama.cpp tokenizes with it. transformers 5.17
    reads a GGUF's tokenizer by the model's architecture, not by the tokenizer's kind, so a byte-level BPE tokenizer
    (tokenizer.ggml.model "gpt2": SmolLM, Llama 3, Qwen) in a Llama GGUF comes back as a SentencePiece-style one:
    byte fallback, a "▁" decoder, GPT-2's split whatever the GGUF's pre-tokenizer says, and EOS read from the BOS id
    (integrations/ggml.py), so SmolLM2 would stop at <|im_start|>, never at <|im_end|>. Here the GGUF's own special
    ids are set, and a byte-level tokenizer gets a byte-level decoder and the pre-tokenizer its GGUF names (where
    PRE_TOKENIZERS knows it). Returns (tokenizer, the pre-tokenizer's name, whether its rules were written exactly)."""
    from gguf import GGUFReader
    from tokenizers import decoders
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    reader = GGUFReader(str(Path(folder) / name))

    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    pre, exact = value("tokenizer.ggml.pre"), True
    if value("tokenizer.ggml.model") == "gpt2":
        backend = tokenizer.backend_tokenizer
        backend.normalizer = None
        backend.decoder = decoders.ByteLevel()
        backend.model.byte_fallback = False
        kind = PRE_TOKENIZERS.get(pre or "default")
        if kind is not None:
            backend.pre_tokenizer = _byte_level_pre_tokenizer(kind)
        exact = kind is not None
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    for key, attribute in (
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
    ):
        token_id = value(key)
        if isinstance(token_id, int) and 0 <= token_id < len(vocab):
            setattr(tokenizer, attribute, vocab[token_id])
    # transformers reads this as True from a GGUF and then warns that it ignores it for BPE tokenizers
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer, pre, exact
