"""Data: a reader per file type and record shape -> one internal example shape (Example), with every drop counted.

Pure Python, except what `datasets` reads: parquet and arrow files, `save_to_disk` folders and hub dataset ids.
Turning examples into tokens is quickft/encode.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from quickft.data.columns import ALPACA, PROMPT_KEYS, Columns, answers_for, find_columns, prompt_and_answer
from quickft.errors import UserError
from quickft.recipe import Data

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",  # LLaMA-Factory's tool-calling ShareGPT: the model's call is trained
    "observation": "tool",  # ... and the tool's answer is context
    "tool": "tool",
}
RECORD_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".parquet"}
RECORD_SHAPES = ("alpaca", "chat", "sharegpt", "pairs")
"""Shapes that exist only as records: named for a .txt file, it is read as JSON (a "text" .txt is prose)."""


@dataclass
class Example:
    """One training example: prompt/response, a chat (messages, with tool schemas if any), or a text document.
    `where` is "file:line" (or "file (record N)") so every message can point at it."""

    prompt: str = ""
    response: str = ""
    messages: list[dict] | None = None
    where: str = ""
    tools: list[dict] | None = None
    document: bool = False
    """A document for completion training: cut into max_seq_length windows, all of it trained."""


# ---------------------------------------------------------------------------------------------- reading


class Read(NamedTuple):
    format: str
    """The format actually used: `auto` is resolved so a run can save what it trained on."""
    examples: list[Example]
    columns: Columns | None = None
    """The keys a prompt/answer file was read by (see quickft/columns.py); None for other shapes."""

    def note(self, setting: str) -> str | None:
        """The one line that says which keys were read, for the header, `quickft data` and eval's stderr."""
        return f"{setting}: {self.columns.describe()}" if self.columns else None


def read_examples(path: str | Path, data: Data, *, setting: str = "data.path") -> list[Example]:
    """Read a data file in `data.format` (or a guessed one) into examples. Raises UserError naming file and line."""
    return read_data(path, data, setting=setting).examples


def read_data(path: str | Path, data: Data, *, setting: str = "data.path") -> Read:
    """The format used, the examples and the keys read. `setting` is where the path was given (data.path,
    data.test_path, eval.path, --cases), for messages that say how to give another."""
    text_path, path = str(path), Path(path)
    suffix = path.suffix.lower()
    columns = None
    if path.is_dir() or (suffix == ".arrow" and path.is_file()) or (not path.exists() and is_hub_id(text_path)):
        fmt, examples, columns = _read_dataset(text_path, data, setting)
    elif not path.is_file():
        raise UserError(f"data file not found: {path}", hint="data paths are relative to the current directory")
    elif suffix in RECORD_SUFFIXES or data.format in RECORD_SHAPES or data.format == "csv":
        fmt, examples, columns = _read_records(path, suffix, data)
    else:
        text = _read_text_file(path)
        fmt = data.format if data.format != "auto" else guess_format(path, text)
        examples = _read_blocks(path, text) if fmt == "blocks" else _read_documents(path, text, data)
    if not examples:
        raise UserError(f"{path}: no examples found (format {fmt})", hint="check the file's format matches data.format")
    if fmt not in ("chat", "sharegpt", "text") and all(not ex.response.strip() for ex in examples):
        raise UserError(f"{path}: every response is empty", hint="each example needs an answer to learn from")
    if data.use_chat_template:
        examples = as_conversations(examples, path, fmt)
    return Read(fmt, examples, columns)


def as_conversations(examples: list[Example], path, fmt: str) -> list[Example]:
    """Prompt/response examples as one-turn conversations, for data.use_chat_template (chats stay as they are)."""
    if fmt == "text":
        raise UserError(
            f"{path}: data.use_chat_template turns prompt/response examples into conversations; this file holds text "
            "documents, which have no prompt",
            hint="set data.use_chat_template=false, or give prompt/response data",
        )
    return [
        ex
        if ex.messages is not None
        else Example(
            messages=[{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}],
            where=ex.where,
        )
        for ex in examples
    ]


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason})",
            hint="re-save the file as UTF-8 (most editors: Save with encoding -> UTF-8)",
        ) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty", hint="add training examples to it")
    return text


