"""Text generation shared by `quickft run` (answers to held-out prompts) and `quickft chat`.

Both go through `generate`, so what a run shows after training is exactly what chat will say.
"""

from __future__ import annotations

from collections.abc import Iterator

from quickft.data.chat_template import opens_thinking, split_thinking
from quickft.data.encode import ChatText
from quickft.distributed import sharded
from quickft.errors import is_out_of_memory
from quickft.scoring import matches


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 32,
) -> list[str]:
    """Answers to `prompts` (prompt text already formatted), greedy when temperature == 0.

    Out of memory halves the generation batch and tries that batch again (down to one prompt at a time): answering
    test cases must not cost a run whose training fits.
    """
    import torch

    # FSDP: each forward pass gathers the weights from every process, so all of them generate, in step until the
    # last one is done (transformers' synced_gpus, which it turns on by itself for its own FSDP wrapping only)
    synced = {"synced_gpus": True} if sharded(model) else {}
    was_training = model.training
    if not (was_training and unsloth_generates(model)):
        model.eval()
    # else Unsloth's generate switches to inference itself, and back to training (gradient checkpointing included)
    # only when it finds the model training: after model.eval() checkpointing would stay off for the rest of the run
    answers = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right end
    try:
        i = 0
        while i < len(prompts):
            batch = prompt_batch(tokenizer, prompts[i : i + batch_size], model.device)
            try:
                with torch.no_grad():
                    out = model.generate(**batch, **_sampling(tokenizer, max_new_tokens, temperature, top_p), **synced)
            except Exception as e:
                if not is_out_of_memory(e) or batch_size == 1:
                    raise
                batch_size //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            # bytes that form no character (an answer cut inside one) are left out, as stream() leaves them out
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            answers += [text.replace("\ufffd", "").strip() for text in texts]
            i += len(new_tokens)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def unsloth_generates(model) -> bool:
    """Whether generate() is Unsloth's (FastLanguageModel keeps the library's own as _old_generate)."""
    return any(hasattr(m, "_old_generate") for m in model.modules())


def prompt_batch(tokenizer, prompts: list[str], device) -> dict:
    """Prompts as model inputs, padded on the tokenizer's side. A chat template's rendering (encode.ChatText) has its
    special tokens already and gets none added, as apply_chat_template(tokenize=True) gives it; a prompt/response
    prompt gets the tokenizer's own (BOS), as training gave it."""
    ids = [tokenizer(p, add_special_tokens=not isinstance(p, ChatText))["input_ids"] for p in prompts]
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def greedy_ids(model, tokenizer, prompt: str, *, max_new_tokens: int) -> dict:
    """One prompt answered greedily, as `quickft chat` answers it (the same tokenization and generate arguments):
    its prompt ids, the generated ids (end-of-sequence included when reached) and the answer's text."""
    import torch

    model.eval()
    batch = prompt_batch(tokenizer, [prompt], model.device)
    with torch.no_grad():
        out = model.generate(**batch, **_sampling(tokenizer, max_new_tokens, 0.0, 1.0))
    ids = out[0, batch["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return {"prompt": prompt, "prompt_ids": batch["input_ids"][0].tolist(), "ids": ids, "text": text}


def stream(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop=None,
    stop_strings: list[str] | None = None,
    stats: dict | None = None,
) -> Iterator[str]:
    """Yield the answer to one prompt piece by piece as it is generated, on whole characters (see Utf8Streamer).

    `stop` (a threading.Event) ends generation early; `stop_strings` end it at the token whose text completes one
    of them (that token is yielded: the caller cuts the text); `stats` receives "tokens" (generated,
    end-of-sequence included), "eos" (whether the last of them is end-of-sequence), "first_token_s", "total_s" and
    "invalid_utf8" (pieces of invalid UTF-8 left out).
    """
    import threading
    import time

    import torch
    from transformers import StoppingCriteriaList

    stop = stop or threading.Event()
    stats = stats if stats is not None else {}
    model.eval()
    batch = prompt_batch(tokenizer, [prompt], model.device)
    started = time.perf_counter()
    streamer = Utf8Streamer(tokenizer, stats, started)
    # checked inside generate, not by the reader of the pieces: the reader runs behind the generating thread, so a
    # stop seen there would end generation a varying number of tokens later (and count them)
    text_stops = [StopAtText(tokenizer, batch["input_ids"].shape[1], stop_strings)] if stop_strings else []
    errors = []

    def work():
        try:
            with torch.no_grad():
                model.generate(
                    **batch,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenSet(stop), *text_stops]),
                    **_sampling(tokenizer, max_new_tokens, temperature, top_p),
                )
        except Exception as e:  # re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        stop.set()  # if the caller stopped early (Ctrl-C), end generation too
        thread.join()
        stats["total_s"] = time.perf_counter() - started
    if errors:
        raise errors[0]


