"""How an answer is scored against its reference (Eval.match and the grpo reward exact_answer share it): "exact"
(the same text, whitespace aside), "contains", or "number" (the same first number of the final answers). Pure
Python: no model here; generation.score_cases answers the test cases and scores them with `matches`.
"""

from __future__ import annotations

import re


def exact_match(answer: str, reference: str) -> bool:
    return " ".join(answer.split()) == " ".join(reference.split())


def first_number(text: str) -> float | None:
    """The first number in a text: "Son 1.234,5 euros" -> 1234.5, "x = -3" -> -3.0, "3/4" -> 3.0."""
    m = re.search(r"-?\d[\d.,]*", text)
    if not m:
        return None
    number = m.group().rstrip(".,")
    if "," in number and "." in number:  # the later one is the decimal mark
        thousands = "." if number.rfind(",") > number.rfind(".") else ","
        number = number.replace(thousands, "").replace(",", ".")
    elif "," in number:
        number = number.replace(",", ".") if len(number.split(",")[-1]) != 3 else number.replace(",", "")
    try:
        return float(number)
    except ValueError:
        return None


def final_answer(text: str) -> str:
    """The final answer of a worked solution: after GSM8K's last "####" (or MetaMathQA's last "The answer is:"), else
    inside the last <answer>...</answer> or \\boxed{...}, else the whole text."""
    for mark in ("####", "The answer is:"):
        if mark in text:
            return text.rsplit(mark, 1)[1].strip()
    for pattern in (r"<answer>(.*?)</answer>", r"\\boxed\{([^{}]*)\}"):
        found = re.findall(pattern, text, re.DOTALL)
        if found:
            return found[-1].strip()
    return text


def matches(answer: str, expected: str, how: str) -> bool:
    """Score one answer: "exact" (same text, whitespace-insensitive), "contains", or "number" (the same first number
    of the final answers: "#### 42", "The answer is: 42", <answer>42</answer> and \\boxed{42} are read as 42)."""
    if how == "contains":
        return " ".join(expected.split()).lower() in " ".join(answer.split()).lower()
    if how == "number":
        got, want = first_number(final_answer(answer)), first_number(final_answer(expected))
        return got is not None and want is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))
    return exact_match(answer, expected)
