"""Loading an export back and comparing its answers with the run's: the proof behind `quickft export`.

Each side answers the same held-out prompts greedily, one at a time, as `quickft chat` does; answers are compared as
token ids (the prompt's and the answer's), so a tokenizer difference counts as much as a weight difference.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from quickft.export.llamacpp import LlamaCppFailed, greedy_answers, metadata, next_token_agreement
from quickft.generation import greedy_ids
from quickft.recipe import Recipe
from quickft.session import load_plain, load_session

CHECK_PROMPTS = 20
"""Held-out prompts answered by each form (the first ones of samples.jsonl)."""


def merge_rounding(plan: dict) -> str | None:
    """Why the merged model cannot answer exactly as the run (None: it can): 16-bit weights, a recipe that sets a
    16-bit precision (chat loads the base in it), or a GPU's 16-bit arithmetic on the run's side. A CPU's own bf16
    pick (precision=auto) trains in bf16 but answers in fp32: exact."""
    import torch

    if plan["dtype"] != "float32":
        return f"the merged weights are rounded to {plan['dtype']}"
    if plan["recipe"].precision in ("bf16", "fp16"):  # chat loads the base in it, as training did
        return f"the run answers in {plan['recipe'].precision} (precision={plan['recipe'].precision})"
    if torch.cuda.is_available():
        return "the run answers in 16-bit on this GPU"
    return None


def held_out_prompts(run_dir: Path) -> list[str]:
    """The run's held-out prompts (as the model sees them), from samples.jsonl."""
    samples = Path(run_dir) / "samples.jsonl"
    if not samples.is_file():
        return []
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt"] for r in rows[:CHECK_PROMPTS]]


