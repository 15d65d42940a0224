"""Prompts for method="grpo": a reader per published shape -> one internal shape (Task), with every drop counted;
and the rows GRPOTrainer samples from (the prompt as the model sees it, the record's columns for the rewards).

The shapes, each recognised by its keys (the data's other keys are columns the rewards are given):
- a prompt and its answer, by the keys SFT data is read by (quickft/columns.py: question/answer as GSM8K writes it,
  its "#### 42" the final answer; problem/solution as MATH; prompt/completion, prompt/answer, Alpaca's, Dolly's,
  MetaMathQA's, or data.question_column/data.answer_column). An `answer` key beside them is the reference instead
  (the short final answer MATH-500 publishes beside the worked solution);
- a prompt alone (any of those prompt keys: {"prompt": ...}): rewards that need no reference answer;
- chat: `messages` (or ShareGPT `conversations`, or TRL's conversational `prompt` list) ending with the user's
  turn, with an `answer` key; or ending with an assistant turn, which is then the reference answer;
- a ### blocks text file (Pregunta:/Respuesta:), as for SFT: the response is the reference answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quickft.data import readers
from quickft.data.columns import ANSWER_KEYS, PROMPT_KEYS, find_columns, prompt_and_answer
from quickft.data.encode import Prepared, chat_prompt, format_prompt, prompt_ids
from quickft.errors import UserError
from quickft.recipe import Data

CHAT_KEYS = (("messages", "chat"), ("conversations", "sharegpt"), ("prompt", "chat"))


@dataclass
class Task:
    """One prompt to answer: text, or the messages before the answer; the reference answer (None: none given); the
    record's other keys, for the rewards."""

    prompt: str | list[dict]
    answer: str | None
    where: str
    columns: dict
    tools: list[dict] | None = None

    @property
    def chat(self) -> bool:
        return isinstance(self.prompt, list)


def read_tasks(path: str | Path, data: Data) -> tuple[str, list[Task], list[tuple[str, str]]]:
    """(the shape read, the tasks, the drops as (where, reason)). A file without prompts is a UserError."""
    path = Path(path)
    records = readers.read_records(path, data)
    if records is not None:  # a record file, or a datasets dataset (openai/gsm8k from the hub, a save_to_disk folder)
        if not records:
            raise UserError(f"{path}: no records", hint="method='grpo' needs prompts to answer")
        shapes, tasks = set(), []
        for where, record in records:
            shape, task = _task(where, record, data)
            shapes.add(shape)
            tasks.append(task)
        shape = " + ".join(sorted(shapes))
    else:  # ### blocks: the SFT readers' examples
        shape, examples, _ = readers.read_data(path, data)
        if any(ex.document for ex in examples):
            raise UserError(
                f"{path}: text documents have no prompts to answer",
                hint="method='grpo' needs prompts (and answers for exact_answer): question/answer records, chat "
                "messages, or ### blocks",
            )
        tasks = [
            Task(ex.messages[:-1], ex.messages[-1]["content"], ex.where, {}, ex.tools)
            if ex.messages is not None
            else Task(ex.prompt, ex.response or None, ex.where, {})
            for ex in examples
        ]
    kept, drops, seen = [], [], set()
    for task in tasks:
        key = repr(task.prompt)
        if not (task.prompt if task.chat else task.prompt.strip()):
            drops.append((task.where, "empty prompt"))
        elif key in seen:
            drops.append((task.where, "the same prompt as an earlier record"))
        else:
            seen.add(key)
            kept.append(task)
    if not kept:
        raise UserError(f"{path}: no prompt left ({len(drops)} dropped: {drops[0][1]})", hint="check the file")
    return shape, kept, drops