def guess_format(path: Path, text: str) -> str:
    """The format of a file that holds text, not records: blocks or text (records: see guess_shape)."""
    if path.suffix.lower() in RECORD_SUFFIXES:
        return "csv" if path.suffix.lower() in (".csv", ".tsv") else guess_shape(path, _json_records(path, text), None)
    if "Pregunta:" in text or "\n###\n" in text:
        return "blocks"
    return "text"


def _read_records(path: Path, suffix: str, data: Data) -> tuple[str, list[Example], Columns | None]:
    """JSON, JSON Lines, CSV or parquet: records (dicts), then examples of the shape data.format names or auto finds."""
    fmt = data.format
    if fmt == "blocks":
        raise UserError(
            f"{path}: data.format=blocks reads ### text blocks, but this is a {_kind(suffix)} file",
            hint="set data.format=auto (or the shape of its records: alpaca, chat, sharegpt, pairs, text)",
        )
    if fmt == "csv" and suffix in (".json", ".jsonl", ".parquet"):
        raise UserError(
            f"{path}: data.format=csv reads comma-separated rows, but this is a {_kind(suffix)} file",
            hint="set data.format=auto: JSON, JSON Lines and parquet records are recognised by their keys",
        )
    if suffix == ".parquet":
        records = _parquet_records(path)
    else:
        text = _read_text_file(path)
        if suffix in (".csv", ".tsv") or fmt == "csv":
            records = _csv_records(path, text, delimiter="\t" if suffix == ".tsv" else ",")
        else:
            records = _json_records(path, text, expected=fmt)
    shape = "pairs" if fmt == "csv" else fmt
    if shape == "auto":
        shape = guess_shape(path, records, data)
    columns = _file_columns(path, records, shape, data)
    examples = [_record_example(where, record, shape, data, columns) for where, record in records]
    return ("csv" if suffix in (".csv", ".tsv") and shape == "pairs" else shape), examples, columns


def _kind(suffix: str) -> str:
    return {".jsonl": "JSON Lines", ".json": "JSON", ".csv": "CSV", ".tsv": "TSV", ".parquet": "parquet"}[suffix]


def guess_shape(path: Path, records: list[tuple[str, dict]], data: Data | None) -> str:
    """Which record shape: by the keys of the first record (the prompt/answer keys: quickft/columns.py)."""
    keys = set(records[0][1]) if records else set()
    where = records[0][0] if records else str(path)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    columns = find_columns(keys, data, where)
    if columns is not None:
        return "alpaca" if columns == ALPACA else "pairs"
    if (data.text_column if data else "text") in keys:
        return "text"
    is_csv = path.suffix.lower() in (".csv", ".tsv")
    prompt = next((k for k in (data and data.question_column, *PROMPT_KEYS) if k and k in keys), None)
    if prompt is not None:
        answers = answers_for(prompt)
        raise UserError(
            f"{where}: {prompt!r} without an answer {'column' if is_csv else 'key'} to go with it "
            f"({'columns' if is_csv else 'keys'}: {', '.join(sorted(keys))})",
            hint=(f"give each record its answer under {' or '.join(answers)}, or " if answers else "")
            + "name the answer's key: data.answer_column=KEY",
        )
    if is_csv and data:
        raise UserError(
            f"{path}: CSV without prompt and answer columns quickft knows (columns: {', '.join(sorted(keys))})",
            hint="name them: data.question_column= and data.answer_column= (the header names)",
        )
    raise UserError(
        f"{where}: cannot tell the format from the keys {sorted(keys)}",
        hint="name the keys: data.question_column= and data.answer_column= (pairs), or data.text_column= (documents);"
        " or set data.format to alpaca, chat, sharegpt, pairs or text",
    )


