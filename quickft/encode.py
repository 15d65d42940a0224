"""Examples -> the token sequences that are trained: prompt and chat formatting, the loss mask, documents cut into
windows, examples that do not fit max_seq_length, and the count of every example dropped or cut, with its reason.

`prepare()` is the one pipeline to the final training rows: `quickft run`, `quickft data` and `quickft bench` all
call it, so the counts they show are the same. Takes any Hugging Face (fast) tokenizer; imports nothing heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from quickft.data import Example
from quickft.errors import UserError
from quickft.recipe import Data, Recipe

CHATML = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{{ tools | tojson }}<|im_end|>\n{%- endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] %}{{ message['content'] }}"
    "{% endif %}{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}<tool_call>{{ call | tojson }}"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML}


# ---------------------------------------------------------------------------------------------- formatting


def format_prompt(prompt: str, data: Data) -> str:
    """The exact text the model sees before its answer, for prompt/response data (training and chat use this)."""
    return data.prompt_template.replace("{prompt}", prompt)


def training_text(example: Example, data: Data) -> str:
    """The example as plain text, the way the model reads it (used to train a tokenizer for a Scratch model)."""
    if example.messages is not None:
        return "\n".join(m["content"] for m in example.messages)
    return (format_prompt(example.prompt, data) if example.prompt else "") + example.response


def chat_prompt(messages: list[dict], tokenizer, tools: list[dict] | None = None) -> str:
    """The text of a conversation so far, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def prompt_text(example: Example, tokenizer, data: Data) -> str:
    """What the model is given to produce `example`'s answer (its last assistant turn, for chats)."""
    if example.messages is not None:
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        return chat_prompt(example.messages[:last], tokenizer, example.tools)
    return format_prompt(example.prompt, data)


def make_cases(examples: list[Example], data: Data, extra: dict[str, str], tokenizer) -> list[tuple[str, str]]:
    """Test cases as (prompt text exactly as the model sees it, expected answer): held-out examples + the recipe's.
    Documents have no question, so they make no test cases."""
    cases = [(prompt_text(ex, tokenizer, data), reference_answer(ex)) for ex in examples if not ex.document]
    return cases + [(format_prompt(p, data), e) for p, e in extra.items()]


def reference_answer(example: Example) -> str:
    if example.messages is not None:
        return [m for m in example.messages if m["role"] == "assistant"][-1]["content"]
    return example.response


# ---------------------------------------------------------------------------------------------- one example


def encode(example: Example, tokenizer, data: Data) -> dict:
    """Token ids plus a completion mask (1 = the loss sees this token) for one prompt/response or chat example."""
    if example.messages is not None:
        return _encode_chat(example, tokenizer, data)
    prompt_ids = tokenizer(format_prompt(example.prompt, data))["input_ids"] if example.prompt else []
    if not example.prompt and getattr(tokenizer, "bos_token_id", None) is not None:
        prompt_ids = [tokenizer.bos_token_id]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    trained = 1 if data.train_on_prompt or not example.prompt else 0
    return {
        "input_ids": prompt_ids + response_ids,
        "completion_mask": [trained] * len(prompt_ids) + [1] * len(response_ids),
    }


def _encode_chat(example: Example, tokenizer, data: Data) -> dict:
    """The whole conversation tokenized once, exactly as inference will see it, with the assistant turns trained.

    Each assistant turn's characters are found by rendering the conversation up to it: the text up to its header,
    and the text up to its end, must both be prefixes of the whole rendering. A template that renders history
    differently as the conversation grows (one that strips earlier reasoning, say) breaks that; then its
    {% generation %} markers are used if it has them, else the example stops with a message naming the template.
    """
    messages, tools = example.messages, example.tools
    if data.train_on_prompt:
        ids = tokenizer(_render(tokenizer, messages, tools))["input_ids"]
        return {"input_ids": ids, "completion_mask": [1] * len(ids)}
    full = _render(tokenizer, messages, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], tools, generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], tools)
        if not (full.startswith(head) and full.startswith(upto) and len(upto) >= len(head)):
            return _encode_with_generation_markers(example, tokenizer)
        spans.append((len(head), len(upto)))
    encoded = tokenizer(full, return_offsets_mapping=True)
    mask = [
        int(end > start and any(start < e and end > s for s, e in spans)) for start, end in encoded["offset_mapping"]
    ]
    return {"input_ids": encoded["input_ids"], "completion_mask": mask}


