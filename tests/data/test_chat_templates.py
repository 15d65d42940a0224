"""Published chat templates, byte for byte as the model repositories ship them, each on a tiny tokenizer holding the
template's special tokens: every assistant turn is trained on exactly what the model writes for it at inference.

The templates come from installed packages, never from this repository: TRL keeps the original templates of the
families it recognises (trl/chat_templates, both install routes), and `make install-gguf` keeps llama.cpp's copies
(models/templates, fetched from the model repositories by llama.cpp's own script; the default route).

The expectation is written here from each model's documented turn format, not from quickft's encoder: the trained
tokens of a turn decode to EXPECTED[family](content, reasoning), and the untrained prompt before it is
apply_chat_template(..., add_generation_prompt=True, tokenize=True) of the conversation so far, from transformers.
"""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path

import pytest

from quickft.data import Example, chat_template
from quickft.data.encode import chat_prompt, encode_chat
from quickft.errors import UserError
from quickft.recipe import Data


def trl_template(name: str) -> Path:
    return Path(find_spec("trl").submodule_search_locations[0]) / "chat_templates" / f"{name}.jinja"


def llama_cpp_template(name: str) -> Path:
    from quickft.export.llamacpp import kept_copy

    return kept_copy() / "models" / "templates" / f"{name}.jinja"


# family -> (template file, bos, eos, what the model writes for a turn: f(content, reasoning))
def think(r):
    return f"<think>\n{r}\n</think>\n\n" if r else ""