def _file_columns(path: Path, records: list[tuple[str, dict]], shape: str, data: Data) -> Columns | None:
    """The prompt/answer keys of a file of pairs, from its first record: every record is read by the same ones."""
    if shape == "alpaca":
        return ALPACA
    if shape != "pairs" or not records:
        return None
    where, first = records[0]
    columns = find_columns(first, data, where)
    if columns is None:
        raise UserError(
            f"{where}: data.format={data.format}, but no prompt and answer keys quickft knows in "
            f"{', '.join(sorted(first))}",
            hint="name them: data.question_column= and data.answer_column=, or set data.format=auto",
        )
    return columns


def _json_records(path: Path, text: str, expected: str = "auto") -> list[tuple[str, dict]]:
    """(where, record) pairs from a JSON array or JSON Lines file."""
    stripped = text.lstrip()
    if not stripped.startswith(("[", "{")):
        guess = "blocks" if ("Pregunta:" in text or "\n###\n" in text) else "text"
        raise UserError(
            f"{path}: data.format={expected} reads JSON records, but this file is not JSON (it looks like {guess})",
            hint=f"set data.format={guess}, or data.format=auto",
        )
    if path.suffix.lower() == ".json" or stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}", hint="fix the JSON syntax there") from None
        if isinstance(records, dict) and len(records) == 1 and isinstance(next(iter(records.values())), list):
            records = next(iter(records.values()))  # {"data": [...]}, as some dumps wrap their records
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a JSON list of records", hint="wrap the records in [ ... ]")
        pairs = [(f"{path} (record {i})", r) for i, r in enumerate(records, 1)]
    else:
        pairs = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                pairs.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{number}: invalid JSON Lines record: {e.msg} (column {e.colno})",
                    hint="each line must be one complete JSON object",
                ) from None
    for where, record in pairs:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return pairs


def _csv_records(path: Path, text: str, *, delimiter: str) -> list[tuple[str, dict]]:
    """Rows as records; quoted fields keep their line breaks (multi-line answers stay multi-line)."""
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    records, start = [], 2
    try:
        for row in reader:
            records.append((f"{path}:{start}", {k: v for k, v in row.items() if k is not None}))
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: invalid CSV: {e}", hint="check the quoting on that line") from None
    if not reader.fieldnames:
        raise UserError(f"{path}: CSV without a header line", hint="the first line must name the columns")
    return records


