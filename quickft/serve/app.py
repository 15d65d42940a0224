"""The HTTP routes: OpenAI's /v1/models, /v1/chat/completions and /v1/completions (streamed or not), /health."""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import uuid

from fastapi import Request  # at module level: FastAPI reads the handlers' annotations (postponed, as strings)

from quickft.listen import BodyError, guard, read_body
from quickft.serve.schema import ApiError, ApiRequest, ChatRequest, CompletionRequest, parse
from quickft.serve.worker import CONCURRENCY, Job, Service

MAX_BODY_BYTES = 1_000_000
"""The largest request body accepted (413 beyond it): far more than any prompt a small model's context holds."""
DRAIN_BYTES = 64_000_000
"""An oversized body is read (and dropped) up to this, so the client gets the 413 instead of a broken pipe."""


# ---------------------------------------------------------------------------------------------- the app


class ClientGone(Exception):
    """The client disconnected before its answer: nothing is sent (there is no one to send it to)."""


def make_app(
    service: Service, *, api_key: str | None = None, host: str = "127.0.0.1", allow_remote: bool = False, log=None
):
    """The FastAPI app over `service`, behind listen.guard (the Host and Origin checks), every request logged in one
    line (RequestLog, to `log`: stderr by default). Bodies are read and checked here (schema.parse), not by FastAPI's
    own validation, so that every error, 413 included, is OpenAI's shape."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="quickft serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ClientGone)
    async def _client_gone(request, e: ClientGone):
        return Response(status_code=499)  # nginx's "client closed request"; uvicorn sends nothing on a closed socket

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):  # a bug: still OpenAI's shape (uvicorn logs the traceback)
        return JSONResponse(ApiError(500, f"{type(e).__name__}: {e}").body(), status_code=500)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        message = f"{request.method} {request.url.path}: {e.detail}"
        if e.status_code == 404:
            message += "; the endpoints are /v1/models, /v1/chat/completions and /v1/completions"
        return JSONResponse(ApiError(e.status_code, message).body(), status_code=e.status_code)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the key quickft serve was started with, as Authorization: Bearer KEY",
                code="invalid_api_key",
            )

    async def body_of(request: Request) -> bytes:
        try:
            return await read_body(request, limit=MAX_BODY_BYTES, drain=DRAIN_BYTES)
        except BodyError as e:
            raise ApiError(e.status, e.message, code=e.code) from None

    async def watch(request: Request, job: Job) -> None:
        """Halts `job` when its client disconnects, queued or answering (streamed or not), and wakes its handler.
        The body has been read: the next message the server has for this request is its disconnection."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.halt.set()
        job.events.put_nowait(("gone", None))

    async def next_event(job: Job) -> tuple[str, object]:
        kind, value = await job.events.get()
        if kind == "gone":
            raise ClientGone
        if kind == "error":
            raise value
        return kind, value

    def model_card() -> dict:
        return {
            "id": service.model_id,
            "object": "model",
            "created": service.created,
            "owned_by": "quickft",
            "context_length": service.context,
            "prompting": service.session.style,
            "concurrency": CONCURRENCY,
        }

    def check_model(name: str) -> None:
        if name != service.model_id:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {service.model_id!r}",
                param="model",
                code="model_not_found",
            )

    async def start(request: Request, kind: type[ApiRequest]) -> tuple[ApiRequest, Job, dict]:
        """Parse and check a request, queue it, and wait for its turn: the first event says it is under way
        (with its prompt's token count), or is the 4xx its rendering raised."""
        check_key(request)
        body = parse(await body_of(request), kind)
        check_model(body.model)
        if body.n not in (None, 1):
            raise ApiError(400, f"n: quickft serve answers one choice per request (n=1), got {body.n}", param="n")
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if service.context is not None and max_tokens is not None and max_tokens > service.context:
            raise ApiError(
                400,
                f"max_tokens {max_tokens}: over the model's context of {service.context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        prompt = None
        if isinstance(body, CompletionRequest):
            prompt = body.prompt
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    raise ApiError(400, f"prompt: one prompt per request, got {len(prompt)}", param="prompt")
                prompt = prompt[0]
        params = service.session.params
        job = Job(
            id=f"{'chatcmpl' if isinstance(body, ChatRequest) else 'cmpl'}-{uuid.uuid4().hex}",
            messages=getattr(body, "messages", None),
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=params["temperature"] if body.temperature is None else body.temperature,
            top_p=params["top_p"] if body.top_p is None else body.top_p,
            stops=body.stops(),
            seed=body.seed,
            loop=asyncio.get_running_loop(),
        )
        service.submit(job)
        request.state.job = job  # for the request's log line
        job.watcher = asyncio.create_task(watch(request, job))
        try:
            _, value = await next_event(job)  # its turn has come
        except BaseException:
            finish(job)
            raise
        return body, job, value

    def finish(job: Job) -> None:
        job.halt.set()  # answered, failed, or the client went away: generation stops, a queued job is dropped
        job.watcher.cancel()

    async def answer(job: Job) -> tuple[str, dict]:
        pieces = []
        try:
            while True:
                kind, value = await next_event(job)
                if kind == "text":
                    pieces.append(value)
                else:
                    return "".join(pieces), value
        finally:
            finish(job)

    def usage(start_info: dict, done: dict) -> dict:
        p, c = start_info["prompt_tokens"], done["completion_tokens"]
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def sse(data) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def notes(job: Job) -> dict:
        """Response headers saying what was done with the request beyond OpenAI's API: a system message dropped or
        prepended (the run was trained without one)."""
        return {"X-Quickft-System-Message": job.system} if job.system else {}

    def streamed(body: ApiRequest, job: Job, start_info: dict, *, chat: bool) -> StreamingResponse:
        head = {
            "id": job.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": service.model_id,
        }

        def chunk(text: str | None, reason: str | None = None, *, role: bool = False) -> dict:
            if chat:
                delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            return head | {"choices": [choice]}

        async def events():
            try:
                if chat:
                    yield sse(chunk("", role=True))
                while True:
                    kind, value = await job.events.get()
                    if kind == "text":
                        yield sse(chunk(value))
                    elif kind == "error":
                        yield sse(value.body())
                        break
                    elif kind == "gone":
                        return
                    else:
                        yield sse(chunk(None if chat else "", value["finish_reason"]))
                        if body.stream_options and body.stream_options.include_usage:
                            yield sse(head | {"choices": [], "usage": usage(start_info, value)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                finish(job)  # the client went away (or the answer is done): stop generating

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"} | notes(job)
        )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": service.model_id,
            "waiting": service.waiting(),
            "answering": bool(service.answering),
        }

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        check_key(request)
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body, job, start_info = await start(request, ChatRequest)
        if body.stream:
            return streamed(body, job, start_info, chat=True)
        text, done = await answer(job)
        answered = {
            "id": job.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": service.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": done["finish_reason"],
                }
            ],
            "usage": usage(start_info, done),
        }
        return JSONResponse(answered, headers=notes(job))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body, job, start_info = await start(request, CompletionRequest)
        if body.stream:
            return streamed(body, job, start_info, chat=False)
        text, done = await answer(job)
        answered = {
            "id": job.id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": service.model_id,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": done["finish_reason"]}],
            "usage": usage(start_info, done),
        }
        return JSONResponse(answered, headers=notes(job))

    def refuse(status: int, message: str):
        return JSONResponse(ApiError(status, message).body(), status_code=status)

    return RequestLog(guard(app, host=host, allow_remote=allow_remote, refuse=refuse), log or _stderr)


