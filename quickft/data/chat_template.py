"""Chat templates: a conversation rendered exactly as inference renders it, and what the model writes for each
assistant turn.

Published templates do not render history the way the model produced it: Qwen3 and gpt-oss drop earlier reasoning,
Mistral moves the system prompt into the last user turn, Phi-3.5 ends only the last turn with EOS, gpt-oss ends the
last turn with <|return|> and earlier ones with <|end|>, DeepSeek-R1-Distill's generation prompt opens `<think>`,
which its rendering of an answer never has, and Gemma 2 has no system role at all. So each assistant turn is
worked out on its own, as inference meets it: the conversation before it with the generation prompt (`Turn.prompt`),
then what the model writes (`Turn.output`: reasoning, content, tool calls and end-of-turn token, as the template
renders that turn when it is the last one). `whole_spans` then finds each turn in the one rendering of the whole
conversation, where the template keeps it whole.

Reasoning (`reasoning_content` / `thinking`, or <think> in the content) is given to a template the way it reads it:
as a field (Qwen3's reasoning_content, gpt-oss's and LFM2.5's thinking), else inline as `<think>...</think>` before
the content. A template that drops reasoning everywhere (DeepSeek-R1-Distill) gets it written where the model
writes it, after the generation prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quickft.errors import UserError

THINK = "<think>\n{}\n</think>\n\n"
"""How reasoning is written where the template itself has no way to render it (Qwen3's and DeepSeek-R1's form)."""
PROBE = "qftreasoningprobe"

CHATML = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{{ tools | tojson }}<|im_end|>\n{%- endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] %}{{ message['content'] }}"
    "{% endif %}{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}<tool_call>{{ call | tojson }}"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML}
"""The templates a recipe may name (data.chat_template="chatml"); any other value is a Jinja template itself."""


@dataclass
class Turn:
    index: int
    """The assistant message's position in the conversation."""
    prompt: str
    """Everything before the turn, generation prompt included: the text inference hands the model."""
    output: str
    """What the model writes for this turn at inference, end-of-turn token included."""
    reasoning: str
    """The turn's reasoning ("" if none)."""
    content: str


@dataclass
class Style:
    """How one template takes a conversation (worked out once per template)."""

    reasoning: str = "inline"
    """field: the template renders reasoning_content/thinking; inline: <think> in the content is rendered as written;
    dropped: the template removes reasoning everywhere, quickft writes it after the generation prompt."""
    folds_system: bool = False
    """The template has no system role: the system prompt goes into the first user turn (Gemma's documented way)."""


_styles: dict[str, Style] = {}


def template_name(tokenizer) -> str:
    return f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"


def style_of(tokenizer) -> Style:
    template = tokenizer.chat_template or ""
    if template not in _styles:
        _styles[template] = Style(reasoning=_reasoning_style(tokenizer))
    return _styles[template]


def _reasoning_style(tokenizer) -> str:
    question = {"role": "user", "content": "q"}
    for style in ("field", "inline"):
        answer = _template_message({"role": "assistant", "content": "a", "reasoning": PROBE}, style)
        try:
            text = tokenizer.apply_chat_template([question, answer], tokenize=False)
        except Exception:  # a template that rejects the probe is tried the other way, then told apart by its errors
            continue
        if PROBE in text:
            return style
    return "dropped"


def _template_message(message: dict, style: str) -> dict:
    """The message as the template reads it: quickft's `reasoning` key becomes the template's own way."""
    out = {k: v for k, v in message.items() if k != "reasoning"}
    reasoning = message.get("reasoning")
    if reasoning and message["role"] == "assistant":
        if style == "field":
            out |= {"reasoning_content": reasoning, "thinking": reasoning}
        elif style == "inline":
            out["content"] = THINK.format(reasoning) + (message.get("content") or "")
    return out


