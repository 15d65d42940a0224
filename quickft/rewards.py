"""Reward functions for method="grpo": the built-ins users write every time, and the guard that runs any reward.

A reward has TRL's signature: f(prompts, completions, **columns) -> one float (or None: no opinion) per completion.
`completions` are the answers' text (what `quickft chat` would print); the columns are the data record's keys, the
reference answer under `answer`, plus TRL's own (completion_ids, trainer_state). A recipe may list any function of
its own beside these:

    from quickft.rewards import exact_answer, format_match

    def short(completions, **kwargs):
        return [-len(c) / 100 for c in completions]

    grpo=GRPO(rewards=[exact_answer(match="number"), format_match(), short], reward_weights=[1.0, 0.2, 0.1])

Pure Python (re, inspect): recipes import this module, and `quickft --help` must stay fast.
"""

from __future__ import annotations

import inspect
import numbers
import re

from quickft.errors import UserError
from quickft.scoring import matches

THINK_THEN_ANSWER = r"<think>.*?</think>\s*\S.*"
"""format_match's default: a reasoning block, then an answer."""


def exact_answer(match: str = "exact", column: str = "answer", name: str = "exact_answer"):
    """1.0 when the completion's answer matches the record's `column`, else 0.0 (None where the record has none):
    the same matching as Eval.match ("exact", "contains", "number"), on the answer after any </think>; "number"
    compares final answers ("#### 42" as GSM8K writes them, MetaMathQA's "The answer is: 42", <answer>...</answer>,
    \\boxed{...})."""
    if match not in ("exact", "contains", "number"):
        raise ValueError(f"exact_answer(match={match!r}): match is one of 'exact', 'contains', 'number'")

    def reward(completions, **columns):
        if column not in columns:
            raise KeyError(f"the data has no {column!r} column to compare with (columns: {', '.join(columns)})")
        return [
            None if ref is None else float(matches(_after_thinking(c), str(ref), match))
            for c, ref in zip(completions, columns[column], strict=True)
        ]

    return _named(reward, name, f"exact_answer(match={match!r}, column={column!r})")


def format_match(pattern: str = THINK_THEN_ANSWER, name: str = "format_match"):
    """1.0 when the whole completion (stripped) matches the regular expression `pattern` (re.DOTALL: `.` spans
    lines), else 0.0. The default asks for "<think>...</think>" and then an answer."""
    compiled = re.compile(pattern, re.DOTALL)

    def reward(completions, **columns):
        return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]

    return _named(reward, name, f"format_match(pattern={pattern!r})")


def length_penalty(max_tokens: int, soft_tokens: int | None = None, name: str = "length_penalty"):
    """0 for answers up to max_tokens - soft_tokens tokens, then falling linearly to -1 at max_tokens (DAPO's soft
    overlong punishment, TRL's get_soft_overlong_punishment). soft_tokens defaults to a quarter of max_tokens."""
    soft = max_tokens // 4 if soft_tokens is None else soft_tokens
    if not 0 < soft <= max_tokens:
        raise ValueError(f"length_penalty: soft_tokens must be in (0, max_tokens={max_tokens}], got {soft}")
    punish = None

    def reward(completions, completion_ids, **columns):
        nonlocal punish
        if punish is None:
            from trl.rewards import get_soft_overlong_punishment

            punish = get_soft_overlong_punishment(max_completion_len=max_tokens, soft_punish_cache=soft)
        return punish(completion_ids=completion_ids)

    return _named(reward, name, f"length_penalty(max_tokens={max_tokens}, soft_tokens={soft})")


def _after_thinking(completion: str) -> str:
    return completion.rsplit("</think>", 1)[-1]


def _named(reward, name: str, spec: str):
    reward.__name__ = reward.__qualname__ = name  # TRL logs each reward under its __name__
    reward.quickft_spec = spec if name == spec.partition("(")[0] else f"{name} = {spec}"
    return reward


# ---------------------------------------------------------------------------------------------- the guard

TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""What TRL passes every reward besides the data's columns."""


def check_signature(fn, columns: list[str]) -> None:
    """Before training: every argument `fn` requires must be one TRL passes or a column of the data."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is not p.empty:
            continue
        if p.kind is p.POSITIONAL_ONLY or p.name not in (*TRL_KEYWORDS, *columns):
            raise UserError(
                f"reward {name}: its argument {p.name!r} is not something a reward is given",
                hint=f"a reward is called with keywords: {', '.join(TRL_KEYWORDS)} and the data's columns "
                f"({', '.join(columns)}); add **kwargs to take the rest",
            )


def guarded(fn):
    """`fn` as TRL calls it, giving it only the keywords it takes, and turning what goes wrong (it raises, returns
    the wrong number of rewards or something not a number) into a UserError naming the function and the example
    (its `where` column: file and line), not a traceback from inside TRL."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, takes_all = {}, True

    def call(kwargs):
        return fn(**(kwargs if takes_all else {k: v for k, v in kwargs.items() if k in params}))

    def reward(**kwargs):
        n = len(kwargs["completions"])
        try:
            out = list(call(kwargs))
        except Exception as e:
            raise _failure(name, e, kwargs, _first_failing(call, kwargs, n)) from e
        if len(out) != n:
            raise UserError(
                f"reward {name} returned {len(out)} rewards for {n} completions",
                hint="return one float (or None) per completion, in order",
            )
        for i, value in enumerate(out):
            if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
                raise UserError(
                    f"reward {name} returned {value!r} ({type(value).__name__}) for {_where(kwargs, i)}",
                    hint="a reward is a float (or None for no opinion) per completion",
                )
        return [None if v is None else float(v) for v in out]

    reward.__name__ = reward.__qualname__ = name
    return reward


def _one(kwargs: dict, i: int) -> dict:
    return {k: v[i : i + 1] if isinstance(v, list) else v for k, v in kwargs.items()}


def _first_failing(call, kwargs: dict, n: int) -> int | None:
    for i in range(n):
        try:
            call(_one(kwargs, i))
        except Exception:
            return i
    return None


def _where(kwargs: dict, i: int) -> str:
    where = kwargs.get("where")
    return f"{where[i]}, completion {kwargs['completions'][i]!r}" if where else f"completion {i}"


def _failure(name: str, e: Exception, kwargs: dict, i: int | None) -> UserError:
    if i is None:
        at = f"a batch of {len(kwargs['completions'])} completions (each alone passes)"
    else:
        at = _where(kwargs, i)
    return UserError(
        f"reward {name} raised {type(e).__name__}: {e} on {at}",
        hint="fix the reward function in the recipe (rerun with --debug for its traceback)",
    )
