"""A recipe's data split three ways: the examples to train on, the test cases (prompts answered and scored), and the
examples the eval loss is computed on. One algorithm holds items out (`hold_out`); each kind of data says what it
is made of and which items may be held out: SFT's examples, preference pairs or KTO's labelled answers (a prompt's
items held out together), GRPO's prompts.

Nothing is written into the recipe: the split says the format it resolved (`Split.format`), and the caller saves it.
Which of the three a recipe's data is, its method says (quickft.methods: each room's `split`, which hands its shape's
reader and key functions to `split_judged` or `split_tasks`); this file reads no shape but SFT's examples.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

from quickft.data.readers import Example, clean_examples, read_data
from quickft.errors import UserError
from quickft.recipe import Recipe

Read = Callable[..., tuple]
"""A shape's reader: (path, Data) -> (the shape it read, the items, the dropped records with their reasons)."""

HOLDOUT_SHARE = 10
"""Test cases taken out of the training data: at most one item in ten."""


@dataclass
class Split:
    train: list
    """What is trained on: examples (SFT), pairs or labelled answers (preference methods), prompts (GRPO)."""
    case_examples: list[Example]
    """The test cases, as prompt/response (or chat) examples: framed for the model once a tokenizer exists."""
    eval: list
    dropped: list[tuple[str, str]]
    format: str
    """The data's format as resolved (`auto` decided): saved in recipe.json, where chat and serve read how to frame a
    prompt."""
    read: int = 0
    """Items read from the file, before anything was dropped or held out."""
    notes: list[str] = field(default_factory=list)
    """What the split did differently from what the recipe asked, and why (shown in the header and `quickft data`)."""
    separate_files: tuple[bool, bool] = (False, False)
    """Whether the test cases and the eval examples came from files of their own (data.test_path, eval.path)."""

    def counts(self, prepared) -> dict:
        """The numbers `quickft data` and the run both report, from the file to the training rows:
        read = dropped_reading + held_out_test_cases + held_out_eval + kept_for_training."""
        cases_file, eval_file = self.separate_files
        return {
            "read": self.read,
            "dropped_reading": len(self.dropped),
            "held_out_test_cases": 0 if cases_file else len(self.case_examples),
            "held_out_eval": 0 if eval_file else len(self.eval),
            "kept_for_training": len(self.train),
            "test_cases_from_file": len(self.case_examples) if cases_file else 0,
            "eval_from_file": len(self.eval) if eval_file else 0,
        } | prepared.counts()


def hold_out(
    items: list, n: int, rng: random.Random, *, may: Callable | None = None, group: Callable | None = None
) -> tuple[list, list]:
    """(the rest, n items picked at random among those `may` allows), both in file order. With `group`, an item held
    out takes every item of its group with it (a KTO prompt's other answers): none of them is trained on."""
    pool = [x for x in items if may is None or may(x)]
    order = list(range(len(pool)))
    rng.shuffle(order)
    picked = set(order[:n])
    held = [x for i, x in enumerate(pool) if i in picked]
    if group is not None:
        groups = {group(x) for x in held}
        return [x for x in items if group(x) not in groups], held
    return [x for x in items if not any(x is h for h in held)], held


def resolved(recipe: Recipe, split: Split) -> Recipe:
    """The recipe with the data format the split resolved (what a run saves in recipe.json)."""
    return replace(recipe, data=replace(recipe.data, format=split.format))