def fold_system(messages: list[dict]) -> list[dict]:
    """The system prompt put at the start of the first user turn, for templates without a system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    for i, m in enumerate(rest):
        if m["role"] == "user":
            return rest[:i] + [m | {"content": f"{system}\n\n{m['content']}"}] + rest[i + 1 :]
    return [{"role": "user", "content": system}] + rest


def render(tokenizer, messages: list[dict], tools=None, *, generation_prompt: bool = False, where: str = "") -> str:
    """apply_chat_template(tokenize=False), with the template's own way of taking reasoning and system prompts.
    A template error is a UserError naming the template, the record and what it rejected."""
    style = style_of(tokenizer)
    try:
        return _apply(tokenizer, messages, tools, generation_prompt, style)
    except Exception as e:  # jinja2's TemplateError and raise_exception(), or Python errors inside the template
        error = e
    if any(m["role"] == "system" for m in messages) and not style.folds_system:
        try:  # a template without a system role (Gemma 1 and 2): their documented way is the first user turn
            text = _apply(tokenizer, fold_system(messages), tools, generation_prompt, style)
        except Exception:
            pass
        else:
            style.folds_system = True
            return text
    raise UserError(
        f"{where or 'a conversation'}: {template_name(tokenizer)} rejected it: {type(error).__name__}: {error}",
        hint="fix or drop that record, or set data.chat_template to a template that takes such conversations",
    ) from None


def _apply(tokenizer, messages, tools, generation_prompt: bool, style: Style) -> str:
    if style.folds_system:
        messages = fold_system(messages)
    shaped = [_template_message(m, style.reasoning) for m in messages]
    return tokenizer.apply_chat_template(shaped, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def tokens(tokenizer, text: str) -> list[int]:
    """Rendered chat text as apply_chat_template(tokenize=True) tokenizes it: the template wrote every special token
    (BOS included) itself, so the tokenizer adds none."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------- turns


def turns(messages: list[dict], tokenizer, tools=None, where: str = "") -> list[Turn]:
    """Each assistant turn as inference meets it: the prompt before it, and what the model writes."""
    out = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], tools, generation_prompt=True, where=where)
        full = render(tokenizer, messages[: i + 1], tools, where=where)
        reasoning, content = message.get("reasoning") or "", message.get("content") or ""
        if full.startswith(prompt):
            output = full[len(prompt) :]
            if reasoning and reasoning.strip() not in output:  # dropped by the template: written where the model does
                output = _with_thinking(output, content, reasoning)
        else:
            output = _after_generation_prompt(prompt, full, messages[:i], content, reasoning, tokenizer, where)
        out.append(Turn(i, prompt, output, reasoning, content))
    return out


def _with_thinking(rendered: str, content: str, reasoning: str) -> str:
    """`rendered` (a turn without its reasoning) with THINK(reasoning) put before the content."""
    at = rendered.find(content.strip()) if content.strip() else -1
    at = 0 if at < 0 else at
    return rendered[:at] + THINK.format(reasoning.strip("\n")) + rendered[at:]


def _after_generation_prompt(prompt, full, before, content, reasoning, tokenizer, where) -> str:
    """The turn's output where the prompt is not a prefix of the turn's rendering. Two causes: the template renders
    the history differently once the answer is there (Mistral v0.3 writes the system prompt only into a last user
    turn), and the generation prompt opens something the rendering never has (DeepSeek-R1's `<think>\\n`), which
    the model then writes on from inside. Both sides are compared from the last message before the turn."""
    anchor = next(((m.get("content") or "").strip() for m in reversed(before) if (m.get("content") or "").strip()), "")
    p_at, f_at = (prompt.rfind(anchor), full.rfind(anchor, 0, len(full) - len(content))) if anchor else (0, 0)
    if p_at < 0 or f_at < 0:
        p_at = f_at = 0
    prompt_tail, full_tail = prompt[p_at:], full[f_at:]
    if full_tail.startswith(prompt_tail):
        return full_tail[len(prompt_tail) :]
    common = 0
    for a, b in zip(prompt_tail, full_tail, strict=False):
        if a != b:
            break
        common += 1
    opened, rendered = prompt_tail[common:], full_tail[common:]
    written = _with_thinking(rendered, content, reasoning)  # its reasoning, or an empty <think> block
    if written.startswith(opened):
        return written[len(opened) :]
    raise UserError(
        f"{where or 'a conversation'}: {template_name(tokenizer)} ends its generation prompt with {opened!r}, but "
        f"renders this answer as {rendered[:60]!r}: the model's own tokens for this turn cannot be worked out",
        hint="set data.chat_template to a template whose generation prompt starts the answer the way it renders it",
    )


