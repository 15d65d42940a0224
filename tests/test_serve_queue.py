"""`quickft serve`'s queue: a client that goes away stops its generation (answering or waiting), and the queue is
bounded (503 past --max-queue). A real server process on 127.0.0.1, on a run that never stops talking."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from quickft.cli import main
from tests.conftest import PROMPT, write_recipe
from tests.test_serve import KEY, Server, raw_post

LONG = 3000
"""Tokens the endless run is asked for: several seconds of generation each, even on a fast CPU."""


@pytest.fixture(scope="module")
def endless_run(tmp_path_factory, tiny_model_dir, sums_file) -> Path:
    """The tiny model with room for 4,096 positions (its rotary embeddings need no training for them), trained one
    step at a negligible learning rate: still random, its greedy answer repeats a pattern and never ends."""
    tmp = tmp_path_factory.mktemp("endless")
    model = tmp / "model"
    model.mkdir()
    for file in tiny_model_dir.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 4096}))
    recipe = write_recipe(
        tmp / "recipe.py",
        f"recipe = Recipe(model={str(model)!r}, data=Data(path={str(sums_file)!r}, prompt_template={PROMPT!r}), "
        "mode='full', max_seq_length=32, micro_batch_size=4, learning_rate=1e-9, max_steps=1, max_new_tokens=4, "
        "backend='peft')\n",
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_clients_that_go_away_stop_their_generation_and_the_queue_is_bounded(endless_run, tmp_path):
    server = Server(endless_run, tmp_path / "server.log", "--api-key", KEY, "--max-queue", "3").wait()
    try:

        def health() -> dict:
            return httpx.get(server.url + "/health", timeout=10).json()

        def request(*, stream: bool = False, max_tokens: int = LONG) -> bytes:
            body = {"model": endless_run.name, "messages": [{"role": "user", "content": "1 + 1"}]}
            return json.dumps(body | {"max_tokens": max_tokens, "stream": stream}).encode()

        # the run never ends its answer: what the abandoned requests below would generate is LONG tokens each
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            content=request(stream=True),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=30,
        ) as streamed:
            chunks = 0
            for line in streamed.iter_lines():
                chunks += line.startswith("data: {")
                if chunks == 200:
                    break
        assert chunks == 200, "it is still answering after 200 chunks"
        wait_for(lambda: not health()["answering"], 5, "the stream's client went away: its generation stops")

        # a non-streamed request, abandoned while it is answered
        running = raw_post(server, request())
        wait_for(lambda: health()["answering"], 10, "the request is being answered")
        running.close()
        wait_for(lambda: not health()["answering"], 5, "its client went away: its generation stops")

        # one answered (its client stays), three waiting: the queue is full, the next gets 503 at once
        running = raw_post(server, request(stream=True))
        wait_for(lambda: health()["answering"], 10, "the first request is being answered")
        waiting = [raw_post(server, request()) for _ in range(3)]
        wait_for(lambda: health()["waiting"] == 3, 10, "three requests wait")
        full = httpx.post(
            server.url + "/v1/chat/completions",
            content=request(max_tokens=2),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert full.status_code == 503 and full.json()["error"]["code"] == "server_busy"
        for sock in waiting:
            sock.close()
        wait_for(lambda: health()["waiting"] == 0, 5, "their clients went away: they no longer wait")
        running.close()
        wait_for(lambda: not health()["answering"], 5, "the answered one's client went away too")

        # nothing abandoned is generated: a new request is answered at once
        started = time.monotonic()
        answered = httpx.post(
            server.url + "/v1/chat/completions",
            content=request(max_tokens=2),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=60,
        )
        assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 2
        assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_the_log_says_how_long_a_request_waited_and_behind_how_many(endless_run, tmp_path):
    """A request sent while another is answered waits its turn: its log line's time queued and count ahead, against
    our own clock (it cannot begin before the one ahead of it has been answered)."""
    import threading

    from tests.test_serve import log_line, logged

    server = Server(endless_run, tmp_path / "server.log", "--api-key", KEY).wait()
    client = server.client()
    messages = [{"role": "user", "content": "1 + 1"}]
    try:
        first: dict = {}

        def long_answer():
            first["out"] = client.chat.completions.create(model=endless_run.name, messages=messages, max_tokens=600)
            first["done"] = time.monotonic()

        thread = threading.Thread(target=long_answer)
        thread.start()
        wait_for(lambda: httpx.get(server.url + "/health", timeout=10).json()["answering"], 30, "the first answer")
        sent = time.monotonic()
        second = client.chat.completions.create(model=endless_run.name, messages=messages, max_tokens=2)
        answered = time.monotonic()
        thread.join(120)
        assert first["out"].usage.completion_tokens == 600 and first["done"] - sent > 0.2, "it was still answering"

        behind = logged(log_line(server, second.id))
        assert behind["ahead"] == 1
        assert first["done"] - sent - 0.5 <= behind["queued"] <= answered - sent, (behind, first["done"] - sent)
        assert behind["generated"] == second.usage.completion_tokens == 2
        ahead = logged(log_line(server, first["out"].id))
        assert ahead["ahead"] == 0 and ahead["generated"] == 600 and ahead["queued"] < 0.5
    finally:
        server.stop()