TEMPLATES = {
    "llama3": (trl_template("llama3"), "<|begin_of_text|>", "<|eot_id|>", lambda c, r: think(r) + c + "<|eot_id|>"),
    "llama3.1": (
        trl_template("llama3_1"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        lambda c, r: think(r) + c + "<|eot_id|>",
    ),
    "llama3.2": (
        trl_template("llama3_2"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        lambda c, r: think(r) + c + "<|eot_id|>",
    ),
    "qwen2.5": (trl_template("qwen2_5"), None, "<|im_end|>", lambda c, r: think(r) + c + "<|im_end|>\n"),
    "qwen3": (
        trl_template("qwen3"),
        None,
        "<|im_end|>",
        lambda c, r: f"<think>\n{r}\n</think>\n\n{c}<|im_end|>\n",
    ),
    "qwen3 (TRL's training template)": (
        trl_template("qwen3_training"),
        None,
        "<|im_end|>",
        lambda c, r: f"<think>\n{r}\n</think>\n\n{c}<|im_end|>\n",
    ),
    "qwen3-2507": (
        trl_template("qwen3_instruct_2507"),
        None,
        "<|im_end|>",
        lambda c, r: think(r) + c + "<|im_end|>\n",
    ),
    "deepseek-r1-distill": (
        trl_template("deepseek_r1_distill"),
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        lambda c, r: f"{r}\n</think>\n\n{c}<｜end▁of▁sentence｜>" if r else f"\n</think>\n\n{c}<｜end▁of▁sentence｜>",
    ),
    "gemma2": (trl_template("gemma"), "<bos>", "<eos>", lambda c, r: think(r) + c + "<end_of_turn>\n"),
    "gemma3": (trl_template("gemma3"), "<bos>", "<eos>", lambda c, r: think(r) + c + "<end_of_turn>\n"),
    "phi3.5": (trl_template("phi3_5"), "<s>", "<|endoftext|>", lambda c, r: think(r) + c + "<|end|>\n<|endoftext|>"),
    "gpt-oss": (
        trl_template("gptoss"),
        "<|startoftext|>",
        "<|return|>",
        lambda c, r: (
            (f"<|channel|>analysis<|message|>{r}<|end|><|start|>assistant" if r else "")
            + f"<|channel|>final<|message|>{c}<|return|>"
        ),
    ),
    "lfm2.5": (
        trl_template("lfm2_2_5"),
        "<|startoftext|>",
        "<|im_end|>",
        lambda c, r: (f"<think>{r}</think>" if r else "") + c + "<|im_end|>\n",
    ),
    # llama.cpp's copies (the default route keeps them with the GGUF tools)
    "llama3.1 (meta-llama)": (
        llama_cpp_template("meta-llama-Llama-3.1-8B-Instruct"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        lambda c, r: think(r) + c + "<|eot_id|>",
    ),
    "llama3.3": (
        llama_cpp_template("meta-llama-Llama-3.3-70B-Instruct"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        lambda c, r: think(r) + c + "<|eot_id|>",
    ),
    "qwen3-0.6b": (
        llama_cpp_template("Qwen-Qwen3-0.6B"),
        None,
        "<|im_end|>",
        lambda c, r: f"<think>\n{r}\n</think>\n\n{c}<|im_end|>\n",
    ),
    "gemma2 (google)": (
        llama_cpp_template("google-gemma-2-2b-it"),
        "<bos>",
        "<eos>",
        lambda c, r: think(r) + c + "<end_of_turn>\n",
    ),
    "mistral-nemo": (
        llama_cpp_template("mistralai-Mistral-Nemo-Instruct-2407"),
        "<s>",
        "</s>",
        lambda c, r: think(r) + c + "</s>",
    ),
    "mistral-small-3.2": (
        llama_cpp_template("Mistral-Small-3.2-24B-Instruct-2506"),
        "<s>",
        "</s>",
        lambda c, r: think(r) + c + "</s>",
    ),
    "phi3.5 (microsoft)": (
        llama_cpp_template("microsoft-Phi-3.5-mini-instruct"),
        "<s>",
        "<|endoftext|>",
        lambda c, r: think(r) + c + "<|end|>\n<|endoftext|>",
    ),
    "gpt-oss-120b": (
        llama_cpp_template("openai-gpt-oss-120b"),
        "<|startoftext|>",
        "<|return|>",
        lambda c, r: (
            (f"<|channel|>analysis<|message|>{r}<|end|><|start|>assistant" if r else "")
            + f"<|channel|>final<|message|>{c}<|return|>"
        ),
    ),
    "smollm3": (
        llama_cpp_template("HuggingFaceTB-SmolLM3-3B"),
        None,
        "<|im_end|>",
        lambda c, r: think(r) + c + "<|im_end|>\n",
    ),
    "granite3.3": (
        llama_cpp_template("ibm-granite-granite-3.3-2B-Instruct"),
        "<|end_of_text|>",
        "<|end_of_text|>",
        lambda c, r: think(r) + c + "<|end_of_text|>\n",
    ),
    "lfm2.5-instruct": (
        llama_cpp_template("LFM2.5-Instruct"),
        "<|startoftext|>",
        "<|im_end|>",
        lambda c, r: think(r) + c + "<|im_end|>\n",
    ),
}

SPECIAL = re.compile(
    r"<\|[^<>|\s]{1,40}\|>|<｜[^｜\s]{1,40}｜>|<(?:start|end)_of_turn>|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS"
    r"|TOOL_CALLS|TOOL_RESULTS|TOOL_CONTENT|THINK)\]|</?s>|<bos>|<eos>"
)
CORPUS = [
    "¿Cuánto es 7 × 8? Son 56. El tren sale de Madrid a las ocho.",
    "北京是中国的首都。我们一起学习数学吧。",
    "The quick brown fox jumps over the lazy dog; 2 + 2 = 4.",
    'tool weather {"city": "Lima"} think answer assistant user system',
]


def tokenizer_for(family: str):
    """A tiny byte-level BPE tokenizer with the template's special tokens, its BOS added by the post-processor as
    the real tokenizers add it (so a template that writes bos_token too would show a second one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    path, bos, eos, _ = TEMPLATES[family]
    template = path.read_text(encoding="utf-8")
    specials = sorted(set(SPECIAL.findall(template)) | {t for t in (bos, eos) if t} | {"<pad>"})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<think>", "</think>", "<tool_call>", "</tool_call>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>", chat_template=template
    )


def available(family: str):
    path = TEMPLATES[family][0]
    return pytest.param(
        family, marks=pytest.mark.skipif(not path.is_file(), reason=f"{path} is not here (make install-gguf keeps it)")
    )


FAMILIES = [available(f) for f in TEMPLATES]

SYSTEM = {"role": "system", "content": "Eres un tutor de matemáticas. 用中文或西班牙语回答。"}
TALK = [
    {"role": "user", "content": "¿Cuánto es 7 × 8?"},
    {"role": "assistant", "content": "Son 56."},
    {"role": "user", "content": "北京是哪个国家的首都？"},
    {"role": "assistant", "content": "北京是中国的首都。"},
    {"role": "user", "content": "And 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
]
REASONING = [
    {"role": "user", "content": "¿Cuánto es 12 + 30?"},
    {"role": "assistant", "content": "42", "reasoning": "12 más 30 son 42."},
    {"role": "user", "content": "¿Y 5 × 5?"},
    {"role": "assistant", "content": "25", "reasoning": "cinco por cinco: 25"},
]


def trained(row, tok) -> str:
    return tok.decode([i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m])


def native(messages: list[dict], family: str) -> list[dict]:
    """The messages as this family's users write them for transformers: reasoning in the model's own field, or
    inline before the answer where the template has none."""
    out = []
    for m in messages:
        m = dict(m)
        r = m.pop("reasoning", None)
        if r and (family.startswith(("qwen3 ", "qwen3-0")) or family in ("qwen3", "gpt-oss", "gpt-oss-120b", "lfm2.5")):
            m["reasoning_content" if family.startswith("qwen3") else "thinking"] = r
        elif r and not family.startswith("deepseek"):
            m["content"] = think(r) + m["content"]
        out.append(m)
    return out


def prompt_ids(tok, messages, family):
    messages = native(messages, family)
    if (
        family.startswith("gemma2") and messages[0]["role"] == "system"
    ):  # Gemma's documented way: into the first user turn
        messages = [
            {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
            *messages[2:],
        ]
    return list(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", ["multi_turn", "system", "reasoning"])
def test_each_assistant_turn_is_trained_as_the_model_writes_it(family, conversation):
    """per_turn: row k = the prompt inference builds before assistant turn k (untrained), then the turn exactly as
    the model writes it (trained). One BOS, the one the template writes."""
    tok = tokenizer_for(family)
    messages = {"multi_turn": TALK, "system": [SYSTEM, *TALK], "reasoning": REASONING}[conversation]
    example = Example(messages=messages, where="chat.jsonl:1")
    rows, how = encode_chat(example, tok, Data(path="chat.jsonl"), history="per_turn")
    answers = [m for m in messages if m["role"] == "assistant"]
    assert how == "per_turn" and len(rows) == len(answers)
    for row, k in zip(rows, [i for i, m in enumerate(messages) if m["role"] == "assistant"], strict=True):
        expected = TEMPLATES[family][3](messages[k]["content"], messages[k].get("reasoning", ""))
        assert trained(row, tok) == expected
        n = row["completion_mask"].index(1)
        assert set(row["completion_mask"][n:]) == {1}
        assert row["input_ids"][:n] == prompt_ids(tok, messages[:k], family)
        if tok.bos_token_id is not None:
            assert row["input_ids"][:2] != [tok.bos_token_id] * 2  # the template's BOS, no second one added


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_prompts_are_the_generation_prompt_transformers_renders(family):
    """`quickft chat` gives the model exactly apply_chat_template(..., add_generation_prompt=True)."""
    from quickft.generation import prompt_batch

    tok = tokenizer_for(family)
    history = [SYSTEM, *TALK[:4], {"role": "user", "content": "¿Y 3 + 3?"}]
    batch = prompt_batch(tok, [chat_prompt(history, tok)], "cpu")
    assert batch["input_ids"][0].tolist() == prompt_ids(tok, history, family)


# How a turn looks in the history of a longer conversation, where that differs from the turn as the model wrote it.
HISTORY = {
    "qwen3": lambda c, r: c + "<|im_end|>\n",  # no <think> block in history
    "qwen3-0.6b": lambda c, r: c + "<|im_end|>\n",
    "deepseek-r1-distill": lambda c, r: c + "<｜end▁of▁sentence｜>",  # never a <think> block, the last turn too
    "phi3.5": lambda c, r: think(r) + c + "<|end|>\n",  # EOS only after the last message
    "phi3.5 (microsoft)": lambda c, r: think(r) + c + "<|end|>\n",
    "gpt-oss": lambda c, r: f"<|channel|>final<|message|>{c}<|end|>",  # <|end|>, the last turn has <|return|>
    "gpt-oss-120b": lambda c, r: f"<|channel|>final<|message|>{c}<|end|>",
}
DROPS_REASONING = {"qwen3", "qwen3-0.6b", "deepseek-r1-distill", "gpt-oss", "gpt-oss-120b", "lfm2.5", "lfm2.5-instruct"}
"""Templates that leave past reasoning out of history (DeepSeek-R1-Distill: out of every turn). TRL's Qwen3 training
template keeps it in every turn, and so keeps the whole history as the model wrote it."""


def whole_expectation(family: str, messages: list[dict]) -> str:
    """The trained text of history=whole: each turn as the whole rendering holds it, nothing where reasoning is lost."""
    last = TEMPLATES[family][3]
    turns = [m for m in messages if m["role"] == "assistant"]
    text = ""
    for n, m in enumerate(turns, 1):
        c, r = m["content"], m.get("reasoning", "")
        if r and (family in DROPS_REASONING and (n < len(turns) or family.startswith("deepseek"))):
            continue
        final = n == len(turns) and not family.startswith("deepseek")
        text += last(c, r) if final or family not in HISTORY else HISTORY[family](c, r)
    return text


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", ["multi_turn", "system", "reasoning"])
def test_whole_conversation_once_trains_each_turn_as_history_renders_it(family, conversation):
    """history=whole: the tokens are apply_chat_template(whole conversation, tokenize=True); each assistant turn is
    trained with the end-of-turn token the history gives it, and a turn whose reasoning history drops is context.
    auto picks one row wherever history keeps every turn exactly as the model wrote it, else a row per turn."""
    tok = tokenizer_for(family)
    messages = {"multi_turn": TALK, "system": [SYSTEM, *TALK], "reasoning": REASONING}[conversation]
    example = Example(messages=messages, where="chat.jsonl:1")
    (row,), how = encode_chat(example, tok, Data(path="chat.jsonl"), history="whole")
    assert how == "whole"
    full = native(messages, family)
    if family.startswith("gemma2") and conversation == "system":
        full = [{"role": "user", "content": SYSTEM["content"] + "\n\n" + TALK[0]["content"]}, *TALK[1:]]
    assert row["input_ids"] == list(tok.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"])
    assert trained(row, tok) == whole_expectation(family, messages)
    _, chosen = encode_chat(example, tok, Data(path="chat.jsonl"))
    keeps = family not in HISTORY and (conversation != "reasoning" or family not in DROPS_REASONING)
    assert chosen == ("whole" if keeps else "per_turn")


def test_a_template_error_is_a_clear_refusal_naming_the_record():
    """Gemma's "roles must alternate" (two user turns in a row) is the template's own rule: exit 2 with its words."""
    tok = tokenizer_for("gemma2")
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(UserError, match=r"chat.jsonl:7: the chat template .* rejected it: .*must alternate"):
        encode_chat(Example(messages=twice, where="chat.jsonl:7"), tok, Data(path="chat.jsonl"))


def test_system_prompts_fold_into_the_first_user_turn_only_where_the_template_has_no_system_role():
    gemma, llama = tokenizer_for("gemma2"), tokenizer_for("llama3.1")
    assert "Eres un tutor" in chat_prompt([SYSTEM, TALK[0]], gemma)
    assert chat_template.style_of(gemma).folds_system and not chat_template.style_of(llama).folds_system
    chat_prompt([SYSTEM, TALK[0]], llama)
    assert not chat_template.style_of(llama).folds_system


def test_tokens_with_trimmed_offsets_stay_in_the_answer_they_belong_to():
    """ByteLevel(trim_offsets=True) gives whitespace-only tokens empty offsets; they are trained where they stand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from quickft.data.chat_template import CHATML

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML)
    messages = [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "son  56   ,  sí"}]
    offsets = fast(fast.apply_chat_template(messages, tokenize=False), return_offsets_mapping=True)["offset_mapping"]
    assert any(a == b for a, b in offsets), (
        "the tokenizer must give some token empty offsets for this test to mean much"
    )
    (row,), _ = encode_chat(Example(messages=messages, where="x:1"), fast, Data(path="x", history="whole"))
    assert trained(row, fast) == "son  56   ,  sí<|im_end|>\n"


# ---------------------------------------------------------------------------------------------- chat, and the CLI


def test_chat_shows_thinking_apart_and_sends_history_back_as_the_template_expects():
    import io

    from quickft.chat import ThinkingView

    pieces = ["<thi", "nk>\nhmm,", " 12 + 30</th", "ink>\n\n", "42"]
    for show, expected in ((True, "\nhmm, 12 + 30\n42"), (False, "42")):
        out = io.StringIO()
        view = ThinkingView(out, show=show)
        for piece in pieces:
            view.write(piece)
        view.flush()
        assert out.getvalue() == expected
    assert chat_template.split_thinking("".join(pieces)) == ("hmm, 12 + 30", "42")
    r1 = tokenizer_for("deepseek-r1-distill")
    prompt = chat_prompt([TALK[0]], r1)
    assert chat_template.opens_thinking(prompt)  # R1's generation prompt opens <think>: the answer starts inside it
    assert chat_template.split_thinking("hmm\n</think>\n\nSon 56.", inside=True) == ("hmm", "Son 56.")
    qwen3 = tokenizer_for("qwen3")
    history = [REASONING[0], REASONING[1], REASONING[2]]
    transformers_prompt = qwen3.apply_chat_template(
        native(history, "qwen3"), tokenize=False, add_generation_prompt=True
    )
    assert chat_prompt(history, qwen3) == transformers_prompt and REASONING[1]["reasoning"] not in transformers_prompt


def model_dir_for(family: str, where: Path) -> Path:
    """A tiny random Llama with this family's tokenizer and chat template, saved like a hub checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer_for(family)
    tok.save_pretrained(where)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(where)
    return where


def write_chat_file(path: Path, conversations: list[list[dict]]) -> Path:
    import json

    records = []
    for messages in conversations:
        records.append(
            {"messages": [{k if k != "reasoning" else "reasoning_content": v for k, v in m.items()} for m in messages]}
        )
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


def test_quickft_data_shows_qwen3_reasoning_trained_and_what_each_history_choice_costs(tmp_path, capsys):
    """`quickft data --show` on Qwen3 conversations with reasoning_content: the rows and tokens of each choice,
    recomputed here with transformers' apply_chat_template and the expected turn text."""
    import json

    from quickft.cli import main
    from tests.conftest import write_recipe

    model = model_dir_for("qwen3", tmp_path / "qwen3-tiny")
    tok = tokenizer_for("qwen3")
    conversations = [REASONING, [SYSTEM, *REASONING], [REASONING[0], REASONING[1]]] * 3
    data = write_chat_file(tmp_path / "chat.jsonl", conversations)
    recipe = write_recipe(
        tmp_path / "r.py",
        f"recipe = Recipe(model={str(model)!r}, data=Data(path={str(data)!r}, holdout=0), max_seq_length=512)\n",
    )
    assert main(["data", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    conversations = conversations[:3]  # the same three, then duplicates, which the reader drops
    per_turn_tokens = whole_tokens = 0
    for messages in conversations:
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                output = TEMPLATES["qwen3"][3](m["content"], m["reasoning"])
                per_turn_tokens += len(prompt_ids(tok, messages[:k], "qwen3")) + len(tok(output)["input_ids"])
        whole_tokens += len(
            tok.apply_chat_template(native(messages, "qwen3"), tokenize=True, return_dict=True)["input_ids"]
        )
    costs = report["history_costs"]
    assert costs["per_turn"]["rows"] == 2 + 2 + 1 and costs["per_turn"]["tokens"] == per_turn_tokens
    assert costs["whole"]["rows"] == 3 and costs["whole"]["tokens"] == whole_tokens
    assert report["history"] == {"per_turn": 2, "whole": 1}  # auto: one turn alone needs no second row
    assert report["counts"]["rows"] == 5 and report["tokens"]["total"] == per_turn_tokens
    assert main(["data", str(recipe), "--show", "2"]) == 0
    shown = capsys.readouterr().out
    assert "history=per_turn" in shown and f"{per_turn_tokens:,} tokens" in shown and "(used)" not in shown
    assert "12 más 30 son 42." in shown and "<think>" in shown  # the reasoning, as trained


def test_gemma2_with_system_prompts_trains_and_chats_with_the_prompt_folded(tmp_path, capsys):
    """Gemma 2 has no system role: the run trains (no crash), says how the system prompt was placed, and chat's
    prompt is the same folding."""
    import json

    from quickft.cli import main
    from tests.conftest import write_recipe

    model = model_dir_for("gemma2", tmp_path / "gemma2-tiny")
    conversations = [
        [SYSTEM, {"role": "user", "content": f"{a} + {b}"}, {"role": "assistant", "content": str(a + b)}]
        for a in range(6)
        for b in range(5)
    ]
    data = write_chat_file(tmp_path / "chat.jsonl", conversations)
    recipe = write_recipe(
        tmp_path / "g.py",
        f"""
        recipe = Recipe(
            model={str(model)!r}, data=Data(path={str(data)!r}, holdout=2), lora=LoRA(r=2, alpha=4),
            max_seq_length=128, micro_batch_size=4, max_steps=2, max_new_tokens=4, backend="peft",
        )
        """,
    )
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(run)]) == 0
    err = capsys.readouterr()
    assert "no system role" in err.out + err.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["rows"] == len(conversations) - 2
    assert main(["chat", str(run), "--prompt", "2 + 2", "--system", "Eres breve.", "--max-new-tokens", "2"]) == 0


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "El tiempo de una ciudad",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_TALK = [
    {"role": "user", "content": "¿Qué tiempo hace en Lima?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lima"}}}],
    },
    {"role": "tool", "content": '{"temp": 19}'},
    {"role": "assistant", "content": "En Lima hace 19 °C."},
]
CALL = '{"name": "get_weather", "arguments": {"city": "Lima"}}'
TOOL_OUTPUTS = {  # what each model writes for the call, then for the answer (its documented tool-call format)
    "qwen2.5": [f"<tool_call>\n{CALL}\n</tool_call><|im_end|>\n", "En Lima hace 19 °C.<|im_end|>\n"],
    "qwen3": [
        f"<think>\n\n</think>\n\n<tool_call>\n{CALL}\n</tool_call><|im_end|>\n",
        "<think>\n\n</think>\n\nEn Lima hace 19 °C.<|im_end|>\n",
    ],
    "llama3.1": ['{"name": "get_weather", "parameters": {"city": "Lima"}}<|eot_id|>', "En Lima hace 19 °C.<|eot_id|>"],
}


@pytest.mark.parametrize("family", list(TOOL_OUTPUTS))
def test_tool_calls_are_trained_as_the_model_writes_them_and_tool_results_are_context(family):
    tok = tokenizer_for(family)
    example = Example(messages=TOOL_TALK, where="tools.jsonl:1", tools=[WEATHER_TOOL])
    rows, _ = encode_chat(example, tok, Data(path="tools.jsonl"), history="per_turn")
    assert [trained(r, tok) for r in rows] == TOOL_OUTPUTS[family]
    for row, k in zip(rows, (1, 3), strict=True):
        n = row["completion_mask"].index(1)
        expected = tok.apply_chat_template(
            TOOL_TALK[:k], tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert row["input_ids"][:n] == list(expected)
    (whole,), _ = encode_chat(example, tok, Data(path="tools.jsonl"), history="whole")
    assert '{"temp": 19}' not in trained(whole, tok)  # the tool's answer is context