# ---------------------------------------------------------------------------------------------- generated text


def opens_thinking(prompt: str) -> bool:
    """Whether the prompt leaves the model inside a <think> block (DeepSeek-R1's generation prompt opens one)."""
    return prompt.rfind("<think>") > prompt.rfind("</think>")


def split_thinking(text: str, inside: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a generated text: what stands in <think>...</think> at its start, and the rest."""
    body = text if inside else text.lstrip()
    if not inside:
        if not body.startswith("<think>"):
            return "", text.strip()
        body = body[len("<think>") :]
    reasoning, closed, answer = body.partition("</think>")
    if not closed:  # stopped while thinking
        return reasoning.strip(), ""
    return reasoning.strip(), answer.strip()


# ---------------------------------------------------------------------------------------------- the whole rendering


def special_tokens(tokenizer) -> list[str]:
    names = set(tokenizer.all_special_tokens)
    names |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    return sorted((n for n in names if n), key=len, reverse=True)


def _body_and_end(output: str, specials: list[str]) -> tuple[str, str]:
    """`output` split before its trailing special tokens and whitespace (the end of the turn)."""
    body = output
    while True:
        stripped = body.rstrip()
        tail = next((s for s in specials if stripped.endswith(s)), None)
        if tail is None:
            return stripped, output[len(stripped) :]
        body = stripped[: -len(tail)]


def _units(text: str, specials: list[str]) -> list[str]:
    if not specials:
        return list(text)
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")"
    units = []
    for piece in re.split(pattern, text):
        units += [piece] if piece in specials else list(piece)
    return units


def whole_spans(full: str, messages: list[dict], outputs: list[Turn], tokenizer) -> list[tuple[int, int, bool] | None]:
    """Where each assistant turn is in `full` (the whole conversation rendered once): (start, end, exact) where
    exact means the span is what the model writes for it (`Turn.output`), or None where the template does not keep
    the turn (its reasoning dropped from history). A turn whose end differs in history (Phi-3.5's EOS only after
    the last message, gpt-oss's <|end|> for <|return|>) is trained with the end-of-turn token the history has."""
    specials = special_tokens(tokenizer)
    by_index = {t.index: t for t in outputs}
    spans: list[tuple[int, int, bool] | None] = []
    cursor = 0
    for i, message in enumerate(messages):
        if i not in by_index:
            key = (message.get("content") or "").strip()
            at = full.find(key, cursor) if key else -1
            if at >= 0:
                cursor = at + len(key)
            continue
        turn = by_index[i]
        body, end = _body_and_end(turn.output, specials)
        at = full.find(body, cursor) if body else -1
        exact = True
        if at < 0 and not turn.reasoning and turn.content.strip() and turn.content.strip() in body:
            body = body[body.find(turn.content.strip()) :]  # an empty <think> block history leaves out
            at, exact = full.find(body, cursor), False
        if at < 0:
            spans.append(None)
            continue
        stop = at + len(body)
        kept = ""
        for unit in _units(end, specials):
            if not full.startswith(kept + unit, stop):
                break
            kept += unit
        if kept != end:
            exact = False
            if not kept.strip():  # the history's own end-of-turn token, where it differs from the last turn's
                kept = next((s for s in specials if full.startswith(s, stop)), kept)
        spans.append((at, stop + len(kept), exact))
        cursor = stop + len(kept)
    return spans