def _task(where: str, record: dict, data: Data) -> tuple[str, Task]:
    tools = record.get("tools") or None
    answer_key = next((k for k in (data.answer_column, "answer", *ANSWER_KEYS) if k and k in record), None)
    for key, fmt in CHAT_KEYS:
        if isinstance(record.get(key), list):
            messages = readers._messages(record[key], fmt, where, answered=False)
            answer = record.get(answer_key) if answer_key else None
            if messages and messages[-1]["role"] == "assistant":
                if answer is None:
                    answer = messages[-1]["content"]
                messages = messages[:-1]
            if not messages or messages[-1]["role"] not in ("user", "tool"):
                raise UserError(
                    f"{where}: the conversation must end with a user (or tool) turn, the one to answer",
                    hint="give the conversation up to the question, and the reference answer under 'answer'",
                )
            return f"{key} + answer", Task(
                messages, _text(answer, where, answer_key), where, _columns(record, key, answer_key), tools
            )
    pair = find_columns(record, data, where)
    if pair is not None:
        prompt, answer = prompt_and_answer(record, pair)
        answer_key = pair.answer
        if "answer" in record and not data.answer_column:  # a short final answer beside a worked one
            answer_key, answer = "answer", record["answer"]
        if isinstance(prompt, str):
            shape = pair.shape if answer_key == pair.answer else f"{pair.prompt}/answer"
            columns = _columns(record, pair.prompt, pair.context, answer_key)
            return shape, Task(prompt, _text(answer, where, answer_key), where, columns)
    prompt_key = next((k for k in (data.question_column, *PROMPT_KEYS) if k and k in record), None)
    if prompt_key is None or not isinstance(record[prompt_key], str):
        raise UserError(
            f"{where}: no prompt in the record (keys: {', '.join(sorted(record))})",
            hint="give each record a 'prompt' or 'question' (or set data.question_column), or chat 'messages'",
        )
    answer_key = next((k for k in (data.answer_column, "answer") if k and k in record), None)
    answer = record.get(answer_key) if answer_key else None
    shape = f"{prompt_key}/{answer_key}" if answer_key else f"{prompt_key} only"
    return shape, Task(
        record[prompt_key], _text(answer, where, answer_key), where, _columns(record, prompt_key, answer_key)
    )


def _text(answer, where: str, key: str | None) -> str | None:
    if answer is None or isinstance(answer, str):
        return answer
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)
    raise UserError(f"{where}: {key!r} must be text or a number, got {type(answer).__name__}")


def _columns(record: dict, *used: str | None) -> dict:
    """The record's other keys, for the rewards."""
    return {k: v for k, v in record.items() if k not in used and k not in ("tools", "answer", "where")}


# ---------------------------------------------------------------------------------------------- rows


def prompt_of(task: Task, tokenizer, data: Data) -> str:
    """The prompt's text exactly as the model sees it, as for test cases and `quickft chat`."""
    if task.chat:
        return chat_prompt(task.prompt, tokenizer, task.tools, task.where)
    return format_prompt(task.prompt, data)


def prepare_tasks(tasks: list[Task], tokenizer, recipe):
    """Tasks -> the rows GRPOTrainer samples from: "prompt" (text as the model sees it), "answer", "where" and the
    record's columns. A prompt that leaves no room for a max_completion_length answer within max_seq_length is
    dropped, with its place and length (cutting it would change the question)."""
    room = recipe.max_seq_length - completion_length(recipe)
    prepared = Prepared(rows=[])
    columns = sorted({k for t in tasks for k in t.columns})
    for task in tasks:
        text = prompt_of(task, tokenizer, recipe.data)
        length = len(prompt_ids(text, tokenizer, task.chat))
        prepared.lengths.append(length)
        if length > room:
            prepared.dropped.append(
                (task.where, f"prompt too long ({length} tokens > max_seq_length - max_completion_length = {room})")
            )
            continue
        row = {"prompt": str(text), "answer": task.answer, "where": task.where, "prompt_tokens": length}
        prepared.rows.append(row | {k: task.columns.get(k) for k in columns})
    if not prepared.rows:
        raise UserError(
            f"{recipe.data.path}: no prompt fits max_seq_length={recipe.max_seq_length} with room for a "
            f"{completion_length(recipe)}-token answer (the first: {prepared.dropped[0][1]})",
            hint="raise max_seq_length or lower grpo.max_completion_length",
        )
    return prepared


def completion_length(recipe) -> int:
    return recipe.grpo.max_completion_length or recipe.max_new_tokens
