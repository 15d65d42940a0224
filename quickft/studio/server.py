"""`quickft studio [OUTPUTS_DIR]`: the runs, their curves (live while training), compare, chat and the masking
preview, as a local web page.

Offline: the page, its script and plotly.min.js (from the installed plotly package) are served from this machine;
nothing is fetched from elsewhere. It listens on 127.0.0.1 unless told otherwise (another address needs
--allow-remote, as `quickft serve`, and then a token, printed at start, as Jupyter does). Who may reach it:
quickft/listen.py (the Host and Origin checks); the routes that do work (chat, base vs fine-tuned, the masking
preview) are POSTs of JSON, which a form on another site cannot send. Nothing outside the outputs folder is read
(runs.check_inside, runs.check_data_paths).

Chat goes through `quickft serve RUN --port 0`, started as a child process the first time a run is chatted with:
the studio proxies the page's request to it and streams the answer back. Base vs fine-tuned goes through a child
running chat's --compare-base code (studio/base.py). The children (children.py) stop with the studio, on Ctrl-C or
SIGTERM alike (the app's lifespan).
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.util
import json
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Query, Request  # at module level: FastAPI reads the handlers' annotations (postponed, as strings)

from quickft.errors import UserError
from quickft.listen import BodyError, bind, guard, is_loopback, read_body, uvicorn_config
from quickft.studio import runs as r
from quickft.studio.children import Busy, Children, ask_base

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1_000_000
"""The largest request body (a conversation) the studio reads."""


def plotly_js() -> Path:
    """plotly.min.js as the installed plotly package ships it (no CDN)."""
    spec = importlib.util.find_spec("plotly")
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError(
            "quickft studio draws its curves with plotly.js, from the plotly package, which is not installed",
            hint="pip install plotly (or reinstall quickft: pip install -e .)",
        )
    return path


def make_app(outputs: Path, plotly: Path, children: Children, *, host: str = "127.0.0.1", token: str | None = None):
    """The studio's app, behind listen.guard (Host and Origin) and, with a token (--allow-remote), TokenRequired."""
    import httpx
    from fastapi import FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # on the way out, Ctrl-C or SIGTERM alike (uvicorn re-raises SIGTERM after this, so no `finally` runs then)
        await run_in_threadpool(children.stop_all)

    app = FastAPI(title="quickft studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    roots = [Path.cwd(), outputs]
    """Where the data files a run's recipe names may lie: relative paths are read from the working directory."""

    @app.exception_handler(UserError)
    async def _user_error(request, e: UserError):
        status = 503 if isinstance(e, Busy) else 403 if isinstance(e, r.Outside) else 400
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=status)

    def find(name: str) -> Path:
        try:
            return r.run_dir(outputs, name)
        except KeyError:
            raise HTTPException(404, f"no run {name!r} in {outputs}") from None

    async def json_of(request: Request) -> dict:
        """The body of a POST: JSON, which a form on another site cannot send (415 otherwise), of bounded size,
        read within listen.READ_TIMEOUT_S."""
        if request.headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "send the body as JSON, with Content-Type: application/json")
        try:
            raw = await read_body(request, limit=MAX_BODY_BYTES, drain=MAX_BODY_BYTES)
        except BodyError as e:
            raise HTTPException(e.status, e.message) from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply ([[[[...)
            raise HTTPException(400, "the body is not a JSON object") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body is not a JSON object")
        return data

    files = {name: "text/javascript" for name in ("studio.js", "plots.js", "tabs.js")} | {"studio.css": "text/css"}

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{file}")
    async def static(file: str):
        if file == "plotly.min.js":
            return FileResponse(plotly, media_type="text/javascript")
        if file not in files:
            raise HTTPException(404, file)
        return FileResponse(STATIC / file, media_type=files[file])

    @app.get("/api/runs")
    def runs():
        return {"outputs": str(outputs), "runs": r.list_runs(outputs)}

    @app.get("/api/runs/{name}")
    def run(name: str):
        return r.run_detail(find(name))

    @app.get("/api/runs/{name}/metrics")
    def metrics(name: str, since: int = 0):
        """Rows from `since` on (the page polls with the count it has), the run's status now and, while it runs, its
        progress (step, time trained, time left)."""
        path = find(name)
        status = r.run_entry(path)["status"]
        progress = r.progress(path) if status == "running" else None
        return {"since": since, "rows": r.metric_rows(path, since), "status": status, "progress": progress}

    @app.get("/api/runs/{name}/plots/{file}")
    async def plot(name: str, file: str):
        path = find(name) / file  # find: no file of the run links outside the outputs folder
        if not file.endswith(".png") or "/" in file or not path.is_file():
            raise HTTPException(404, file)
        return FileResponse(path, media_type="image/png")

    @app.get("/api/compare")
    def compare(run: Annotated[list[str], Query()]):  # ?run=a&run=b
        return r.compare_runs([find(name) for name in run])

    @app.post("/api/runs/{name}/masking")
    async def masking(name: str, request: Request):
        """{"n": N}: the first N training sequences (a POST: it reads the data and loads a tokenizer)."""
        path, n = find(name), (await json_of(request)).get("n", 3)
        if not isinstance(n, int):
            raise HTTPException(400, "n: a whole number of examples")
        return await run_in_threadpool(r.masking_preview, path, roots, min(max(n, 1), 20))

    async def messages_of(request: Request) -> list[dict]:
        messages = (await json_of(request)).get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(400, 'send {"messages": [{"role": "user", "content": "..."}]}')
        return messages

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, request: Request):
        """The page's conversation, sent to the run's `quickft serve` child; its answer streamed back as server-sent
        events: {"text": piece} ... then {"done": true} (or {"error": message})."""
        path, messages = find(name), await messages_of(request)
        lease = await run_in_threadpool(children.serve, path)
        payload = {"model": path.name, "messages": messages, "stream": True}
        headers = {"Authorization": f"Bearer {children.key}"}

        async def events():
            try:
                async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
                    url = f"{lease.child.url}/chat/completions"
                    async with client.stream("POST", url, json=payload, headers=headers) as answer:
                        if answer.status_code != 200:
                            body = json.loads(await answer.aread())
                            yield sse({"error": body.get("error", {}).get("message", str(body))})
                            return
                        async for line in answer.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            for choice in json.loads(line[6:]).get("choices", []):
                                if text := choice.get("delta", {}).get("content"):
                                    yield sse({"text": text})
            except httpx.HTTPError as e:
                yield sse({"error": f"quickft serve stopped answering: {e}"})
                return
            finally:
                lease.release()
            yield sse({"done": True})

        # released by the stream's end, or (a client gone before it began) by the background task
        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            background=BackgroundTask(lease.release),
        )

    @app.post("/api/runs/{name}/compare-base")
    async def compare_base(name: str, request: Request):
        """The last user message answered by the fine-tuned and by the base model (chat's --compare-base)."""
        path, messages = find(name), await messages_of(request)
        lease = await run_in_threadpool(children.base_worker, path)
        try:
            return await run_in_threadpool(ask_base, lease.child, messages)
        finally:
            lease.release()

    def refuse(status: int, message: str):
        return JSONResponse({"error": message, "hint": None}, status_code=status)

    secured = TokenRequired(app, token, refuse) if token else app
    return guard(secured, host=host, allow_remote=token is not None, refuse=refuse)


class TokenRequired:
    """--allow-remote: every request needs the token the studio printed, as Jupyter's: the address printed at start
    (/?token=...) sets it as a cookie the browser sends back (SameSite=Strict: never from another site's page); a
    script sends it as Authorization: Bearer TOKEN or ?token=."""

    def __init__(self, app, token: str, refuse):
        self.app, self.token, self.refuse = app, token, refuse

    async def __call__(self, scope, receive, send):
        from starlette.requests import Request as Incoming
        from starlette.responses import RedirectResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Incoming(scope)
        cookie = f"quickft_studio_{scope['server'][1]}"  # cookies ignore ports: one per studio
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        in_query = request.query_params.get("token")
        given = in_query or request.cookies.get(cookie) or (bearer.strip() if scheme.lower() == "bearer" else "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            message = "this studio needs its token: open the address it printed at start (it ends in ?token=...)"
            return await self.refuse(401, message)(scope, receive, send)
        if in_query and request.method == "GET" and scope["path"] == "/":
            # from the address bar into a cookie, and out of the address bar (and the browser's history)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(cookie, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def main(outputs_dir: str = "outputs", *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> None:
    if not is_loopback(host) and not allow_remote:
        raise UserError(
            f"--host {host} listens beyond this machine: anyone who can reach it sees your runs and can chat with them",
            hint="add --allow-remote to mean it (the studio then asks for a token it prints), or leave --host at "
            "127.0.0.1",
        )
    outputs = Path(outputs_dir)
    r.check_outputs_dir(outputs)
    plotly = plotly_js()
    sock = bind(host, port)
    children = Children()
    token = secrets.token_urlsafe(24) if allow_remote else None
    app = make_app(outputs, plotly, children, host=host, token=token)
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    reach = "loopback only (this machine)" if is_loopback(host) else "reachable from other machines (--allow-remote)"
    address = f"http://{url_host}:{bound_port}/" + (f"?token={token}" if token else "")
    print(f"quickft studio: {address} · {len(r.list_runs(outputs))} runs in {outputs} · {reach}", flush=True)
    if token:
        print(
            "  the token in that address is required (--allow-remote): share it only with whom may use the studio",
            flush=True,
        )
    import uvicorn

    config = uvicorn_config(app, limit_concurrency=64, log_level="warning", timeout_graceful_shutdown=3)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        children.stop_all()  # the lifespan's shutdown did it, unless the server never started