def is_hub_id(text: str) -> bool:
    """Whether a data path that is not on disk reads as a hub dataset id ("tatsu-lab/alpaca", "org/name")."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not Path(text).suffix


def read_records(
    path: str | Path, data: Data, expected: str = "auto", *, setting: str = "data.path"
) -> list[tuple[str, dict]] | None:
    """(where, record) pairs of a record file (JSON, JSON Lines, CSV / TSV, parquet) or a `datasets` dataset (a hub
    id, a save_to_disk folder, an .arrow file); None for a text file (### blocks, documents). The preference and
    GRPO readers read their records through this."""
    text_path, path = str(path), Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() or (suffix == ".arrow" and path.is_file()) or (not path.exists() and is_hub_id(text_path)):
        return _dataset_records(text_path, data, setting)
    if not path.is_file():
        raise UserError(f"data file not found: {path}", hint="data paths are relative to the current directory")
    if suffix == ".parquet":
        return _parquet_records(path)
    if suffix in (".csv", ".tsv"):
        return _csv_records(path, _read_text_file(path), delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in RECORD_SUFFIXES:
        return _json_records(path, _read_text_file(path), expected=expected)
    return None


def _read_dataset(path: str, data: Data, setting: str) -> tuple[str, list[Example], Columns | None]:
    """A `datasets` dataset: a save_to_disk folder (a Dataset, or a DatasetDict's data.split), an .arrow file, or a
    hub id (loaded with load_dataset, split data.split). Its rows are records, read like JSON Lines records."""
    records = _dataset_records(path, data, setting)
    fmt = data.format
    if fmt in ("blocks", "csv"):
        raise UserError(
            f"{path}: data.format={fmt} reads a text file, but this is a dataset of records",
            hint="set data.format=auto (or the shape of its records: alpaca, chat, sharegpt, pairs, text)",
        )
    shape = guess_shape(Path(path), records, data) if fmt == "auto" else fmt
    columns = _file_columns(Path(path), records, shape, data)
    return shape, [_record_example(w, record, shape, data, columns) for w, record in records], columns


def _dataset_records(path: str, data: Data, setting: str = "data.path") -> list[tuple[str, dict]]:
    """The rows of a `datasets` dataset as (where, record) pairs (see _read_dataset)."""
    where = Path(path)
    is_file_or_folder = where.is_dir() or where.suffix.lower() == ".arrow"
    if not is_file_or_folder:
        _require_hub(path, setting)  # before `datasets` is even imported
    import datasets

    if where.is_dir():
        if (where / "dataset_dict.json").is_file():
            splits = datasets.load_from_disk(path)
            if data.split not in splits:
                raise UserError(
                    f"{path}: no split {data.split!r} in this dataset (splits: {', '.join(splits)})",
                    hint=f"set data.split to one of {', '.join(splits)}",
                )
            table = splits[data.split]
        elif (where / "state.json").is_file():
            table = datasets.load_from_disk(path)
        else:
            raise UserError(
                f"{path} is a folder, not a data file or a dataset saved with save_to_disk",
                hint=f"give {setting} a file (JSON Lines, CSV, parquet, ...) or a save_to_disk folder",
            )
    elif where.suffix.lower() == ".arrow":
        try:
            table = datasets.Dataset.from_file(path)
        except Exception as e:  # pyarrow raises several types for a file that is not arrow
            raise UserError(f"{path}: cannot read it as a datasets arrow file: {e}", hint="check the file") from None
    else:
        try:
            table = datasets.load_dataset(path, data.subset, split=data.split)
        except ValueError as e:  # an unknown split or configuration: the message lists the ones there are
            raise UserError(
                f"{setting} {path!r}: {e}",
                hint="set data.split to one of the dataset's splits, data.subset to one of its configurations",
            ) from None
    if isinstance(table, datasets.IterableDataset) or not hasattr(table, "__len__"):
        raise UserError(f"{path}: a streaming dataset", hint="save it with save_to_disk and point data.path there")
    records = [(f"{path} (row {i})", row) for i, row in enumerate(table, 1)]
    if not records:
        raise UserError(f"{path}: the dataset has no rows", hint="check the split (data.split)")
    return records


def _require_hub(dataset_id: str, setting: str) -> None:
    """A hub dataset needs the hub: say so at once, before anything loads, when it is switched off or unreachable."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    hint = (
        "download it where there is internet and save it to disk: "
        f"datasets.load_dataset({dataset_id!r}, split=...).save_to_disk(DIR), then {given(setting, 'DIR')}"
    )
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise UserError(
            f"{setting} {dataset_id!r}: no such file here, and as a hub dataset id it needs the hub, which is switched "
            "off (HF_HUB_OFFLINE)",
            hint=hint,
        )
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3.0).close()
    except OSError:
        raise UserError(
            f"{setting} {dataset_id!r}: no such file here, and as a hub dataset id it needs {host}, which is "
            "unreachable (offline?)",
            hint=hint,
        ) from None


def given(setting: str, value: str) -> str:
    """How to give `setting` a value: a recipe key as an override (data.path=DIR), a command's option (--cases DIR)."""
    return f"{setting} {value}" if setting.startswith("--") else f"set {setting}={value}"