def split_examples(recipe: Recipe) -> Split:
    """SFT: examples to train on, test cases (data.test_path, or held out), eval examples (eval.path, or held out)."""
    given = recipe.data  # the other files are read as the recipe says (auto: by their own keys)
    data = read_data(recipe.data.path, recipe.data)
    read, (examples, dropped) = len(data.examples), clean_examples(data.examples)
    rng = random.Random(recipe.seed)
    notes, holdout = [data.note("data.path")], recipe.data.holdout
    if recipe.data.test_path:
        test = read_data(recipe.data.test_path, given, setting="data.test_path")
        cases = test.examples
        notes.append(test.note("data.test_path"))
    elif all(ex.document for ex in examples):
        cases = []
        if holdout:
            notes.append("no test cases: text documents have no question to answer (give data.test_path for some)")
    else:
        n = min(holdout, len(examples) // HOLDOUT_SHARE)
        if n < holdout:
            notes.append(
                f"{n} test case(s) held out, not data.holdout={holdout}: at most one in {HOLDOUT_SHARE} of the "
                f"{len(examples)} examples (give data.test_path for more)"
            )
        examples, cases = hold_out(examples, n, rng)
    if recipe.eval.path:
        evaluated = read_data(recipe.eval.path, given, setting="eval.path")
        eval_examples = evaluated.examples
        notes.append(evaluated.note("eval.path"))
    else:
        examples, eval_examples = hold_out(examples, int(len(examples) * recipe.eval.fraction), rng)
    if not examples:
        raise UserError(f"{recipe.data.path}: no training examples left after the held-out splits")
    separate = (bool(recipe.data.test_path), bool(recipe.eval.path))
    cases = cases[: recipe.data.max_test_examples]
    return Split(examples, cases, eval_examples, dropped, data.format, read, [n for n in notes if n], separate)


def split_judged(recipe: Recipe, reader: Read, *, what: str, expected: Callable, may: Callable | None = None) -> Split:
    """method="dpo", "orpo", "simpo": preference pairs to train on, and held-out pairs as test cases (their prompt,
    answered and scored against the chosen answer). method="kto": labelled answers, and held-out desirable ones as
    test cases. Items are held out by prompt: a KTO prompt's answers stay together. `reader` reads the shape (pairs,
    or labelled answers, `what`); `expected` is an item's answer a test case expects, `may` whether it may be one."""
    shape, pairs, dropped = reader(recipe.data.path, recipe.data)
    notes, read = [f"{what} read as {shape}"], len(pairs) + len(dropped)
    if recipe.data.test_path:  # any prompt/response file, as for SFT
        cases = _test_cases(recipe, notes)
    else:
        candidates = [p for p in pairs if may is None or may(p)]  # KTO: a desirable answer is expected
        n = min(recipe.data.holdout, len(candidates) // HOLDOUT_SHARE)
        pairs, held = hold_out(pairs, n, random.Random(recipe.seed), may=may, group=prompt_key)
        if not pairs:
            raise UserError(
                f"{recipe.data.path}: nothing left to train on after holding out {n} test case(s): every record "
                "shares a prompt with them",
                hint="set data.holdout=0, or give test cases of their own in data.test_path",
            )
        cases = [_case(p.prompt, expected(p), p) for p in held]
    if recipe.eval.path:  # eval loss on the same kind of data: pairs, or KTO's labelled answers
        evaluated = reader(recipe.eval.path, recipe.data)[1]
    else:  # by prompt, as the test cases
        prompts = sorted({prompt_key(p) for p in pairs})
        _, picked = hold_out(prompts, int(len(prompts) * recipe.eval.fraction), random.Random(recipe.seed))
        picked = set(picked)
        pairs, evaluated = (
            [p for p in pairs if prompt_key(p) not in picked],
            [p for p in pairs if prompt_key(p) in picked],
        )
    if not pairs:
        raise UserError(f"{recipe.data.path}: no {what} left to train on after the held-out splits")
    separate = (bool(recipe.data.test_path), bool(recipe.eval.path))
    return Split(
        pairs, cases[: recipe.data.max_test_examples], evaluated, dropped, _format(pairs), read, notes, separate
    )


def split_tasks(recipe: Recipe, reader: Read) -> Split:
    """method="grpo": prompts to train on (with the columns the rewards read), and held-out prompts with answers as
    test cases. `reader` reads the prompts (data.tasks.read_tasks)."""
    shape, tasks, dropped = reader(recipe.data.path, recipe.data)
    notes, read = [f"prompts read as {shape}"], len(tasks) + len(dropped)
    if recipe.data.test_path:
        cases = _test_cases(recipe, notes)
    else:
        answered = sum(t.answer is not None for t in tasks)
        n = min(recipe.data.holdout, answered // HOLDOUT_SHARE)
        tasks, held = hold_out(tasks, n, random.Random(recipe.seed), may=lambda t: t.answer is not None)
        cases = [_case(t.prompt, {"role": "assistant", "content": t.answer} if t.chat else t.answer, t) for t in held]
    separate = (bool(recipe.data.test_path), False)
    return Split(tasks, cases[: recipe.data.max_test_examples], [], dropped, _format(tasks), read, notes, separate)


def _format(items: list) -> str:
    """How chat and the test cases frame a prompt of pairs or prompts: as a chat, or with the prompt template."""
    return "chat" if items[0].chat else "pairs"


def _case(prompt, expected, item) -> Example:
    """A held-out pair, labelled answer or prompt as a test case: its prompt, and the answer expected."""
    if item.chat:
        return Example(messages=prompt + [expected], where=item.where, tools=item.tools)
    return Example(prompt=prompt, response=expected, where=item.where)


def _test_cases(recipe: Recipe, notes: list[str]) -> list[Example]:
    """data.test_path of a preference or GRPO run: any prompt/response file, as for SFT (its keys said in a note)."""
    test = read_data(recipe.data.test_path, replace(recipe.data, format="auto"), setting="data.test_path")
    if test.columns:
        notes.append(test.note("data.test_path"))
    return test.examples


def prompt_key(item) -> Hashable:
    return json.dumps(item.prompt, sort_keys=True, ensure_ascii=False)
