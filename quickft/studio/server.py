"""`quickft studio [OUTPUTS_DIR]`: the runs, their curves (live while training), compare, chat and the masking
preview, as a local web page.

Offline: the page, its script and plotly.min.js (from the installed plotly package) are served from this machine;
nothing is fetched from elsewhere. It listens on 127.0.0.1 unless told otherwise (another address needs
--allow-remote, as `quickft serve`).

Chat goes through `quickft serve RUN --port 0`, started as a child process (on loopback) the first time a run is
chatted with, and stopped with the studio: the studio proxies the page's request to it and streams the answer back.
Base vs fine-tuned goes through a child running chat's --compare-base code (studio/base.py), one per run.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Query, Request  # at module level: FastAPI reads the handlers' annotations (postponed, as strings)

from quickft.errors import UserError
from quickft.studio import runs as r

STATIC = Path(__file__).parent / "static"
CHILD_START_S = 300
"""How long a child may take to load its model before the request fails."""
SERVE_READY = r"serving .* on (http://127\.0\.0\.1:\d+/v1)"
"""serve's startup line, once the model is loaded (it names the port --port 0 got)."""
BASE_READY = r"^ready"


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


class Child:
    """A quickft child process on loopback (serve, or the base-vs-fine-tuned worker), its stderr kept for errors."""

    def __init__(self, args: list[str], *, ready: str, stdin: bool = False):
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self.ready = threading.Event()
        self.ready_pattern = re.compile(ready)
        self.url: str | None = None
        """What the ready line named: serve's /v1 URL."""
        self.started = False
        self.lock = threading.Lock()  # one question at a time for the base worker (it answers in order)
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        # read to the end: a child whose stderr pipe fills up (uvicorn logs every request) would block
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            if not self.started and (found := self.ready_pattern.search(line)):
                self.url = found.group(1) if found.groups() else None
                self.started = True
                self.ready.set()
        self.ready.set()

    def wait_ready(self, what: str) -> None:
        if not self.ready.wait(CHILD_START_S) or not self.started:
            self.stop()
            said = "\n".join(line for line in self.lines if line.strip())[-2000:]
            raise UserError(f"{what} did not start:\n{said}" if said else f"{what} did not start")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Children:
    """The studio's child processes, one of each kind per run, started on demand and stopped with the studio."""

    def __init__(self):
        self._children: dict[tuple[str, str], Child] = {}
        self._lock = threading.Lock()

    def serve_url(self, path: Path) -> str:
        """The /v1 URL of `quickft serve RUN --port 0` for this run, started if it is not running."""
        child = self._get(
            ("serve", str(path)), lambda: Child(["quickft", "serve", str(path), "--port", "0"], ready=SERVE_READY)
        )
        child.wait_ready(f"quickft serve {path}")
        return child.url

    def base_worker(self, path: Path) -> Child:
        child = self._get(
            ("base", str(path)), lambda: Child(["quickft.studio.base", str(path)], ready=BASE_READY, stdin=True)
        )
        child.wait_ready(f"the base model of {path}")
        return child

    def _get(self, key: tuple[str, str], start) -> Child:
        with self._lock:
            child = self._children.get(key)
            if child is None or not child.alive():
                child = self._children[key] = start()
            return child

    def stop_all(self) -> None:
        with self._lock:
            children, self._children = list(self._children.values()), {}
        for child in children:
            child.stop()


def ask_base(worker: Child, messages: list[dict]) -> dict:
    """The fine-tuned and the base model's answers to the last user message (studio/base.py answers)."""
    with worker.lock:
        worker.process.stdin.write(json.dumps({"messages": messages}) + "\n")
        worker.process.stdin.flush()
        line = worker.process.stdout.readline()
    if not line:
        raise UserError("the base-model worker stopped:\n" + "\n".join(worker.lines))
    return json.loads(line)


def make_app(outputs: Path, plotly: Path, children: Children):
    import httpx
    from fastapi import FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

    app = FastAPI(title="quickft studio", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(UserError)
    async def _user_error(request, e: UserError):
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=400)

    def find(name: str) -> Path:
        try:
            return r.run_dir(outputs, name)
        except KeyError:
            raise HTTPException(404, f"no run {name!r} in {outputs}") from None

    files = {"studio.js": "text/javascript", "studio.css": "text/css"}

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
        """Rows from `since` on (the page polls with the count it has), and the run's status now."""
        path = find(name)
        return {"since": since, "rows": r.metric_rows(path, since), "status": r.run_entry(path)["status"]}

    @app.get("/api/runs/{name}/plots/{file}")
    async def plot(name: str, file: str):
        path = find(name) / file
        if not file.endswith(".png") or "/" in file or not path.is_file():
            raise HTTPException(404, file)
        return FileResponse(path, media_type="image/png")

    @app.get("/api/compare")
    def compare(run: Annotated[list[str], Query()]):  # ?run=a&run=b
        return r.compare_runs([find(name) for name in run])

    @app.get("/api/runs/{name}/masking")
    def masking(name: str, n: int = 3):
        return r.masking_preview(find(name), n=min(max(n, 1), 20))

    async def messages_of(request: Request) -> list[dict]:
        try:
            messages = (await request.json())["messages"]
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, 'send {"messages": [{"role": "user", "content": "..."}]}') from None
        if not isinstance(messages, list) or not messages:
            raise HTTPException(400, "messages: a non-empty list")
        return messages

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, request: Request):
        """The page's conversation, sent to the run's `quickft serve` child; its answer streamed back as server-sent
        events: {"text": piece} ... then {"done": true} (or {"error": message})."""
        path, messages = find(name), await messages_of(request)
        url = await run_in_threadpool(children.serve_url, path)
        payload = {"model": path.name, "messages": messages, "stream": True}

        async def events():
            try:
                async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
                    async with client.stream("POST", f"{url}/chat/completions", json=payload) as answer:
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
            yield sse({"done": True})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/api/runs/{name}/compare-base")
    async def compare_base(name: str, request: Request):
        """The last user message answered by the fine-tuned and by the base model (chat's --compare-base)."""
        path, messages = find(name), await messages_of(request)
        worker = await run_in_threadpool(children.base_worker, path)
        return await run_in_threadpool(ask_base, worker, messages)

    return app


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def main(outputs_dir: str = "outputs", *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> None:
    from quickft.serve import bind, is_loopback

    if not is_loopback(host) and not allow_remote:
        raise UserError(
            f"--host {host} listens beyond this machine: anyone who can reach it sees your runs and can chat with them",
            hint="add --allow-remote to mean it, or leave --host at 127.0.0.1",
        )
    outputs = Path(outputs_dir)
    r.check_outputs_dir(outputs)
    plotly = plotly_js()
    sock = bind(host, port)
    children = Children()
    app = make_app(outputs, plotly, children)
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    reach = "loopback only (this machine)" if is_loopback(host) else "reachable from other machines (--allow-remote)"
    print(
        f"quickft studio: http://{url_host}:{bound_port}/ · {len(r.list_runs(outputs))} runs in {outputs} · {reach}",
        flush=True,
    )
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        children.stop_all()  # the serve children go with the studio (Ctrl-C, SIGTERM)
