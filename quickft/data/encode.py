"""Examples -> the token sequences that are trained: prompt and chat formatting, the loss mask, documents cut into
windows, examples that do not fit max_seq_length, and the count of every example dropped or cut, with its reason.

`prepare()` is the one pipeline to the final training rows: `quickft run`, `quickft data` and `quickft bench` all
call it, so the counts they show are the same. Takes any Hugging Face (fast) tokenizer; imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quickft.data import chat_template
from quickft.errors import UserError

if TYPE_CHECKING:  # annotations only: the examples come from readers.py, the settings from recipe.py
    from quickft.data.readers import Example
    from quickft.recipe import Data, Recipe


# ---------------------------------------------------------------------------------------------- formatting


def format_prompt(prompt: str, data: Data) -> str:
    """The exact text the model sees before its answer, for prompt/response data (training and chat use this)."""
    return data.prompt_template.replace("{prompt}", prompt)


def prompt_ids(prompt: str, tokenizer, chat: bool) -> list[int]:
    """A prompt's ids, as generation.prompt_batch makes them: a chat template's text holds its special tokens."""
    return tokenizer(prompt, add_special_tokens=not chat)["input_ids"]


def training_text(example: Example, data: Data) -> str:
    """The example as plain text, the way the model reads it (used to train a tokenizer for a Scratch model)."""
    if example.messages is not None:
        return "\n".join(filter(None, (t for m in example.messages for t in (m.get("reasoning"), m["content"]))))
    return (format_prompt(example.prompt, data) if example.prompt else "") + example.response


class ChatText(str):
    """Text a chat template rendered: it holds its special tokens (BOS included), so it is tokenized adding none,
    as apply_chat_template(tokenize=True) does (generation.py looks for this type)."""


def chat_prompt(messages: list[dict], tokenizer, tools: list[dict] | None = None, where: str = "") -> ChatText:
    """The text of a conversation so far, ending where the assistant's answer starts (the generation prompt)."""
    return ChatText(chat_template.render(tokenizer, messages, tools, generation_prompt=True, where=where))


def prompt_text(example: Example, tokenizer, data: Data) -> str:
    """What the model is given to produce `example`'s answer (its last assistant turn, for chats)."""
    if example.messages is not None:
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        return chat_prompt(example.messages[:last], tokenizer, example.tools, example.where)
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


def encode(example: Example, tokenizer, data: Data) -> list[dict]:
    """Training rows for one example: token ids plus a completion mask (1 = the loss sees this token). A prompt/response
    example is one row; a chat is one row or one per assistant turn (see `encode_chat`)."""
    if example.messages is not None:
        return encode_chat(example, tokenizer, data)[0]
    prompt_ids = tokenizer(format_prompt(example.prompt, data))["input_ids"] if example.prompt else []
    if not example.prompt and getattr(tokenizer, "bos_token_id", None) is not None:
        prompt_ids = [tokenizer.bos_token_id]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    trained = 1 if data.train_on_prompt or not example.prompt else 0
    return [
        {
            "input_ids": prompt_ids + response_ids,
            "completion_mask": [trained] * len(prompt_ids) + [1] * len(response_ids),
        }
    ]


def encode_chat(example: Example, tokenizer, data: Data, history: str | None = None) -> tuple[list[dict], str]:
    """(rows, the history choice used) for a conversation, each assistant turn trained on exactly the tokens the
    model writes for it at inference (quickft/chat_template.py works them out), everything else masked. Tokens are
    those of apply_chat_template(tokenize=True): the template writes BOS and every special token itself.

    history (data.history unless given):
      per_turn: one row per assistant turn, its prompt rendered as inference renders it then (the exact inference
        distribution; each row repeats the conversation before it).
      whole: the conversation rendered once; the turns the template keeps there are trained (a turn whose reasoning
        the template drops from history is context only), with the end-of-turn token history has.
      auto: whole where the rendering holds every turn exactly as the model writes it, else per_turn.
    """
    messages, tools, where = example.messages, example.tools, example.where
    history = history or data.history
    if data.train_on_prompt:
        ids = chat_template.tokens(tokenizer, chat_template.render(tokenizer, messages, tools, where=where))
        return [{"input_ids": ids, "completion_mask": [1] * len(ids)}], "whole"
    turns = chat_template.turns(messages, tokenizer, tools, where)
    if history in ("whole", "auto"):
        full = chat_template.render(tokenizer, messages, tools, where=where)
        spans = chat_template.whole_spans(full, messages, turns, tokenizer)
        if history == "whole" or all(span and span[2] for span in spans):
            return [_masked(full, [span[:2] for span in spans if span], tokenizer)], "whole"
    rows = []
    for turn in turns:
        prompt_ids = chat_template.tokens(tokenizer, turn.prompt)
        output_ids = chat_template.tokens(tokenizer, turn.output)
        rows.append(
            {"input_ids": prompt_ids + output_ids, "completion_mask": [0] * len(prompt_ids) + [1] * len(output_ids)}
        )
    return rows, "per_turn"