def answers_of_run(run_dir: Path, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """The adapter's (or full run's) greedy answers, loaded as `quickft chat` loads the run, with PEFT: Unsloth is
    not imported into this process, since it patches the transformers and PEFT that merge and load back."""
    session = load_session(run_dir, backend="peft")
    answers = [greedy_ids(session.model, session.tokenizer, p, max_new_tokens=max_new_tokens) for p in prompts]
    del session
    gc.collect()
    return answers


def answers_of_dir(model_dir: Path, prompts: list[str], max_new_tokens: int, device: str | None = None) -> list[dict]:
    """Greedy answers of a plain Hugging Face directory, loaded with transformers alone (session.load_plain: in its
    saved dtype on the GPU where it fits, in float32 on the CPU otherwise)."""
    model, tokenizer, _, _ = load_plain(model_dir, device)
    answers = [greedy_ids(model, tokenizer, p, max_new_tokens=max_new_tokens) for p in prompts]
    del model
    gc.collect()
    return answers


def compare(reference: list[dict], candidate: list[dict], *, rounded: str | None = None) -> dict:
    """How many answers are token-for-token the same (prompt ids included), and whether that is enough.

    Exact forms (float32 weights compared with a float32 run) must agree on every answer. Where `rounded` says why
    the weights were rounded (16-bit, q8_0, q4_k_m), an answer may change: every prompt must still tokenize the same
    and at least half the answers must agree (fewer is a broken export, not rounding)."""
    pairs = list(zip(reference, candidate, strict=True))
    same = sum(r["ids"] == c["ids"] and r["prompt_ids"] == c["prompt_ids"] for r, c in pairs)
    same_prompt = sum(r["prompt_ids"] == c["prompt_ids"] for r, c in pairs)
    first_diff = next(
        (
            {"prompt": r.get("prompt"), "expected": r["text"], "got": c["text"]}
            for r, c in pairs
            if r["ids"] != c["ids"] or r["prompt_ids"] != c["prompt_ids"]
        ),
        None,
    )
    if rounded is None:
        rule, ok = "every answer token-for-token the same", same == len(pairs)
    else:
        rule = f"{rounded}: every prompt tokenized the same, at least half the answers the same"
        ok = same_prompt == len(pairs) and 2 * same >= len(pairs)
    return {
        "identical": same,
        "of": len(pairs),
        "prompt_tokens_identical": same_prompt,
        "rule": rule,
        "ok": ok,
        "first_difference": first_diff,
    }


def check_gguf(gguf: Path, merged_dir: Path, prompts: list[str], merged_answers: list[dict], plan: dict) -> dict:
    """llama.cpp's tokens and greedy answers for each prompt against the merged model's (transformers')."""
    from transformers import AutoTokenizer

    recipe: Recipe = plan["recipe"]
    n_ctx = max(len(a["prompt_ids"]) for a in merged_answers) + recipe.max_new_tokens + 8
    try:
        got = greedy_answers(gguf, prompts, max_new_tokens=recipe.max_new_tokens, n_ctx=n_ctx)
    except LlamaCppFailed as e:
        return failed_check(str(e), len(prompts))
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    candidate = [a | {"text": tokenizer.decode(a["ids"], skip_special_tokens=True).strip()} for a in got]
    rounded = None if plan["quant"] == "f32" else f"{plan['quant']} rounds the weights"
    return compare(merged_answers, candidate, rounded=rounded)


def failed_check(error: str, n: int) -> dict:
    """A check that could not run its model (llama.cpp crashed on the file): failed, saying why."""
    return {"ok": False, "error": error, "identical": 0, "of": n, "prompt_tokens_identical": 0, "rule": "loads"}


ADAPTER_AGREEMENT = 0.9
"""At least this share of the answers' tokens must be llama.cpp's own next-token choice, with the adapter on the base
GGUF (teacher-forced on the run's answers). Measured on SmolLM2-135M's Q4_1 GGUF: 98% (docs/export.md)."""


def check_adapter(base_gguf: Path, adapter: Path, reference: list[dict]) -> dict:
    """A GGUF LoRA on its base GGUF, against the run's own greedy answers (base + adapter in PyTorch, as `quickft
    chat` answers). Greedy answers on a quantized base drift apart after the first near-tie (on SmolLM2's Q4_1 GGUF
    none of five 128-token answers stayed identical, with or without an adapter), so each answer's positions are
    scored once, teacher-forced: is the reference's next token llama.cpp's most likely one? The same is measured
    without the adapter, as a control: an adapter applied wrongly scores below the base alone."""
    try:
        with_adapter = next_token_agreement(base_gguf, reference, lora=adapter)
        without = next_token_agreement(base_gguf, reference)
    except LlamaCppFailed as e:
        return failed_check(str(e), len(reference))
    positions = sum(a["positions"] for a in with_adapter)
    share = sum(a["matches"] for a in with_adapter) / positions if positions else 1.0
    share_without = sum(a["matches"] for a in without) / positions if positions else 1.0
    same_prompt = sum(a["prompt_ids"] == r["prompt_ids"] for a, r in zip(with_adapter, reference, strict=True))
    ok = same_prompt == len(reference) and share >= ADAPTER_AGREEMENT and share >= share_without - 0.01
    return {
        "ok": ok,
        "of": len(reference),
        "prompt_tokens_identical": same_prompt,
        "positions": positions,
        "agreement": round(share, 4),
        "agreement_without_adapter": round(share_without, 4),
        "rule": (
            f"every prompt tokenized the same; with the adapter, llama.cpp's most likely next token is the run's at "
            f">= {ADAPTER_AGREEMENT:.0%} of the answers' positions, and no less often than without it (within 1 point)"
        ),
    }


def check_metadata(gguf: Path, merged_dir: Path) -> dict:
    """The GGUF's special tokens and chat template against the tokenizer's: a wrong EOS never stops."""
    from transformers import AutoTokenizer

    meta = metadata(gguf)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    problems = []
    if meta["eos_token_id"] != tokenizer.eos_token_id:
        problems.append(f"EOS is token {meta['eos_token_id']}, the tokenizer's is {tokenizer.eos_token_id}")
    if tokenizer.bos_token_id is not None and meta["bos_token_id"] not in (None, tokenizer.bos_token_id):
        problems.append(f"BOS is token {meta['bos_token_id']}, the tokenizer's is {tokenizer.bos_token_id}")
    if meta["padding_token_id"] not in (None, tokenizer.pad_token_id):
        problems.append(f"padding is token {meta['padding_token_id']}, the tokenizer's is {tokenizer.pad_token_id}")
    if (tokenizer.chat_template or None) != (meta["chat_template"] or None):
        problems.append("the chat template differs from the tokenizer's")
    rows = json.loads((merged_dir / "config.json").read_text(encoding="utf-8")).get("vocab_size") or len(tokenizer)
    if meta["n_tokens"] != max(rows, len(tokenizer)):  # the converter pads the vocabulary to the embedding's rows
        problems.append(f"{meta['n_tokens']} tokens in the GGUF, {len(tokenizer)} in the tokenizer, {rows} rows")
    meta = {k: v for k, v in meta.items() if k != "chat_template"} | {"has_chat_template": bool(meta["chat_template"])}
    return {"ok": not problems, "problems": problems, **meta}