# ---------------------------------------------------------------------------------------------- the log


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class RequestLog:
    """One line per request once it is answered (or its client has gone), as vLLM logs each request: the client,
    the route, the status, and for an answer its id, its tokens (the prompt as the model saw it, the generated ones,
    end-of-sequence included), its time in the queue (with how many requests were ahead of it), to its first token
    and in all (from the request's arrival), its generation rate, why it ended, and what was done with a system
    message the run has no place for. uvicorn's own access log is off (serve's main): this replaces it."""

    def __init__(self, app, write):
        self.app, self.write = app, write

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived, status = time.perf_counter(), None
        state = scope.setdefault("state", {})  # request.state's dict: the handler leaves its Job there

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.write(request_line(scope, status, arrived, time.perf_counter(), state.get("job")))


def request_line(scope, status: int | None, arrived: float, ended: float, job: Job | None) -> str:
    client = "{}:{}".format(*scope["client"]) if scope.get("client") else "-"
    parts = [f"INFO:     {client} {scope['method']} {scope['path']} {status or 'gone'}"]
    if job is not None:
        if job.prompt_tokens is not None:
            parts[0] += f" {job.id}"
            parts.append(f"prompt {job.prompt_tokens} tokens")
        if job.completion_tokens is not None:
            generating = job.ended - job.began if job.ended and job.began else 0.0
            rate = f" ({job.completion_tokens / generating:.1f} tokens/s)" if generating > 0 else ""
            parts.append(f"{job.completion_tokens} generated{rate}")
        if job.began is not None:
            parts.append(f"queued {job.began - job.submitted:.3f} s ({job.ahead} ahead)")
        if job.first_token is not None:
            parts.append(f"first token {job.first_token - arrived:.3f} s")
        if job.finish_reason:
            parts.append(job.finish_reason)
        elif job.began is not None and job.prompt_tokens is not None:
            parts.append("client gone before the end")
        if job.system:
            parts.append(f"system message {job.system}")
    parts.append(f"{ended - arrived:.3f} s in all")
    return " · ".join(parts)