def _parquet_records(path: Path) -> list[tuple[str, dict]]:
    from datasets import Dataset

    try:
        table = Dataset.from_parquet(str(path))
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise UserError(f"{path}: cannot read it as parquet: {e}", hint="check the file") from None
    return [(f"{path} (row {i})", row) for i, row in enumerate(table, 1)]


def _record_example(where: str, record: dict, shape: str, data: Data, columns: Columns | None) -> Example:
    if columns is not None:
        return _pair_example(where, record, data, columns)
    if shape == "text":
        text = record.get(data.text_column)
        if not isinstance(text, str):
            raise UserError(
                f"{where}: no text under {data.text_column!r} (keys: {', '.join(sorted(record))})",
                hint="set data.text_column to the key that holds the document",
            )
        return Example(response=text, where=where, document=True)
    key = "messages" if shape == "chat" else "conversations"
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise UserError(
            f"{where}: record without a {key!r} list (keys: {', '.join(sorted(record))})",
            hint=f"give each record a {key!r} list, or set data.format to the shape it has",
        )
    tools = record.get("tools")
    if isinstance(tools, str) and tools.strip():  # LLaMA-Factory stores the schemas as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise UserError(
                f"{where}: 'tools' is not valid JSON", hint="store the tool schemas as a JSON list"
            ) from None
    return Example(messages=_messages(turns, shape, where), where=where, tools=tools or None)


def _pair_example(where: str, record: dict, data: Data, columns: Columns) -> Example:
    """A prompt/answer record, read by the keys its file's first record was (every record by the same ones)."""
    needed = (columns.prompt, columns.answer)
    missing = [k for k in needed if not (isinstance(record.get(k), str) if columns.context else k in record)]
    if missing:
        raise UserError(
            f"{where}: {f'{columns.known_as} record' if columns.known_as else 'record'} without "
            f"{' and '.join(repr(m) for m in missing)} (keys: {', '.join(sorted(record))})",
            hint=f"every record needs the keys the first one has: {columns.describe()}"
            if data.format == "auto"
            else f"each record needs {' and '.join(map(repr, needed))}; data.format=auto recognises other shapes",
        )
    prompt, response = prompt_and_answer(record, columns)
    if isinstance(prompt, list) and isinstance(response, list):  # TRL's conversational prompt/completion
        return Example(messages=_messages(prompt + response, "chat", where), where=where)
    if not isinstance(prompt, str) or not isinstance(response, (str, type(None))):
        raise UserError(f"{where}: {columns.prompt!r} and {columns.answer!r} must be text")
    return Example(prompt=prompt, response=response or "", where=where)


def _messages(turns: list, fmt: str, where: str, *, answered: bool = True) -> list[dict]:
    """Turns (OpenAI `messages` or ShareGPT `conversations`) as messages; `answered`: with an assistant turn."""
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise UserError(f"{where}: a turn is {type(turn).__name__}, not an object")
        if fmt == "chat":
            role, content = turn.get("role"), turn.get("content")
            if role == "function":  # the legacy OpenAI name of a tool's answer
                role = "tool"
            if role not in ROLES:
                raise UserError(
                    f"{where}: unknown role {role!r}", hint=f"roles must be one of {', '.join(sorted(ROLES))}"
                )
        else:
            speaker, content = turn.get("from"), turn.get("value")
            role = SHAREGPT_ROLES.get(speaker)
            if role is None:
                raise UserError(
                    f"{where}: unknown ShareGPT speaker {speaker!r}",
                    hint=f"'from' must be one of {', '.join(sorted(SHAREGPT_ROLES))}",
                )
        message = {"role": role, "content": _text_content(content, role, where)}
        for key in ("tool_calls", "tool_call_id", "name"):  # kept for chat templates that render tools
            if turn.get(key) is not None:
                message[key] = turn[key]
        if message["content"] is None and not message.get("tool_calls"):
            raise UserError(f"{where}: a {role} turn has no text content")
        message["content"] = message["content"] or ""
        if role == "assistant":
            _read_reasoning(message, turn, where)
        messages.append(message)
    if answered and not any(
        m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages
    ):
        raise UserError(f"{where}: conversation without an assistant turn", hint="add the answer to learn from")
    return messages


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
"""Where published data keeps an answer's reasoning: DeepSeek's and Qwen's API (reasoning_content), OpenAI's
open-weight models and OpenRouter (reasoning, thinking)."""
THINK_IN_CONTENT = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.DOTALL)