def _masked(text: str, spans: list[tuple[int, int]], tokenizer) -> dict:
    """`text` tokenized once, a token trained when its characters fall in a span. A token with empty offsets (a
    post-processor that trims whitespace from offsets, as ByteLevel(trim_offsets=True) does) stands where the token
    before it ended: its characters come next."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask, last_end = [], 0
    for start, end in encoded["offset_mapping"]:
        if end > start:
            mask.append(int(any(start < e and end > s for s, e in spans)))
        else:
            mask.append(int(any(s <= last_end < e for s, e in spans)))
        last_end = max(last_end, end)
    return {"input_ids": encoded["input_ids"], "completion_mask": mask}


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
    """Each row's (or document's) length in tokens before anything was cut: for length advice."""
    history: dict[str, int] = field(default_factory=dict)
    """Conversations by how their history was trained (encode_chat): {"whole": n, "per_turn": m}."""
    notes: list[str] = field(default_factory=list)
    """What was done to the data that the header and `quickft data` should say (a system prompt folded, ...)."""

    @property
    def tokens(self) -> int:
        """The tokens the model reads per epoch: a preference pair's prompt twice, once before each answer."""
        return sum(_row_tokens(r) for r in self.rows)

    @property
    def trained_tokens(self) -> int:
        """The tokens the loss sees: the completion's, a pair's two answers, or a KTO row's answer."""
        return sum(
            sum(r["completion_mask"])
            if "completion_mask" in r
            else len(r["chosen_ids"]) + len(r["rejected_ids"])
            if "chosen_ids" in r
            else len(r["completion_ids"])
            if "completion_ids" in r
            else 0  # a GRPO prompt: its answers are generated in training
            for r in self.rows
        )

    def counts(self) -> dict:
        return {
            "rows": len(self.rows),
            "documents": self.documents,
            "dropped_while_tokenizing": len(self.dropped),
            "truncated": len(self.truncated),
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
        }


def _row_tokens(row: dict) -> int:
    if "input_ids" in row:
        return len(row["input_ids"])
    if "chosen_ids" in row:
        return 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
    if "completion_ids" in row:  # a KTO answer
        return len(row["prompt_ids"]) + len(row["completion_ids"])
    return row["prompt_tokens"]  # a GRPO prompt, before its answers are generated


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
        if ex.messages is None:
            rows, how = encode(ex, tokenizer, data), None
        else:
            rows, how = encode_chat(ex, tokenizer, data)
            prepared.history[how] = prepared.history.get(how, 0) + 1
        for n, row in enumerate(rows, 1):
            where = ex.where if len(rows) == 1 else f"{ex.where} (assistant turn {n})"
            if not any(row["completion_mask"]):
                prepared.dropped.append((where, NOTHING_TRAINED))
                continue
            prepared.lengths.append(len(row["input_ids"]))
            fitted, note = fit(row, limit, data.too_long, bos=getattr(tokenizer, "bos_token_id", None))
            if fitted is None:
                prepared.dropped.append((where, note))
            else:
                prepared.rows.append(fitted)
                if note:
                    prepared.truncated.append((where, note))
    if prepared.history:
        prepared.notes += chat_notes(tokenizer, data, prepared.history)
    if not prepared.rows:
        first = prepared.dropped[0][1] if prepared.dropped else "no examples"
        other = "" if data.too_long == "truncate" else ", or set data.too_long=truncate to cut the ends"
        raise UserError(
            f"{data.path}: no example fits max_seq_length={limit} (the first: {first})",
            hint=f"raise max_seq_length (`quickft data` recommends one){other}",
        )
    return prepared


NOTHING_TRAINED = (
    "nothing to train: the whole rendering keeps no assistant turn as the model wrote it (the template drops its "
    "reasoning); data.history=per_turn trains each turn"
)


def history_costs(examples: list[Example], tokenizer, recipe: Recipe) -> dict[str, dict]:
    """For chat data, what each data.history choice costs: rows, tokens and trained tokens (before max_seq_length)."""
    costs = {}
    for how in ("per_turn", "whole"):
        rows = [
            r for ex in examples if ex.messages is not None for r in encode_chat(ex, tokenizer, recipe.data, how)[0]
        ]
        costs[how] = {
            "rows": sum(any(r["completion_mask"]) for r in rows),
            "tokens": sum(len(r["input_ids"]) for r in rows if any(r["completion_mask"])),
            "trained_tokens": sum(sum(r["completion_mask"]) for r in rows),
        }
    return costs


def chat_notes(tokenizer, data: Data, history: dict[str, int]) -> list[str]:
    """The header's and `quickft data`'s lines on how conversations were trained."""
    used = ", ".join(
        f"{n} {'as one row' if how == 'whole' else 'one row per assistant turn'}" for how, n in history.items()
    )
    notes = [f"chat history (data.history={data.history}): {used}"]
    if chat_template.style_of(tokenizer).folds_system:
        notes.append(
            f"{chat_template.template_name(tokenizer)} has no system role: each system prompt is put at the start of "
            "the first user turn, as the model's documentation does"
        )
    return notes


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
