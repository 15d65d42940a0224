"""Data: a reader per format -> one internal example shape; prompt/chat formatting; loss masking.

Readers are pure Python. Tokenizing takes any Hugging Face tokenizer but imports nothing heavy itself.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from quickft.errors import UserError
from quickft.recipe import Data

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML}
ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Example:
    """One training example: prompt/response, or a chat (messages); `where` is "file:line" for messages."""

    prompt: str = ""
    response: str = ""
    messages: list[dict] | None = None
    where: str = ""


# ---------------------------------------------------------------------------------------------- reading


def read_examples(path: str | Path, data: Data) -> list[Example]:
    """Read a data file in `data.format` (or a guessed one) into examples. Raises UserError naming file and line."""
    return read_data(path, data)[1]


def read_data(path: str | Path, data: Data) -> tuple[str, list[Example]]:
    """(the format actually used, the examples): `auto` is resolved so a run can save what it trained on."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}", hint="data paths are relative to the current directory")
    try:
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason})",
            hint="re-save the file as UTF-8 (most editors: Save with encoding -> UTF-8)",
        ) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty", hint="add training examples to it")
    fmt = data.format if data.format != "auto" else guess_format(path, text)
    reader = {
        "blocks": _read_blocks,
        "alpaca": _read_json_records,
        "chat": _read_json_records,
        "sharegpt": _read_json_records,
        "csv": _read_csv,
        "text": _read_text,
    }[fmt]
    examples = reader(path, text, fmt, data)
    if not examples:
        raise UserError(f"{path}: no examples found (format {fmt})", hint="check the file's format matches data.format")
    if fmt not in ("chat", "sharegpt", "text") and all(not ex.response.strip() for ex in examples):
        raise UserError(f"{path}: every response is empty", hint="each example needs an answer to learn from")
    return fmt, examples


def guess_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".json", ".jsonl"):
        first = _json_records(path, text)[0][1] if text.strip() else {}
        if "messages" in first:
            return "chat"
        if "conversations" in first:
            return "sharegpt"
        return "alpaca"
    if "Pregunta:" in text or "\n###\n" in text:
        return "blocks"
    return "text"


def _read_blocks(path: Path, text: str, fmt: str, data: Data) -> list[Example]:
    """Blocks separated by `###` lines, each with `Pregunta:` then `Respuesta:` (which may span lines)."""
    examples, block, start = [], [], 1
    lines = text.split("\n") + ["###"]
    for number, line in enumerate(lines, 1):
        if line.strip() == "###":
            body = "\n".join(block).strip()
            if body:
                examples.append(_parse_block(path, body, start))
            block, start = [], number + 1
        elif block or line.strip():
            block.append(line)
        else:  # blank lines before a block's first line
            start = number + 1
    return examples


def _parse_block(path: Path, body: str, line: int) -> Example:
    where = f"{path}:{line}"
    q_at, a_at = body.find("Pregunta:"), body.find("Respuesta:")
    if q_at < 0:
        raise UserError(f"{where}: block has no 'Pregunta:' line", hint="start each block with 'Pregunta: ...'")
    if a_at < 0:
        raise UserError(
            f"{where}: block has no 'Respuesta:' line",
            hint="add 'Respuesta: ...' after the question, and separate blocks with a line holding only ###",
        )
    if a_at < q_at:
        raise UserError(f"{where}: 'Respuesta:' comes before 'Pregunta:'", hint="put the question first")
    prompt = body[q_at + len("Pregunta:") : a_at].strip()
    response = body[a_at + len("Respuesta:") :].strip()
    return Example(prompt=prompt, response=response, where=where)