def _render(tokenizer, messages, tools, *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def _encode_with_generation_markers(example: Example, tokenizer) -> dict:
    if not re.search(r"\{%-?\s*generation\s*-?%\}", tokenizer.chat_template or ""):
        raise UserError(
            f"{example.where}: the chat template renders earlier turns differently as the conversation grows "
            "(it changes or strips earlier assistant turns), so the assistant's tokens cannot be told apart",
            hint="mark the assistant turns with {% generation %} ... {% endgeneration %} in data.chat_template, use "
            'data.chat_template="chatml", or train on everything with data.train_on_prompt=true',
        )
    out = tokenizer.apply_chat_template(
        example.messages, tools=example.tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return {"input_ids": list(out["input_ids"]), "completion_mask": list(out["assistant_masks"])}


# ---------------------------------------------------------------------------------------------- the pipeline


@dataclass
class Prepared:
    """The training rows and what happened on the way: nothing is dropped or cut without a line here."""

    rows: list[dict]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(where, why) for each example removed while tokenizing."""
    truncated: list[tuple[str, str]] = field(default_factory=list)
    """(where, how) for each example cut to fit max_seq_length."""
    documents: int = 0
    """Text documents read; each becomes one or more `rows` (windows)."""
    lengths: list[int] = field(default_factory=list)
    """Each example's (or document's) length in tokens before anything was cut: for length advice."""

    @property
    def tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(r["completion_mask"]) for r in self.rows)

    def counts(self) -> dict:
        return {
            "rows": len(self.rows),
            "documents": self.documents,
            "dropped_while_tokenizing": len(self.dropped),
            "truncated": len(self.truncated),
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
        }


def prepare(examples: list[Example], tokenizer, recipe: Recipe) -> Prepared:
    """Examples -> rows of at most max_seq_length tokens: documents cut into windows, other examples encoded and fitted
    by data.too_long. Raises UserError when nothing is left, saying why."""
    limit, data = recipe.max_seq_length, recipe.data
    documents = [ex for ex in examples if ex.document]
    rows, lengths = windows(documents, tokenizer, limit, data.stride)
    prepared = Prepared(rows=rows, documents=len(documents), lengths=lengths)
    for ex in examples:
        if ex.document:
            continue
        row = encode(ex, tokenizer, data)
        prepared.lengths.append(len(row["input_ids"]))
        fitted, note = fit(row, limit, data.too_long, bos=getattr(tokenizer, "bos_token_id", None))
        if fitted is None:
            prepared.dropped.append((ex.where, note))
        else:
            prepared.rows.append(fitted)
            if note:
                prepared.truncated.append((ex.where, note))
    if not prepared.rows:
        first = prepared.dropped[0][1] if prepared.dropped else "no examples"
        other = "" if data.too_long == "truncate" else ", or set data.too_long=truncate to cut the ends"
        raise UserError(
            f"{data.path}: no example fits max_seq_length={limit} (the first: {first})",
            hint=f"raise max_seq_length (`quickft data` recommends one){other}",
        )
    return prepared


def fit(row: dict, limit: int, policy: str, *, bos: int | None = None) -> tuple[dict | None, str | None]:
    """(the row cut to `limit` tokens, or None if dropped; what was done and why, or None if it fit as it was)."""
    ids, mask = row["input_ids"], row["completion_mask"]
    n = len(ids)
    if n <= limit:
        return row, None
    too_long = f"{n} tokens > max_seq_length={limit}"
    if policy == "drop":
        return None, f"too long ({too_long})"
    if policy == "truncate":
        if not any(mask[:limit]):
            return None, f"too long ({too_long}), and the answer starts after token {limit}"
        return {"input_ids": ids[:limit], "completion_mask": mask[:limit]}, f"end cut ({too_long})"
    keep_bos = int(bos is not None and ids[0] == bos)
    if all(mask[keep_bos:]):  # everything is trained (train_on_prompt): there is no prompt to cut, cut the end
        return {"input_ids": ids[:limit], "completion_mask": mask[:limit]}, f"end cut ({too_long})"
    cut = n - limit
    if any(mask[keep_bos : keep_bos + cut]):  # the cut would reach into the answer: it does not fit
        answer = n - next(i for i, m in enumerate(mask) if m)
        return None, f"too long ({too_long}): the answer alone is {answer} tokens"
    kept = list(range(keep_bos)) + list(range(keep_bos + cut, n))
    return (
        {"input_ids": [ids[i] for i in kept], "completion_mask": [mask[i] for i in kept]},
        f"prompt cut from the left by {cut} tokens ({too_long})",
    )


def windows(documents: list[Example], tokenizer, limit: int, stride: int = 0) -> tuple[list[dict], list[int]]:
    """Documents as one token stream (each opened by BOS where the tokenizer has a distinct one, closed by EOS), cut
    into windows of `limit` tokens. With a stride below `limit`, each window starts `stride` tokens after the last
    one, and its first limit - stride tokens (already trained in the previous window) are context only.
    Returns (windows, each document's length in tokens)."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), tokenizer.eos_token_id
    stream: list[int] = []
    lengths = []
    for doc in documents:
        ids = (
            ([bos] if bos is not None and bos != eos else [])
            + tokenizer(doc.response, add_special_tokens=False)["input_ids"]
            + [eos]
        )
        lengths.append(len(ids))
        stream += ids
    step = stride or limit
    rows, start = [], 0
    while start < len(stream):
        ids = stream[start : start + limit]
        context = 0 if start == 0 else limit - step
        if len(ids) > context and len(ids) >= 2:  # a one-token window has nothing to predict
            rows.append({"input_ids": ids, "completion_mask": [0] * context + [1] * (len(ids) - context)})
        if start + limit >= len(stream):
            break
        start += step
    return rows, lengths