def _read_reasoning(message: dict, turn: dict, where: str) -> None:
    """An assistant turn's reasoning into message["reasoning"]: a reasoning field, or a <think> block that opens its
    content (taken out of the content, so each template renders it its own way)."""
    fields = [k for k in REASONING_KEYS if isinstance(turn.get(k), str) and turn[k].strip()]
    found = THINK_IN_CONTENT.match(message["content"])
    if fields and found:
        raise UserError(
            f"{where}: an assistant turn has both {fields[0]!r} and a <think> block in its content",
            hint="keep the reasoning in one place",
        )
    if fields:
        message["reasoning"] = turn[fields[0]].strip("\n")
    elif found:
        message["reasoning"] = found.group(1).strip("\n")
        message["content"] = message["content"][found.end() :]


def _text_content(content, role: str, where: str) -> str | None:
    """A turn's text: a string, or a list of text parts joined: OpenAI's {"type": "text", "text": ...} and
    LLaMA-Factory's {"type": "text", "value": ...}."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            text = next((part[k] for k in ("text", "value") if isinstance(part.get(k), str)), None) if kind else None
            if kind != "text" or text is None:
                raise UserError(
                    f"{where}: a {role} turn has a {kind or type(part).__name__!r} part, which a text-only model "
                    "cannot be trained on",
                    hint="keep only text parts, or drop those records",
                )
            texts.append(text)
        return "".join(texts)
    raise UserError(f"{where}: a {role} turn's content is {type(content).__name__}, not text")


def _read_blocks(path: Path, text: str) -> list[Example]:
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


def document_split(text: str, how: str) -> str:
    """Which way a plain-text file splits into documents (resolves data.documents="auto")."""
    if how != "auto":
        return how
    if re.search(r"\n\s*\n", text.strip()):
        return "paragraphs"
    lines = [line for line in text.split("\n") if line.strip()]
    return "lines" if len(lines) > 1 and sum(map(len, lines)) / len(lines) >= 200 else "file"


def _read_documents(path: Path, text: str, data: Data) -> list[Example]:
    """Plain text for completion training: documents (paragraphs, lines or the whole file), later cut into windows."""
    how = document_split(text, data.documents)
    if how == "paragraphs":
        pieces, line = [], 1
        for block in re.split(r"(\n\s*\n)", text):
            if block.strip() and not re.fullmatch(r"\n\s*\n", block):
                pieces.append((line + len(block) - len(block.lstrip("\n")), block.strip()))
            line += block.count("\n")
    elif how == "lines":
        pieces = [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    else:
        pieces = [(1, text.strip())]
    return [Example(response=body, where=f"{path}:{n}", document=True) for n, body in pieces]


def clean_examples(examples: list[Example]) -> tuple[list[Example], list[tuple[str, str]]]:
    """(kept, dropped): drop examples with nothing to learn and exact duplicates; dropped = (where, reason)."""
    kept, dropped, seen = [], [], set()
    for ex in examples:
        key = repr((ex.messages, ex.tools)) if ex.messages is not None else (ex.prompt, ex.response)
        if ex.messages is None and not ex.response.strip():
            dropped.append((ex.where, "empty document" if ex.document else "empty answer"))
        elif key in seen:
            dropped.append((ex.where, "duplicate of an earlier example"))
        else:
            seen.add(key)
            kept.append(ex)
    return kept, dropped
