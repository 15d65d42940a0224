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

KTO's labelled answers (one answer, desirable or not: Judged) come from TRL's unpaired shape {"prompt",
"completion", "label"} (text, or message lists), from {"messages", "label"} (the last assistant turn is the answer),
or from any of the pair shapes above, each pair split into its chosen (desirable) and rejected (undesirable) answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from quickft.data import chat_template, readers
from quickft.data.encode import Prepared, encode
from quickft.data.readers import Example
from quickft.errors import UserError

if TYPE_CHECKING:
    from quickft.recipe import Data

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
    """(the shape read, the pairs, the drops as (where, reason)) from a JSON, JSON Lines, CSV or parquet file, or a
    `datasets` dataset. A file that holds no preference records, or no pair left after the drops, is a UserError."""
    return _pairs(Path(path), _records(path, data))


def _pairs(path: Path, records: list[tuple[str, dict]]) -> tuple[str, list[Pair], list[tuple[str, str]]]:
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


def _records(path: str | Path, data: Data) -> list[tuple[str, dict]]:
    """(where, record) from a JSON, JSON Lines, CSV or parquet file, or a `datasets` dataset (a hub id such as
    trl-lib/ultrafeedback_binarized in data.split, a save_to_disk folder); a file of another suffix is read as JSON."""
    records = readers.read_records(path, data, expected="preference")
    if records is None:
        records = readers._json_records(Path(path), readers._read_text_file(Path(path)), expected="preference")
    return records


@dataclass
class Judged:
    """One answer judged on its own (KTO): the prompt (text, or the messages before the answer), the answer (text,
    or one assistant message), and whether it is desirable."""

    prompt: str | list[dict]
    answer: str | dict
    good: bool
    where: str
    tools: list[dict] | None = None

    @property
    def chat(self) -> bool:
        return isinstance(self.prompt, list)


LABELS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def read_judged(path: str | Path, data: Data) -> tuple[str, list[Judged], list[tuple[str, str]]]:
    """(the shape read, the labelled answers, the drops) for KTO: labelled records, or preference pairs split in
    two. A file with only desirable or only undesirable answers is a UserError: KTO learns from both."""
    path = Path(path)
    records = _records(path, data)
    if records and is_preference_record(records[0][1]):
        shape, pairs, drops = _pairs(path, records)
        judged = [
            Judged(p.prompt, answer, good, p.where, p.tools)
            for p in pairs
            for answer, good in ((p.chosen, True), (p.rejected, False))
        ]
        return f"{shape}, each pair split into a desirable and an undesirable answer", judged, drops
    if not records or "label" not in records[0][1]:
        keys = sorted(records[0][1]) if records else []
        raise UserError(
            f"{records[0][0] if records else path}: not KTO data: no 'label' (keys {keys})",
            hint='each record needs a "label" (true: a desirable answer, false: not) with "prompt" + "completion", '
            'or "messages"; preference pairs ("chosen"/"rejected") work too',
        )
    judged, shapes = [], set()
    for where, record in records:
        shape, item = _judged(where, record)
        shapes.add(shape)
        judged.append(item)
    kinds = {j.good for j in judged}
    if len(kinds) < 2:
        raise UserError(
            f"{path}: every answer is labelled {'desirable' if True in kinds else 'undesirable'}",
            hint="KTO learns from both kinds: label some answers true (desirable) and some false",
        )
    return " + ".join(sorted(shapes)), judged, []


