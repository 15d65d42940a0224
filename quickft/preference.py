"""Preference data for DPO-style training: a reader per published shape -> one internal shape (Pair), with every
drop counted; and a pair's tokens, as SFT's encoder makes them.

The shapes, each recognised by its keys:
- TRL's explicit prompt: {"prompt", "chosen", "rejected"}, as strings, or as message lists (the prompt's turns, then
  one assistant message each);
- TRL's implicit prompt: {"chosen", "rejected"} message lists (also `chosen_messages` / `rejected_messages`, and
  UltraFeedback's lists that repeat the prompt): the turns both share are the prompt;
- Anthropic HH transcripts: "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." strings in chosen and rejected, whose shared
  turns are the prompt;
- LLaMA-Factory's ShareGPT: {"conversations": [...], "chosen": {"from": "gpt", ...}, "rejected": {...}}.
A chosen answer identical to the rejected one teaches nothing: it is dropped, with its place, and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from quickft import data as readers
from quickft.errors import UserError
from quickft.recipe import Data

if TYPE_CHECKING:
    from quickft.encode import Prepared

PREFERENCE_KEYS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"))
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


@dataclass
class Pair:
    """One preference: the prompt (text, or the messages before the answer), then the chosen and the rejected
    answer (text, or one assistant message each)."""

    prompt: str | list[dict]
    chosen: str | dict
    rejected: str | dict
    where: str
    tools: list[dict] | None = None

    @property
    def chat(self) -> bool:
        return isinstance(self.prompt, list)


def is_preference_record(record: dict) -> bool:
    return any(a in record and b in record for a, b in PREFERENCE_KEYS)


def read_pairs(path: str | Path, data: Data) -> tuple[str, list[Pair], list[tuple[str, str]]]:
    """(the shape read, the pairs, the drops as (where, reason)) from a JSON, JSON Lines, CSV or parquet file.
    A file that holds no preference records, or no pair left after the drops, is a UserError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"data file not found: {path}", hint="data paths are relative to the current directory")
    if suffix == ".parquet":
        records = readers._parquet_records(path)
    elif suffix in (".csv", ".tsv"):
        records = readers._csv_records(path, readers._read_text_file(path), delimiter="\t" if suffix == ".tsv" else ",")
    else:
        records = readers._json_records(path, readers._read_text_file(path), expected="preference")
    if not records or not is_preference_record(records[0][1]):
        keys = sorted(records[0][1]) if records else []
        raise UserError(
            f"{records[0][0] if records else path}: not preference data: no chosen/rejected answers (keys {keys})",
            hint='each record needs a "chosen" and a "rejected" answer (and a "prompt", unless both repeat it), or '
            'LLaMA-Factory\'s "conversations" + "chosen" + "rejected"',
        )
    pairs, drops, shapes = [], [], set()
    for where, record in records:
        shape, pair = _pair(where, record)
        shapes.add(shape)
        if _answer_text(pair.chosen) == _answer_text(pair.rejected) and _calls(pair.chosen) == _calls(pair.rejected):
            drops.append((where, "chosen and rejected are the same answer"))
            continue
        pairs.append(pair)
    if not pairs:
        raise UserError(
            f"{path}: no preference pair left: all {len(drops)} have the same chosen and rejected answer",
            hint="each pair needs two different answers, the better one as chosen",
        )
    return " + ".join(sorted(shapes)), pairs, drops


def _answer_text(answer: str | dict) -> str:
    if isinstance(answer, str):
        return answer.strip()
    return (answer.get("reasoning") or "") + "\n" + answer["content"].strip()


def _calls(answer: str | dict):
    return None if isinstance(answer, str) else answer.get("tool_calls")


def _pair(where: str, record: dict) -> tuple[str, Pair]:
    tools = record.get("tools") or None
    if "conversations" in record:  # LLaMA-Factory's ShareGPT preference records
        prompt = readers._messages(record["conversations"], "sharegpt", where, answered=False)
        chosen, rejected = (
            _one_answer(readers._messages([record[k]], "sharegpt", where), where, k) for k in ("chosen", "rejected")
        )
        return "sharegpt", Pair(_ends_with_a_question(prompt, where), chosen, rejected, where, tools)
    a, b = next((a, b) for a, b in PREFERENCE_KEYS if a in record and b in record)
    chosen, rejected, prompt = record[a], record[b], record.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen = readers._messages(chosen, "chat", where, answered=False)
        rejected = readers._messages(rejected, "chat", where, answered=False)
        if isinstance(prompt, list) and prompt:  # TRL's explicit conversational prompt
            prompt = readers._messages(prompt, "chat", where, answered=False)
            shape = "prompt + chosen/rejected messages"
        else:  # implicit: the turns both lists share (UltraFeedback's lists repeat the prompt)
            shared = 0
            while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
            shape = "chosen/rejected messages"
        chosen, rejected = _one_answer(chosen, where, a), _one_answer(rejected, where, b)
        return shape, Pair(_ends_with_a_question(prompt, where), chosen, rejected, where, tools)
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise UserError(
            f"{where}: {a!r} and {b!r} must both be text or both be message lists",
            hint="give both answers the same shape",
        )
    if prompt is None and HH_TURN.search(chosen):
        return "hh transcripts", _hh_pair(where, chosen, rejected)
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(
            f"{where}: a text preference pair without a 'prompt'",
            hint='give each record a "prompt" with the question, or HH transcripts ("\\n\\nHuman: ..." / '
            '"\\n\\nAssistant: ...") in chosen and rejected',
        )
    # as given, as SFT's prompt/completion text: TRL's examples join exactly ("The sky is" + " blue.")
    return "prompt/chosen/rejected text", Pair(prompt, chosen, rejected, where)