def _json_records(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line, record) pairs from a JSON array or JSON Lines file."""
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}", hint="fix the JSON syntax there") from None
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a JSON list of records", hint="wrap the records in [ ... ]")
        pairs = [(0, r) for r in records]
    else:
        pairs = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                pairs.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{number}: invalid JSON Lines record: {e.msg} (column {e.colno})",
                    hint="each line must be one complete JSON object",
                ) from None
    for number, record in pairs:
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return pairs


def _read_json_records(path: Path, text: str, fmt: str, data: Data) -> list[Example]:
    examples = []
    for number, record in _json_records(path, text):
        where = f"{path}:{number}" if number else f"{path} (record {len(examples) + 1})"
        if fmt == "alpaca":
            missing = [k for k in ("instruction", "output") if not isinstance(record.get(k), str)]
            if missing:
                raise UserError(
                    f"{where}: Alpaca record without {' and '.join(repr(m) for m in missing)}",
                    hint='each record needs {"instruction": ..., "input": optional, "output": ...}',
                )
            prompt = record["instruction"].strip()
            if str(record.get("input") or "").strip():
                prompt += "\n\n" + record["input"].strip()
            examples.append(Example(prompt=prompt, response=record["output"].strip(), where=where))
        else:
            key = "messages" if fmt == "chat" else "conversations"
            turns = record.get(key)
            if not isinstance(turns, list) or not turns:
                raise UserError(f"{where}: record without a {key!r} list", hint=f"give each record a {key!r} list")
            examples.append(Example(messages=_messages(turns, fmt, where), where=where))
    return examples


def _messages(turns: list, fmt: str, where: str) -> list[dict]:
    messages = []
    for turn in turns:
        if fmt == "chat":
            role, content = (turn.get("role"), turn.get("content")) if isinstance(turn, dict) else (None, None)
            if role not in ROLES:
                raise UserError(
                    f"{where}: unknown role {role!r}", hint=f"roles must be one of {', '.join(sorted(ROLES))}"
                )
        else:
            speaker, content = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
            role = SHAREGPT_ROLES.get(speaker)
            if role is None:
                raise UserError(
                    f"{where}: unknown ShareGPT speaker {speaker!r}",
                    hint=f"'from' must be one of {', '.join(sorted(SHAREGPT_ROLES))}",
                )
        if not isinstance(content, str):
            raise UserError(f"{where}: a {role} turn has no text content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise UserError(f"{where}: conversation without an assistant turn", hint="add the answer to learn from")
    return messages


def _read_csv(path: Path, text: str, fmt: str, data: Data) -> list[Example]:
    reader = csv.DictReader(text.split("\n"))
    columns = reader.fieldnames or []
    missing = [c for c in (data.question_column, data.answer_column) if c not in columns]
    if missing:
        raise UserError(
            f"{path}: CSV has no column {' or '.join(repr(m) for m in missing)} (columns: {', '.join(columns)})",
            hint="set data.question_column and data.answer_column to the header names",
        )
    return [
        Example(
            prompt=row[data.question_column].strip(),
            response=(row[data.answer_column] or "").strip(),
            where=f"{path}:{number}",
        )
        for number, row in enumerate(reader, 2)
        if (row.get(data.question_column) or "").strip()
    ]


def _read_text(path: Path, text: str, fmt: str, data: Data) -> list[Example]:
    """Plain text for completion training: each paragraph (separated by blank lines) is one example."""
    return [Example(response=p.strip(), where=str(path)) for p in text.split("\n\n") if p.strip()]


def clean_examples(examples: list[Example]) -> tuple[list[Example], list[tuple[str, str]]]:
    """(kept, dropped): drop examples with an empty answer and exact duplicates; dropped = (where, reason)."""
    kept, dropped, seen = [], [], set()
    for ex in examples:
        key = repr(ex.messages) if ex.messages is not None else (ex.prompt, ex.response)
        if ex.messages is None and not ex.response.strip():
            dropped.append((ex.where, "empty answer"))
        elif key in seen:
            dropped.append((ex.where, "duplicate of an earlier example"))
        else:
            seen.add(key)
            kept.append(ex)
    return kept, dropped


# ---------------------------------------------------------------------------------------------- formatting


def format_prompt(prompt: str, data: Data) -> str:
    """The exact text the model sees before its answer, for prompt/response data (training and chat use this)."""
    return data.prompt_template.replace("{prompt}", prompt)


def training_text(example: Example, data: Data) -> str:
    """The example as plain text, the way the model reads it (used to train a tokenizer for a Scratch model)."""
    if example.messages is not None:
        return "\n".join(m["content"] for m in example.messages)
    return (format_prompt(example.prompt, data) if example.prompt else "") + example.response


def encode(example: Example, tokenizer, data: Data) -> dict:
    """Token ids plus a completion mask (1 = the loss sees this token) for one example."""
    if example.messages is not None:
        return _encode_chat(example.messages, tokenizer, data)
    prompt_ids = tokenizer(format_prompt(example.prompt, data))["input_ids"] if example.prompt else []
    if not example.prompt and getattr(tokenizer, "bos_token_id", None) is not None:
        prompt_ids = [tokenizer.bos_token_id]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    trained = 1 if data.train_on_prompt or not example.prompt else 0
    return {
        "input_ids": prompt_ids + response_ids,
        "completion_mask": [trained] * len(prompt_ids) + [1] * len(response_ids),
    }


def _encode_chat(messages: list[dict], tokenizer, data: Data) -> dict:
    """Render the chat turn by turn, so that exactly the assistant turns' tokens are trained."""
    ids, mask, rendered = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":  # the "assistant" header belongs to the prompt side
            head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            ids, mask, rendered = _extend(tokenizer, ids, mask, rendered, head, data.train_on_prompt)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        ids, mask, rendered = _extend(
            tokenizer, ids, mask, rendered, full, message["role"] == "assistant" or data.train_on_prompt
        )
    return {"input_ids": ids, "completion_mask": mask}


def _extend(tokenizer, ids, mask, rendered, text, trained):
    new = text[len(rendered) :] if text.startswith(rendered) else text
    if new:
        piece = tokenizer(new, add_special_tokens=not rendered)["input_ids"]
        ids, mask = ids + piece, mask + [int(trained)] * len(piece)
    return ids, mask, text


def chat_prompt(messages: list[dict], tokenizer) -> str:
    """The text of a conversation so far, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_text(example: Example, tokenizer, data: Data) -> str:
    """What the model is given to produce `example`'s answer (its last assistant turn, for chats)."""
    if example.messages is not None:
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        return chat_prompt(example.messages[:last], tokenizer)
    return format_prompt(example.prompt, data)


def make_cases(examples: list[Example], data: Data, extra: dict[str, str], tokenizer) -> list[tuple[str, str]]:
    """Test cases as (prompt text exactly as the model sees it, expected answer): held-out examples + the recipe's."""
    cases = [(prompt_text(ex, tokenizer, data), reference_answer(ex)) for ex in examples]
    return cases + [(format_prompt(p, data), e) for p, e in extra.items()]


def reference_answer(example: Example) -> str:
    if example.messages is not None:
        return [m for m in example.messages if m["role"] == "assistant"][-1]["content"]
    return example.response