def _label(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return LABELS[value.strip().lower()]
    raise UserError(
        f"{where}: label {value!r} is not true or false",
        hint="label each answer true (desirable) or false (undesirable); 1/0 and yes/no are read too",
    )


def _judged(where: str, record: dict) -> tuple[str, Judged]:
    good, tools = _label(record["label"], where), record.get("tools") or None
    if "messages" in record or isinstance(record.get("completion"), list):
        if "messages" in record:
            turns, shape = record["messages"], "messages + label"
        else:
            prompt = record.get("prompt") or []
            if isinstance(prompt, str):  # a text question before a message answer: the user's turn
                prompt = [{"role": "user", "content": prompt}]
            turns, shape = prompt + record["completion"], "prompt/completion messages + label"
        if not isinstance(turns, list):
            raise UserError(f"{where}: 'messages' must be a list of turns", hint='[{"role": "user", ...}, ...]')
        messages = readers._messages(turns, "chat", where, answered=False)
        if not messages or messages[-1]["role"] != "assistant":
            raise UserError(
                f"{where}: the conversation must end with the assistant answer that is labelled",
                hint="put the labelled answer last, as an assistant turn",
            )
        return shape, Judged(_ends_with_a_question(messages[:-1], where), messages[-1], good, where, tools)
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not prompt.strip() or not isinstance(completion, str) or not completion.strip():
        raise UserError(
            f"{where}: a labelled answer needs a text 'prompt' and 'completion' (or 'messages')",
            hint='{"prompt": "...", "completion": "...", "label": true}',
        )
    return "prompt/completion + label", Judged(prompt, completion, good, where)


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
    ids = {}
    for key, answer in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        prompt_ids, answer_ids = encode_answer(pair.prompt, answer, pair.tools, pair.where, tokenizer, data)
        if ids.setdefault("prompt_ids", prompt_ids) != prompt_ids:
            raise UserError(
                f"{pair.where}: the chat template renders the prompt differently before the chosen and the rejected "
                "answer",
                hint="report this template: quickft needs one prompt for both answers",
            )
        ids[f"{key}_ids"] = answer_ids
    return ids


def encode_answer(prompt, answer, tools, where: str, tokenizer, data: Data) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as SFT's encoder tokenizes the same prompt and answer."""
    if isinstance(prompt, list):
        turn = chat_template.turns(prompt + [answer], tokenizer, tools, where)[-1]
        return chat_template.tokens(tokenizer, turn.prompt), chat_template.tokens(tokenizer, turn.output)
    data = replace(data, train_on_prompt=False)  # the prompt's tokens are the ones before the answer's
    row = encode(Example(prompt=prompt, response=answer, where=where), tokenizer, data)[0]
    start = row["completion_mask"].index(1)
    return row["input_ids"][:start], row["input_ids"][start:]


def prepare_pairs(pairs: list[Pair], tokenizer, recipe) -> Prepared:
    """Pairs -> rows of prompt, chosen and rejected ids; a pair whose prompt and longer answer exceed max_seq_length
    is dropped, with its place and length (cutting an answer would change which one is better)."""
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


def prepare_judged(judged: list[Judged], tokenizer, recipe) -> Prepared:
    """Labelled answers -> rows of prompt ids, completion ids and label, shuffled with the recipe's seed (KTO trains
    them in this fixed order: its KL estimate pairs each prompt with another answer of the same micro-batch); an
    answer whose prompt and answer exceed max_seq_length is dropped, with its place and length."""
    import random

    limit = recipe.max_seq_length
    prepared = Prepared(rows=[])
    for item in judged:
        prompt_ids, answer_ids = encode_answer(item.prompt, item.answer, item.tools, item.where, tokenizer, recipe.data)
        length = len(prompt_ids) + len(answer_ids)
        prepared.lengths.append(length)
        if length > limit:
            prepared.dropped.append((item.where, f"too long ({length} tokens > max_seq_length={limit})"))
        else:
            prepared.rows.append({"prompt_ids": prompt_ids, "completion_ids": answer_ids, "label": item.good})
    if not prepared.rows:
        raise UserError(
            f"{recipe.data.path}: no answer fits max_seq_length={limit} (the first: {prepared.dropped[0][1]})",
            hint="raise max_seq_length",
        )
    random.Random(recipe.seed).shuffle(prepared.rows)
    good = sum(r["label"] for r in prepared.rows)
    bad = len(prepared.rows) - good
    prepared.notes.append(f"{good:,} desirable and {bad:,} undesirable answers")
    if not good or not bad:
        raise UserError(
            f"{recipe.data.path}: after the drops, every answer left is {'desirable' if good else 'undesirable'}",
            hint="KTO learns from both kinds: raise max_seq_length, or add answers of the other kind",
        )
    return prepared


def sequences(rows: list[dict]) -> list[dict]:
    """Each row's sequences as SFT-shaped rows (ids, and a mask of the answer): a pair's chosen, then its rejected;
    a KTO row's one answer."""
    out = []
    for row in rows:
        answers = [row["completion_ids"]] if "completion_ids" in row else [row["chosen_ids"], row["rejected_ids"]]
        for answer in answers:
            prompt = row["prompt_ids"]
            out.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    return out