def _one_answer(messages: list[dict], where: str, key: str) -> dict:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages) or "nothing"
        raise UserError(
            f"{where}: {key!r} must be one assistant answer after the prompt, not {roles}",
            hint="put the shared conversation in 'prompt' (or repeat it in both lists) and one answer in each",
        )
    return messages[0]


def _ends_with_a_question(prompt: list[dict], where: str) -> list[dict]:
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise UserError(
            f"{where}: the prompt must end with a user (or tool) turn, the one the answers reply to",
            hint="check the record's conversation: the chosen and rejected answers follow its last user turn",
        )
    return prompt


def _hh_pair(where: str, chosen: str, rejected: str) -> Pair:
    """Anthropic HH: two transcripts that share every turn but the last Assistant one."""
    chosen_turns, rejected_turns = _hh_turns(chosen, where), _hh_turns(rejected, where)
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise UserError(
            f"{where}: the chosen and rejected transcripts differ before their last Assistant turn",
            hint="an HH pair shares the conversation and differs only in the final answer",
        )
    prompt = [{"role": role, "content": text} for role, text in chosen_turns[:-1]]
    answer = [{"role": "assistant", "content": t[-1][1]} for t in (chosen_turns, rejected_turns)]
    return Pair(_ends_with_a_question(prompt, where), answer[0], answer[1], where)


def _hh_turns(transcript: str, where: str) -> list[tuple[str, str]]:
    parts = HH_TURN.split("\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript)
    turns = [
        ("user" if speaker == "Human" else "assistant", text.strip())
        for speaker, text in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns or turns[-1][0] != "assistant":
        raise UserError(
            f"{where}: an HH transcript must end with an Assistant turn",
            hint='chosen and rejected are "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts',
        )
    return turns


# ---------------------------------------------------------------------------------------------- tokens


def encode_pair(pair: Pair, tokenizer, data: Data) -> dict:
    """{"prompt_ids", "chosen_ids", "rejected_ids"}: the tokens SFT's encoder makes of the prompt and of each answer,
    so a pair is tokenized as the same prompt and answer would be for SFT (one BOS; the chat template's own
    rendering of the turn, end-of-turn token included; the prompt template and EOS for text)."""
    from quickft import chat_template
    from quickft.data import Example
    from quickft.encode import encode

    data = replace(data, train_on_prompt=False)  # the prompt's tokens are the ones before the answer's
    ids = {}
    for key, answer in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if pair.chat:
            turn = chat_template.turns(pair.prompt + [answer], tokenizer, pair.tools, pair.where)[-1]
            prompt_ids = chat_template.tokens(tokenizer, turn.prompt)
            answer_ids = chat_template.tokens(tokenizer, turn.output)
        else:
            row = encode(Example(prompt=pair.prompt, response=answer, where=pair.where), tokenizer, data)[0]
            start = row["completion_mask"].index(1)
            prompt_ids, answer_ids = row["input_ids"][:start], row["input_ids"][start:]
        if ids.setdefault("prompt_ids", prompt_ids) != prompt_ids:
            raise UserError(
                f"{pair.where}: the chat template renders the prompt differently before the chosen and the rejected "
                "answer",
                hint="report this template: quickft needs one prompt for both answers",
            )
        ids[f"{key}_ids"] = answer_ids
    return ids


def prepare_pairs(pairs: list[Pair], tokenizer, recipe) -> Prepared:
    """Pairs -> rows of prompt, chosen and rejected ids; a pair whose prompt and longer answer exceed max_seq_length
    is dropped, with its place and length (cutting an answer would change which one is better)."""
    from quickft.encode import Prepared

    limit = recipe.max_seq_length
    prepared = Prepared(rows=[])
    for pair in pairs:
        row = encode_pair(pair, tokenizer, recipe.data)
        length = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        prepared.lengths.append(length)
        if length > limit:
            prepared.dropped.append((pair.where, f"too long ({length} tokens > max_seq_length={limit})"))
        else:
            prepared.rows.append(row)
    if not prepared.rows:
        raise UserError(
            f"{recipe.data.path}: no preference pair fits max_seq_length={limit} (the first: {prepared.dropped[0][1]})",
            hint="raise max_seq_length",
        )
    return prepared


def sequences(rows: list[dict]) -> list[dict]:
    """The two sequences of each pair as SFT-shaped rows (ids, and a mask of the answer): chosen, then rejected."""
    out = []
    for row in rows:
        for key in ("chosen_ids", "rejected_ids"):
            ids = row["prompt_ids"] + row[key]
            out.append({"input_ids": ids, "completion_mask": [0] * len(row["prompt_ids"]) + [1] * len(row[key])})
    return out
