"""The one generation thread: requests wait in a first-in-first-out queue and are answered one at a time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

from quickft.errors import UserError
from quickft.generation import prompt_batch, stream
from quickft.serve.schema import ApiError, Message
from quickft.session import build_prompt

CONCURRENCY = "one request at a time, in arrival order (a queue, no batching)"
SystemMessage = Literal["drop", "prepend", "refuse"]
"""What a run trained without a system prompt (prompt/response or text data) does with a request's system message:
leave it out, put it before the user's message, or answer 400 (--system-message)."""


# ---------------------------------------------------------------------------------------------- stop strings


class StopCut:
    """Cuts streamed text at the first stop string; text that may be the start of one is held back until it is
    known not to be. Only the held-back text and the new piece are searched (a stop found nowhere before must end in
    the new piece), so each piece costs about the stops' length, however long the answer."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        self.pending += piece
        found = [at for at in (self.pending.find(s) for s in self.stops) if at >= 0]
        if found:
            text, self.pending, self.hit = self.pending[: min(found)], "", True
            return text
        keep = max((self._start_of(s) for s in self.stops), default=0)
        text = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return text

    def _start_of(self, stop: str) -> int:
        """The length of the longest end of the pending text that is a beginning of `stop` (0: none)."""
        pending = self.pending
        at = pending.find(stop[0], max(0, len(pending) - len(stop) + 1))
        while at >= 0:  # only where the stop's first character is: one comparison each
            if stop.startswith(pending[at:]):
                return len(pending) - at
            at = pending.find(stop[0], at + 1)
        return 0

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


# ---------------------------------------------------------------------------------------------- the worker


@dataclass
class Job:
    """One request's work, answered on the worker thread; events go back to the request's event loop."""

    messages: list[Message] | None
    prompt: str | None
    max_tokens: int | None
    temperature: float
    top_p: float
    stops: list[str]
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    halt: threading.Event = field(default_factory=threading.Event)
    """Set when the client has gone (or the answer is done): generation stops, a queued job is skipped."""
    watcher: asyncio.Task | None = None
    """The task that sets `halt` when the client disconnects (app.watch)."""
    id: str = ""
    """The response's id (chatcmpl-..., cmpl-...), which the request's log line names too."""
    system: str | None = None
    """What was done with a system message the run has no place for ("dropped: ..." or "prepended ...")."""
    # the request's log line (app.RequestLog): its clock (time.perf_counter) and counts
    submitted: float = field(default_factory=time.perf_counter)
    ahead: int = 0
    """Requests waiting or being answered when it was queued."""
    began: float | None = None
    """When its turn came."""
    first_token: float | None = None
    ended: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    def send(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the server's loop is closed: shutting down
            self.halt.set()


class Service:
    """The served model, and the single thread that answers every request in turn."""

    def __init__(self, session, model_id: str, *, created: int, max_queue: int, system_message: SystemMessage = "drop"):
        import torch

        self.session, self.model_id, self.created = session, model_id, created
        self.system_message = system_message
        self.context = context_length(session.model, session.tokenizer)
        self.max_queue = max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._turn = threading.Condition()
        self.answering: Job | None = None
        torch.seed()  # unseeded requests sample from a generator seeded by the OS, not from torch's fixed default
        threading.Thread(target=self._work, name="quickft-generation", daemon=True).start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or ApiError 503 when max_queue requests already wait (as Ollama past OLLAMA_MAX_QUEUE);
        requests whose clients have gone do not count."""
        with self._turn:
            self._waiting = collections.deque(j for j in self._waiting if not j.halt.is_set())
            if len(self._waiting) >= self.max_queue:
                raise ApiError(
                    503,
                    f"the server is busy: {len(self._waiting)} requests are waiting for their turn (its --max-queue); "
                    "try again later",
                    code="server_busy",
                )
            job.ahead = len(self._waiting) + (self.answering is not None)
            self._waiting.append(job)
            self._turn.notify()

    def waiting(self) -> int:
        with self._turn:
            return sum(not j.halt.is_set() for j in self._waiting)

    def _next(self) -> Job:
        """The first queued job whose client is still there (the others are dropped unanswered)."""
        with self._turn:
            while True:
                while self._waiting:
                    job = self._waiting.popleft()
                    if not job.halt.is_set():
                        return job
                self._turn.wait()

    def _work(self) -> None:
        while True:
            job = self.answering = self._next()
            try:
                self._answer(job)
            except ApiError as e:
                job.send("error", e)
            except Exception as e:  # generation failed (out of memory, a bug): a 500 for this request only
                job.send("error", ApiError(500, f"generation failed: {type(e).__name__}: {e}"))
            finally:
                self.answering = None

    def render(self, job: Job) -> str:
        """The prompt exactly as `quickft chat` frames it (chat.build_prompt)."""
        session = self.session
        if job.messages is None:
            return build_prompt(session, job.prompt)
        system = [m.text() for m in job.messages if m.role in ("system", "developer")]
        turns = [m for m in job.messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise ApiError(
                400, "messages: the last message must be the user's: it is what the model answers", param="messages"
            )
        if session.style != "chat":
            # a single-turn run answers the last message on its own, as `quickft chat` does
            text = turns[-1].text()
            if system:  # chat front-ends send one by default: --system-message says what becomes of it
                why = f"this run was trained on {session.recipe.data.format} data, which has no system prompt"
                if self.system_message == "refuse":
                    raise ApiError(
                        400,
                        f"messages: {why} (quickft serve --system-message refuse); leave the system message out",
                        param="messages",
                    )
                if self.system_message == "prepend":
                    text = "\n\n".join([*system, text])
                    job.system = f"prepended to the user's message: {why}"
                else:
                    job.system = f"dropped: {why}"
            return build_prompt(session, text)
        history = [{"role": m.role, "content": m.text()} for m in turns[:-1]]
        view = replace(session, history=history, system="\n\n".join(system) or None)
        try:
            return build_prompt(view, turns[-1].text())
        except UserError as e:  # the chat template rejected the conversation
            raise ApiError(400, f"messages: {e.message}", param="messages") from None

    def _answer(self, job: Job) -> None:
        session = self.session
        job.began = time.perf_counter()
        prompt = self.render(job)
        prompt_tokens = job.prompt_tokens = prompt_batch(session.tokenizer, [prompt], "cpu")["input_ids"].shape[1]
        max_tokens = job.max_tokens
        if self.context is not None:
            room = self.context - prompt_tokens
            if room < 1:
                raise ApiError(
                    400,
                    f"the prompt is {prompt_tokens} tokens; the model's context is {self.context} tokens",
                    param="messages" if job.messages is not None else "prompt",
                    code="context_length_exceeded",
                )
            if max_tokens is not None and max_tokens > room:
                raise ApiError(
                    400,
                    f"max_tokens {max_tokens}: the prompt is {prompt_tokens} tokens and the model's context "
                    f"{self.context}, so at most {room}",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
        if max_tokens is None:
            max_tokens = (
                min(session.params["max_new_tokens"], room) if self.context else session.params["max_new_tokens"]
            )
        job.send("start", {"prompt_tokens": prompt_tokens})
        stats: dict = {}
        cut = StopCut(job.stops)
        pieces = stream(
            session.model,
            session.tokenizer,
            prompt,
            max_new_tokens=max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            stop=job.halt,
            stop_strings=job.stops,
            stats=stats,
        )
        # closing `pieces` ends generation (a stop string, or the client went away)
        with own_generator(job.seed, session.model.device), contextlib.closing(pieces):
            for piece in pieces:
                job.first_token = job.first_token or time.perf_counter()
                if text := cut.feed(piece):
                    job.send("text", text)
                if cut.hit or job.halt.is_set():
                    break
        if not cut.hit and (rest := cut.flush()):
            job.send("text", rest)
        tokens = stats.get("tokens", 0)  # generated, end-of-sequence included: what the model really produced
        # "length" only when max_tokens cut the answer: an end-of-sequence as the last allowed token is a natural stop
        reason = "stop" if cut.hit or stats.get("eos") or tokens < max_tokens else "length"
        job.ended, job.completion_tokens, job.finish_reason = time.perf_counter(), tokens, reason
        job.send("done", {"finish_reason": reason, "completion_tokens": tokens})


@contextlib.contextmanager
def own_generator(seed: int | None, device):
    """A seeded request samples from a generator of its own: torch's, forked for it (torch.random.fork_rng) and
    seeded, then put back as it was. Reseeding the shared one would make the next unseeded request's sampling
    predictable."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def context_length(model, tokenizer) -> int | None:
    """The model's context in tokens (its position embeddings), else the tokenizer's limit, else None (no check)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        if isinstance(value := getattr(config, name, None), int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**8 else None