class StopWhenSet:
    """A stopping criterion for `generate` (transformers calls each with the ids so far): stop once `event` is set."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


class StopAtText:
    """A stopping criterion for `generate`: stop once the generated text (decoded as Utf8Streamer decodes it) holds
    one of `stops`. Only the newly decoded tail is searched (with the end of the text before it that a stop could
    start in), so a long stop string costs its length once per token, not once per character generated."""

    def __init__(self, tokenizer, prompt_length: int, stops: list[str]):
        self.tokenizer, self.prompt_length, self.stops = tokenizer, prompt_length, stops
        self.longest = max(map(len, stops), default=0)
        self.seen = 0

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        ids = input_ids[0, self.prompt_length :]
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text = text.replace("\ufffd", "")  # as the streamer leaves out bytes that are no character (yet)
        # a stop not found before must end in the new text; 4 more characters in case decoding rewrote the last ones
        tail = text[max(0, self.seen - self.longest - 4) :]
        self.seen = len(text)
        return any(s in tail for s in self.stops)


class Utf8Streamer:
    """A generate() streamer that hands out text on whole UTF-8 characters.

    Byte-level tokenizers split a character (Chinese, emoji, often accented letters) over several tokens: decoding
    after each one shows U+FFFD until the last byte arrives. This streamer decodes everything generated so far at
    each token, holds back a trailing U+FFFD (a character still arriving) and leaves out the ones in the middle (bytes
    that never formed a character: sampled garbage at high temperature), counting them in stats["invalid_utf8"].
    """

    def __init__(self, tokenizer, stats: dict, started: float):
        import queue

        self.tokenizer, self.stats, self.started = tokenizer, stats, started
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False
        self.queue = queue.Queue()

    def put(self, value) -> None:
        import time

        if not self.prompt_seen:  # generate() puts the prompt first
            self.prompt_seen = True
            return
        self.stats.setdefault("first_token_s", time.perf_counter() - self.started)
        self.stats["tokens"] = self.stats.get("tokens", 0) + value.numel()
        self.ids += value.reshape(-1).tolist()
        self.stats["eos"] = self.ids[-1] == self.tokenizer.eos_token_id
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)
        self.queue.put(None)

    def _emit(self, *, final: bool) -> None:
        # no clean-up of tokenization spaces: it may rewrite text already handed out
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not final:
            text = text.rstrip("\ufffd")
        self.stats["invalid_utf8"] = text.count("\ufffd")
        text = text.replace("\ufffd", "")
        if len(text) > self.sent:
            self.queue.put(text[self.sent :])
            self.sent = len(text)

    def __iter__(self):
        while (piece := self.queue.get()) is not None:
            yield piece


GREEDY_BELOW = 1e-5
"""A temperature below this is greedy decoding (vLLM's _SAMPLING_EPS): dividing the logits by 1e-300 overflows them
to infinities, and sampling from those fails."""


def _sampling(tokenizer, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if temperature >= GREEDY_BELOW:
        return kwargs | {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return kwargs | {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def score_cases(model, tokenizer, cases: list[tuple[str, str]], *, how: str, max_new_tokens: int) -> list[dict]:
    """Answer each (prompt text, expected) case greedily and score it; `quickft run` and `quickft eval` share this."""
    answers = generate(model, tokenizer, [p for p, _ in cases], max_new_tokens=max_new_tokens)
    scored = []
    for (p, e), a in zip(cases, answers, strict=True):
        reasoning, final = split_thinking(a, opens_thinking(p))  # a reasoning model is scored on its answer
        row = {"prompt": p, "reference": e, "answer": final, "correct": matches(final, e, how)}
        scored.append(row | ({"reasoning": reasoning} if reasoning else {}))
    return scored
