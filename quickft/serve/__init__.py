"""`quickft serve RUN_DIR`: an OpenAI-compatible HTTP server for a run (adapter, full fine-tune, or its merged export).


Endpoints (FastAPI on uvicorn):
  GET  /v1/models, /v1/models/{id}   the one model served (its id is the run directory's name)
  POST /v1/chat/completions          messages -> an answer; "stream": true sends server-sent events
  POST /v1/completions               a prompt -> an answer; the same
  GET  /health                       {"status": "ok"} (no API key needed)

What the model sees is what `quickft chat` gives it (chat.build_prompt: the run's chat template, or its prompt
template for prompt/response data), and the answer comes from chat's own generation (generation.stream) with chat's
defaults: a greedy request (temperature 0) gets, token for token, the answer `quickft chat RUN --prompt` prints.
/v1/completions frames its prompt the same way (the text of one user message), not as raw text to continue (a
text-format run continues the text, as chat does).

Concurrency: one model and ONE generation thread. Requests wait in a first-in-first-out queue and are answered one
at a time, in the order they arrived (no batching), so two clients never share a generation and outputs never mix;
a client waits while the answers before it are generated. Rendering and token counting happen on that thread too
(the tokenizer is not shared between threads). At most --max-queue requests wait (503 past it, as Ollama), and a
client that disconnects, streamed or not, waiting or answered, stops its generation.

A system message to a run trained without a system prompt (prompt/response or text data; chat front-ends send one
by default) is dropped, put before the user's message, or refused with a 400, as --system-message says; the response's
X-Quickft-System-Message header and the request's log line say which. Each request is logged in one line (its
tokens, its time queued, to its first token and in all: app.RequestLog), as vLLM logs them.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 a malformed or unsupported
request (bad JSON, a missing or mistyped field, n > 1, max_tokens past the model's context, a parameter quickft does
not implement), 401 a missing or wrong API key, 403 a request from a web page of another origin, 404 an unknown
model or route, 408 a body that does not arrive in time, 413 a body over MAX_BODY_BYTES, 503 a full queue.
It listens on 127.0.0.1 unless told otherwise: another address needs --allow-remote, and the startup line says who
can reach it. Who may reach it, and slow clients: quickft/listen.py.

Files: schema.py (request bodies, OpenAI's error shape), worker.py (the one generation thread and its queue),
app.py (the routes), and here the command: what to serve, loading it, the socket, uvicorn.
"""

from __future__ import annotations

import sys
from pathlib import Path

from quickft.errors import UserError
from quickft.listen import bind, is_loopback, uvicorn_config
from quickft.recipe import recipe_from_dict
from quickft.rundir import open_run, read_json
from quickft.serve.worker import CONCURRENCY, Service
from quickft.session import framing, load_session
from quickft.session import load_merged as load

MAX_QUEUE = 32
"""Requests that may wait for their turn by default (--max-queue); past it a request gets 503 at once."""

# ---------------------------------------------------------------------------------------------- loading


def what_to_serve(path: str | Path) -> dict:
    """The run, or the merged export, at `path` (UserError, exit 2, for anything else): checked before any load."""
    path = Path(path)
    record_file = path / "export.json"
    if path.is_dir() and record_file.is_file() and not (path / "recipe.json").is_file():
        record = read_json(record_file)
        if record.get("to") != "merged":
            raise UserError(
                f"{path} is a {record.get('to')} export: llama.cpp or Ollama serve that",
                hint=f"serve the run itself (quickft serve {record.get('run_dir')}) or its merged export",
            )
        for candidate in (Path(record.get("run_dir", "")), path.parent):
            if (candidate / "recipe.json").is_file():
                return {"kind": "merged", "dir": path, "run": open_run(candidate)}
        raise UserError(
            f"{path} is a merged export of {record.get('run_dir')}, which is not there: quickft serve reads the run's "
            "prompt format from it",
            hint="serve it from where the run is (the export's parent directory), or serve the run itself",
        )
    return {"kind": "run", "dir": path, "run": open_run(path)}


def load_merged(target: dict):
    """A merged export as a chat Session: the weights with transformers alone, the framing from the run it came from."""
    return load(target["dir"], recipe_from_dict(target["run"]["recipe"]))


def main(
    run_dir: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    allow_remote: bool = False,
    max_queue: int = MAX_QUEUE,
    system_message: str = "drop",
) -> None:
    from rich.console import Console
    from rich.markup import escape

    from quickft.serve.app import make_app

    err = Console(stderr=True, soft_wrap=True)
    if not is_loopback(host) and not allow_remote:
        raise UserError(
            f"--host {host} listens beyond this machine: anyone who can reach it can use the model",
            hint="add --allow-remote to mean it (and --api-key KEY to require a key), or leave --host at 127.0.0.1",
        )
    if system_message not in ("drop", "prepend", "refuse"):
        raise UserError(f"--system-message {system_message}: unknown choice", hint="use drop, prepend or refuse")
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key is empty", hint="give a key, or leave --api-key (and QUICKFT_API_KEY) unset")
    target = what_to_serve(run_dir)
    sock = bind(host, port)
    err.print("[dim]loading the model ...[/dim]", highlight=False)
    session = load_merged(target) if target["kind"] == "merged" else load_session(target["dir"])
    run_path: Path = target["run"]["dir"]
    model_id = run_path.name + ("-merged" if target["kind"] == "merged" else "")
    created = int((run_path / "status.json").stat().st_mtime)
    service = Service(session, model_id, created=created, max_queue=max_queue, system_message=system_message)
    app = make_app(service, api_key=api_key, host=host, allow_remote=allow_remote)
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    reach = (
        "loopback only (this machine)"
        if is_loopback(host)
        else f"listening on {host}: reachable from other machines (--allow-remote)"
    )
    key = "API key required" if api_key else "no API key"
    p = session.params
    err.print(f"[dim]{escape(session.description)}\n{escape(framing(session))}[/dim]", highlight=False)
    err.print(
        f"defaults: temperature={p['temperature']} top_p={p['top_p']} max_tokens={p['max_new_tokens']} "
        f"(the run's, as quickft chat); context {service.context} tokens",
        highlight=False,
    )
    if session.style != "chat":
        done = {"drop": "dropped", "prepend": "put before the user's message", "refuse": "refused (400)"}
        err.print(
            f"system messages: {done[system_message]} (--system-message): this run was trained on "
            f"{session.recipe.data.format} data, which has no system prompt; each request's log line says so",
            highlight=False,
        )
    err.print(
        f"serving {model_id!r} on http://{url_host}:{bound_port}/v1 · {reach} · {key} · {CONCURRENCY}",
        highlight=False,
    )
    sys.stderr.flush()
    import uvicorn

    # the connections: the waiting requests, the one answered, and room for /health and /v1/models beside them
    # uvicorn's access log off: the app logs one line per request itself (app.RequestLog)
    config = uvicorn_config(
        app,
        limit_concurrency=max_queue + 32,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])
