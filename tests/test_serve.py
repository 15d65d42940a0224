"""`quickft serve`: the real server process on tiny runs trained in this session, talked to with the real `openai`
client (and raw HTTP for what that client cannot send), on 127.0.0.1 only."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai  # the dev extra's: a missing client fails here, it does not skip
import pytest

from quickft.cli import main
from tests.conftest import PROMPT, ROOT, write_recipe

KEY = "test-key-1234"
QUESTIONS = ["¿Cuánto es 3 + 4?", "¿Cuánto es 12 + 9?", "¿Cuánto es 25 + 27?", "¿Cuánto es 7 + 0?"]


# ---------------------------------------------------------------------------------------------- helpers


class Server:
    """A `quickft serve` process on a free loopback port; its stdout and stderr go to a file (a pipe nobody reads
    would fill and stall the server)."""

    def __init__(self, target: Path, log: Path, *args: str, env: dict | None = None):
        self.log = log
        with log.open("w") as out:  # the child has its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "quickft", "serve", str(target), "--port", "0", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=os.environ | (env or {}),
            )

    def wait(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(r"on http://127\.0\.0\.1:(\d+)/v1 ", self.log.read_text()):
                self.port = int(m[1])
                self.url = f"http://127.0.0.1:{self.port}"
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"quickft serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"quickft serve printed no address in {timeout} s:\n{self.log.read_text()}")

    def client(self, api_key: str = KEY):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def chat_answers(run: Path, questions: list[str], *args: str) -> list[str]:
    """What `quickft chat RUN` answers, one line of piped stdin per question (a prompt/response run answers each
    on its own; a chat-format run remembers the conversation)."""
    result = subprocess.run(
        [sys.executable, "-m", "quickft", "chat", str(run), *args],
        input="\n".join(questions) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answers = result.stdout.split("\n")[:-1]
    assert len(answers) == len(questions), result.stdout
    return answers


# ---------------------------------------------------------------------------------------------- fixtures


PAIRS = [(3, 4), (12, 9), (25, 27), (7, 0), (1, 1), (20, 6), (14, 15), (9, 9)]
LEARNT = (
    "mode='full', max_seq_length=32, micro_batch_size=8, learning_rate=1e-2, weight_decay=0.0, max_steps=40, "
    "logging_steps=20, max_new_tokens=12, backend='peft'"
)
"""Forty steps of the tiny model on PAIRS (a few seconds): eight answers half learnt by heart, so answers of several
tokens, different for each question, ending in end-of-sequence. PEFT's loading (plain transformers for a full
fine-tune) computes what the merged export loaded with transformers computes, and imports faster than Unsloth."""


def train(tmp: Path, model: Path, data: str) -> Path:
    recipe = write_recipe(
        tmp / "recipe.py",
        f"recipe = Recipe(model={str(model)!r}, data={data}, {LEARNT})\n",
    )
    assert main(["run", str(recipe), "--output-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A prompt/response run (greedy by default)."""
    tmp = tmp_path_factory.mktemp("serve_qa")
    data = tmp / "sums.txt"
    data.write_text(
        "\n###\n".join(f"Pregunta: ¿Cuánto es {a} + {b}?\nRespuesta: {a} + {b} = {a + b}" for a, b in PAIRS),
        encoding="utf-8",
    )
    return train(
        tmp, tiny_model_dir, f"Data(path={str(data)!r}, format='blocks', prompt_template={PROMPT!r}, holdout=0)"
    )


@pytest.fixture(scope="module")
def chat_format_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A chat-format run (ChatML; 0.7 by default, as every chat run)."""
    tmp = tmp_path_factory.mktemp("serve_chat")
    data = tmp / "chat.jsonl"
    conversations = [
        [{"role": "user", "content": f"{a} + {b}"}, {"role": "assistant", "content": f"{a + b}"}] for a, b in PAIRS
    ]
    data.write_text("\n".join(json.dumps({"messages": c}) for c in conversations), encoding="utf-8")
    return train(tmp, tiny_model_dir, f"Data(path={str(data)!r}, chat_template='chatml', holdout=0)")


@pytest.fixture(scope="module")
def started(qa_run, tmp_path_factory):
    """The module's server, started with --api-key; killed at the end of the module whatever happened."""
    server = Server(qa_run, tmp_path_factory.mktemp("serve_log") / "server.log", "--api-key", KEY)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def expected(started, qa_run) -> dict[str, str]:
    """`quickft chat`'s greedy answers to QUESTIONS, asked while the server loads its model."""
    answers = dict(zip(QUESTIONS, chat_answers(qa_run, QUESTIONS), strict=True))
    assert len(set(answers.values())) == len(QUESTIONS) and all(answers.values()), answers  # a mix-up would show
    return answers


@pytest.fixture(scope="module")
def server(started, expected) -> Server:
    return started.wait()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def tokenizer(qa_run):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qa_run)


def prompt_tokens(tokenizer, question: str) -> int:
    """The prompt as training framed it, with the tokenizer's own special tokens (BOS)."""
    return len(tokenizer(PROMPT.format(prompt=question))["input_ids"])


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def ask(client, question: str, *, chat: bool = True, stream: bool = False, **options):
    """(text, finish_reason, usage) of one request, streamed or not; a stream asks for its usage too."""
    model = client.models.list().data[0].id
    if stream:
        options["stream_options"] = {"include_usage": True}
    if chat:
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=stream, **options
        )
    else:
        out = client.completions.create(model=model, prompt=question, stream=stream, **options)
    if not stream:
        choice = out.choices[0]
        return (choice.message.content if chat else choice.text), choice.finish_reason, out.usage
    chunks = list(out)
    pieces = [(c.choices[0].delta.content or "") if chat else c.choices[0].text for c in chunks if c.choices]
    text = "".join(pieces)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) == 1 and chunks[-1].choices == [], "one finish_reason, then the usage chunk"
    if chat:
        assert chunks[0].choices[0].delta.role == "assistant"
    return text, reasons[0], chunks[-1].usage


# ---------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(("chat", "stream"), [(True, False), (True, True), (False, False), (False, True)])
def test_answers_are_quickft_chats_with_token_counts(client, expected, tokenizer, chat, stream):
    for question, answer in expected.items():
        text, reason, usage = ask(client, question, chat=chat, stream=stream)
        assert (text, reason) == (answer, "stop"), question
        assert usage.prompt_tokens == prompt_tokens(tokenizer, question)
        assert usage.completion_tokens == len(text_ids(tokenizer, answer)) + 1  # the answer, then end-of-sequence
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_offline_demo_run_answers_as_chat_does(tiny_math_run, tmp_path):
    """The demo's own run (recipes/tiny_math.py, trained once per test session): greedy answers through the openai
    client, streamed and not, chat and completions, are `quickft chat`'s, and right."""
    questions = ["¿Cuánto es 23 + 45?", "¿Cuánto es 8 + 17?", "¿Cuánto es 61 + 39?"]
    expected = chat_answers(tiny_math_run, questions)
    assert expected == ["68", "25", "100"]
    server = Server(tiny_math_run, tmp_path / "server.log").wait()
    try:
        client = server.client()  # started without --api-key: any key is taken
        for question, answer in zip(questions, expected, strict=True):
            for chat, stream in ((True, False), (True, True), (False, False), (False, True)):
                assert ask(client, question, chat=chat, stream=stream)[:2] == (answer, "stop"), (question, chat, stream)
    finally:
        server.stop()


def test_the_one_model_is_listed_and_the_startup_line_says_who_can_reach_it(client, server, qa_run):
    assert [m.id for m in client.models.list().data] == [qa_run.name]
    assert client.models.retrieve(qa_run.name).id == qa_run.name
    log = server.log.read_text()
    assert "loopback only (this machine)" in log and "API key required" in log
    assert "one request at a time, in arrival order" in log


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_answer_and_end_generation(client, expected, tokenizer, stream):
    question, answer = QUESTIONS[1], expected[QUESTIONS[1]]
    ids = text_ids(tokenizer, answer)
    assert len(ids) >= 4, answer
    # a stop made of the end of one token and the start of the next: it arrives split over two streamed pieces
    left, right = decode(tokenizer, ids[:2]), decode(tokenizer, ids[:3])
    stop = left[-1] + right[len(left)]
    at = answer.index(stop)
    for chat in (True, False):
        text, reason, usage = ask(client, question, chat=chat, stream=stream, stop=stop)
        assert (text, reason) == (answer[:at], "stop")
        # generation ends at the token that completes the stop, counted; none after it
        needed = next(n for n in range(1, len(ids) + 1) if stop in decode(tokenizer, ids[:n]))
        assert usage.completion_tokens == needed
    never = "\u00a7never\u00a7"
    assert ask(client, question, stream=stream, stop=[never, stop])[0] == answer[:at]  # any of several
    assert ask(client, question, stream=stream, stop=never)[:2] == (answer, "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_cuts_the_answer_and_says_length(client, expected, tokenizer, stream):
    question, answer = QUESTIONS[2], expected[QUESTIONS[2]]
    ids = text_ids(tokenizer, answer)
    text, reason, usage = ask(client, question, stream=stream, max_tokens=2)
    assert (text, reason, usage.completion_tokens) == (decode(tokenizer, ids[:2]), "length", 2)
    # the whole answer but not its end-of-sequence: cut; one more token and the model ends it itself
    text, reason, usage = ask(client, question, stream=stream, max_tokens=len(ids))
    assert (text, reason, usage.completion_tokens) == (answer, "length", len(ids))
    text, reason, usage = ask(client, question, stream=stream, max_tokens=len(ids) + 1)
    assert (text, reason, usage.completion_tokens) == (answer, "stop", len(ids) + 1)


def test_a_seed_makes_sampling_reproducible(client):
    def sample(seed=None, **options):
        return ask(client, QUESTIONS[0], temperature=1.0, seed=seed, max_tokens=8, **options)[0]

    first = sample(7)
    sample()  # an unseeded answer in between moves the generator on
    assert sample(7) == first
    assert sample(7, stream=True) == first
    assert len({sample(seed) for seed in range(1, 6)}) >= 2, "temperature 1 samples: the seeds give other answers"


def test_concurrent_clients_each_get_their_own_answer(server, expected):
    """Two clients at once, one streaming chat, the other plain completions: every answer is its question's."""
    start = threading.Barrier(2)
    got: dict[str, list] = {"chat": [], "completions": []}

    def work(kind: str, questions: list[str]):
        client = server.client()
        start.wait()
        for q in questions:
            got[kind].append((q, ask(client, q, chat=kind == "chat", stream=kind == "chat")[0]))

    threads = [
        threading.Thread(target=work, args=("chat", QUESTIONS * 2)),
        threading.Thread(target=work, args=("completions", QUESTIONS[::-1] * 2)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for kind, answers in got.items():
        assert len(answers) == 2 * len(QUESTIONS), kind
        assert all(text == expected[q] for q, text in answers), (kind, answers)


# ---------------------------------------------------------------------------------------------- system messages, the log


def log_line(server: Server, request_id: str, timeout: float = 10) -> str:
    """The server's log line for one request (the line is written once its answer has gone out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in server.log.read_text().splitlines() if f" {request_id} " in line]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no log line for {request_id}:\n{server.log.read_text()[-3000:]}")


def logged(line: str) -> dict:
    """A request's log line, read back: its tokens and times."""
    figure = {
        "prompt": r"prompt (\d+) tokens",
        "generated": r" (\d+) generated",
        "queued": r"queued ([\d.]+) s",
        "ahead": r"\((\d+) ahead\)",
        "first": r"first token ([\d.]+) s",
        "total": r"([\d.]+) s in all",
    }
    found = {key: re.search(pattern, line) for key, pattern in figure.items()}
    return {key: float(m.group(1)) for key, m in found.items() if m}


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}  # what chat front-ends send by default


@pytest.mark.parametrize("stream", [False, True])
def test_a_system_message_to_a_run_trained_without_one_is_dropped_and_said_so(
    server, client, qa_run, expected, tokenizer, stream
):
    """Chat front-ends send a system message by default: a prompt/response run answers the user's message as it
    was trained (the system message left out), and the response's header and the log say so."""
    question = QUESTIONS[1]
    options = {"stream_options": {"include_usage": True}} if stream else {}
    raw = client.chat.completions.with_raw_response.create(
        model=qa_run.name, messages=[SYSTEM, {"role": "user", "content": question}], stream=stream, **options
    )
    note = raw.headers["x-quickft-system-message"]
    assert note == "dropped: this run was trained on blocks data, which has no system prompt"
    out = raw.parse()
    if stream:
        chunks = list(out)
        text, usage, rid = (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
            chunks[-1].usage,
            chunks[0].id,
        )
    else:
        text, usage, rid = out.choices[0].message.content, out.usage, out.id
    assert text == expected[question], "quickft chat's answer to the question alone"
    assert usage.prompt_tokens == prompt_tokens(tokenizer, question), "the system message is not in the prompt"
    assert f"system message {note}" in log_line(server, rid)


def test_each_request_is_logged_in_one_line_with_its_tokens_and_times(server, client, qa_run, tokenizer, expected):
    """The log line's figures against the response's usage (itself checked against the tokenizer above) and our own
    clock around the request."""
    question = QUESTIONS[2]
    began = time.perf_counter()
    out = client.chat.completions.create(model=qa_run.name, messages=[{"role": "user", "content": question}])
    took = time.perf_counter() - began
    line = log_line(server, out.id)
    assert re.match(rf"INFO: +127\.0\.0\.1:\d+ POST /v1/chat/completions 200 {out.id} · ", line), line
    figures = logged(line)
    assert figures["prompt"] == out.usage.prompt_tokens == prompt_tokens(tokenizer, question)
    assert figures["generated"] == out.usage.completion_tokens == len(text_ids(tokenizer, expected[question])) + 1
    assert figures["queued"] <= figures["first"] <= figures["total"] <= took, (figures, took)
    assert line.endswith(" s in all") and " · stop · " in line
    models = client.models.with_raw_response.list()  # a request that generates nothing: its route, status, time
    assert models.status_code == 200
    lines = [line for line in server.log.read_text().splitlines() if "GET /v1/models 200 · " in line]
    assert lines and re.fullmatch(r"INFO: +127\.0\.0\.1:\d+ GET /v1/models 200 · [\d.]+ s in all", lines[-1])
    assert '"POST /v1/chat/completions HTTP/1.1" 200' not in server.log.read_text(), "uvicorn's access log is off"


@pytest.mark.parametrize("how", ["prepend", "refuse"])
def test_system_message_prepend_or_refuse(qa_run, tmp_path, tokenizer, how):
    """--system-message prepend: the system message, a blank line, then the user's, in the training template (as
    `quickft chat --prompt` answers that text); refuse: the 400 of a strict server."""
    question = QUESTIONS[0]
    server = Server(qa_run, tmp_path / "server.log", "--system-message", how).wait()
    try:
        client = server.client()
        messages = [SYSTEM, {"role": "user", "content": question}]
        if how == "refuse":
            with pytest.raises(openai.BadRequestError, match="which has no system prompt .*--system-message refuse"):
                client.chat.completions.create(model=qa_run.name, messages=messages)
            assert "system messages: refused (400) (--system-message)" in server.log.read_text()
            return
        raw = client.chat.completions.with_raw_response.create(model=qa_run.name, messages=messages)
        assert raw.headers["x-quickft-system-message"].startswith("prepended to the user's message: ")
        out = raw.parse()
        together = f"{SYSTEM['content']}\n\n{question}"
        chat = subprocess.run(
            [sys.executable, "-m", "quickft", "chat", str(qa_run), "--prompt", together],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert chat.returncode == 0, chat.stderr
        assert out.choices[0].message.content == chat.stdout.rstrip("\n")
        assert out.usage.prompt_tokens == prompt_tokens(tokenizer, together)
        assert "system message prepended to the user's message" in log_line(server, out.id)
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- bad requests


def test_bad_requests_get_a_4xx_that_says_what_is_wrong(server, client, qa_run, expected):
    import httpx

    def post(body: bytes, *, key: str | None = KEY, path: str = "/v1/chat/completions"):
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        response = httpx.post(server.url + path, content=body, headers=headers, timeout=60)
        return response.status_code, response.json()["error"]["message"]

    model = qa_run.name
    user = [{"role": "user", "content": QUESTIONS[0]}]
    code, message = post(b'{"model": "x", "messages": [')
    assert code == 400 and "not valid JSON" in message
    code, message = post(json.dumps({"model": model}).encode())
    assert (code, message) == (400, "messages: required")
    code, message = post(json.dumps({"model": model, "prompt": "hola"}).encode())  # a completions field
    assert code == 400  # every problem at once
    assert message.startswith("messages: required; prompt: not supported by quickft serve (it takes model, ")
    code, message = post(json.dumps({"model": model, "messages": user, "temperature": "hot"}).encode())
    assert code == 400 and message.startswith("temperature: ")
    code, message = post(json.dumps({"model": model, "messages": user}).encode(), key=None)
    assert code == 401 and "API key" in message
    assert httpx.get(server.url + "/health", timeout=60).json()["status"] == "ok"  # no key needed there

    with pytest.raises(openai.BadRequestError, match="logit_bias: not supported"):
        client.chat.completions.create(model=model, messages=user, logit_bias={"5": 1})
    with pytest.raises(openai.BadRequestError, match="n: quickft serve answers one choice"):
        client.chat.completions.create(model=model, messages=user, n=2)
    with pytest.raises(openai.BadRequestError, match="over the model's context of 64 tokens"):
        client.completions.create(model=model, prompt=QUESTIONS[0], max_tokens=1000)
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' is not served here") as e:
        client.chat.completions.create(model="gpt-4o", messages=user)
    assert e.value.status_code == 404
    with pytest.raises(openai.APIStatusError, match="over 1,000,000 bytes") as e:
        client.completions.create(model=model, prompt="x" * 1_200_000)
    assert e.value.status_code == 413
    for wrong in ("wrong-key", KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as e:
            server.client(api_key=wrong).chat.completions.create(model=model, messages=user)
        assert e.value.status_code == 401
    assert ask(client, QUESTIONS[0])[0] == expected[QUESTIONS[0]], "and the server goes on answering"


# ---------------------------------------------------------------------------------------------- hostile clients


def raw_post(server: Server, body: bytes, *, path: str = "/v1/chat/completions", length: int | None = None):
    """A socket that has sent one POST (its headers say `length` bytes, the body's own by default)."""
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_a_long_or_a_fifth_stop_string_is_refused_at_once(client, qa_run, expected):
    """A stop string's cost was the square of its length, per generated piece (a 900,000-character one held the one
    generation thread for hours): stops are capped as OpenAI caps them, and only the new text is searched."""
    from quickft.serve.schema import MAX_STOP_CHARS

    quick = client.with_options(timeout=20)
    question = QUESTIONS[0]
    user = [{"role": "user", "content": question}]
    for stop, says in ((["x"] * 5, "stop: at most 4 sequences"), ("x" * 900_000, "stop: at most 256 characters")):
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError, match=says):
            quick.chat.completions.create(model=qa_run.name, messages=user, stop=stop, max_tokens=20)
        assert time.monotonic() - started < 10
    # four of the longest allowed, each beginning as the answer does: every piece is held back as a possible stop
    # until the end shows it is none; the answer comes out whole
    answer = expected[question]
    stops = [answer[:k] + "\u00a7" * (MAX_STOP_CHARS - k) for k in range(len(answer) - 3, len(answer) + 1)]
    assert len(stops) == 4 and all(len(s) == MAX_STOP_CHARS for s in stops)
    for stream in (False, True):
        assert ask(quick, question, stream=stream, stop=stops)[:2] == (answer, "stop")


def test_dns_rebinding_and_cross_site_requests_are_refused(server, qa_run, expected):
    """A web page can make the browser send requests to 127.0.0.1: under its own host name after DNS rebinding
    (refused: only loopback names are served without --allow-remote), or from its own origin (refused: only the
    server's own origin is taken; a text/plain POST needs no CORS preflight, so the browser would send it)."""
    import httpx

    key = {"Authorization": f"Bearer {KEY}"}
    question = QUESTIONS[3]
    body = json.dumps({"model": qa_run.name, "messages": [{"role": "user", "content": question}]})
    for path in ("/v1/models", "/health"):
        rebound = httpx.get(server.url + path, headers=key | {"Host": f"attacker.example:{server.port}"}, timeout=30)
        assert rebound.status_code == 400 and qa_run.name not in rebound.text, path
        for name in ("127.0.0.1", "localhost"):
            assert httpx.get(server.url + path, headers=key | {"Host": f"{name}:{server.port}"}).status_code == 200
    cross = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers=key | {"Content-Type": "text/plain", "Origin": "http://evil.example"},
        timeout=30,
    )
    assert cross.status_code == 403 and "http://evil.example is refused" in cross.json()["error"]["message"]
    own = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers=key | {"Content-Type": "application/json", "Origin": server.url},
        timeout=60,
    )
    assert own.status_code == 200 and own.json()["choices"][0]["message"]["content"] == expected[question]


def test_a_tiny_temperature_is_greedy_and_deep_json_is_a_400(server, client, expected):
    import httpx

    question = QUESTIONS[2]
    assert ask(client, question, temperature=1e-300)[:2] == (expected[question], "stop")  # was a 500 (inf logits)
    deep = b"[" * 100_000 + b"]" * 100_000
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=deep,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["message"] == (
        "the body is nested too deeply to be a request"
    )


def test_a_seed_does_not_make_the_next_unseeded_request_predictable(client):
    """A seeded request samples from a generator of its own: the unseeded request after it is not fixed by it."""

    def sample(seed=None) -> str:
        return ask(client, QUESTIONS[0], temperature=2.0, top_p=1.0, seed=seed, max_tokens=12)[0]

    seeded, after = [], []
    for _ in range(5):
        seeded.append(sample(11))
        after.append(sample())
    assert len(set(seeded)) == 1, "a seed still fixes its own request's answer"
    assert len(set(after)) >= 2, after  # reseeding torch's global generator made all five the same


def test_slow_clients_are_cut_off(server):
    """A client that sends a byte of its headers, or a byte of its body, no longer holds its connection: the
    headers must arrive within READ_TIMEOUT_S (then the connection is closed), the body within as long again (408)."""
    import socket

    from quickft.listen import READ_TIMEOUT_S

    started = time.monotonic()
    headers = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_S + 15)
    headers.sendall(b"P")
    body = raw_post(server, b"{", length=1000)
    body.settimeout(READ_TIMEOUT_S + 15)
    raw_post(server, b"{", length=1000).close()  # gone mid-body: no traceback in the log for it
    assert headers.recv(1024) == b"", "closed by the server, with nothing said"
    took = time.monotonic() - started
    assert READ_TIMEOUT_S - 1 < took < READ_TIMEOUT_S + 5, took
    answer = b""
    while b"}}" not in answer and (more := body.recv(65536)):  # the head and the JSON error may come apart
        answer += more
    head, _, error = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408 "), answer
    assert json.loads(error)["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < READ_TIMEOUT_S + 5
    headers.close()
    body.close()
    assert "Traceback" not in server.log.read_text()


# ---------------------------------------------------------------------------------------------- the command


def test_a_remote_address_needs_allow_remote(qa_run):
    result = subprocess.run(
        [sys.executable, "-m", "quickft", "serve", str(qa_run), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: --host 0.0.0.0 listens beyond this machine")
    assert "fix: add --allow-remote" in result.stderr and "Traceback" not in result.stderr


def test_bad_run_directories_exit_2_before_loading(tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "export.json").write_text(json.dumps({"to": "gguf", "run_dir": str(tmp_path / "run")}))
    cases = [
        (tmp_path / "missing", "run directory not found"),
        (not_a_run, "is not a quickft run directory"),
        (gguf, "is a gguf export: llama.cpp or Ollama serve that"),
    ]
    for path, says in cases:
        assert main(["serve", str(path), "--port", "0"]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and "fix:" in err and "Traceback" not in err


def test_an_unknown_system_message_choice_is_exit_2(qa_run, capsys):
    assert main(["serve", str(qa_run), "--port", "0", "--system-message", "keep"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --system-message keep: unknown choice") and "drop, prepend or refuse" in err


def test_help_is_fast_and_imports_no_server_or_model_library():
    heavy = ("torch", "transformers", "fastapi", "uvicorn", "starlette")
    code = (
        "import sys; from quickft.cli import main; main(['serve', '--help']); "
        f"print([m for m in {heavy} if m in sys.modules])"
    )
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout
    assert time.perf_counter() - started < 10
    assert "--allow-remote" in result.stdout and "QUICKFT_API_KEY" in result.stdout
    assert result.stdout.split("Examples", 1)[1].count("quickft serve ") >= 2


# ---------------------------------------------------------------------------------------------- the merged export


def test_the_merged_export_of_a_chat_run_serves_chats_answers(chat_format_run, tmp_path):
    """A chat-format run (ChatML) merged with `quickft export`: a system prompt and a multi-turn conversation are
    framed as `quickft chat` frames them. The key comes from QUICKFT_API_KEY."""
    from transformers import AutoTokenizer

    from quickft.chat import turn
    from quickft.session import load_session

    merged = tmp_path / "merged"
    assert main(["export", str(chat_format_run), "--to", "merged", "--out", str(merged)]) == 0
    server = Server(merged, tmp_path / "server.log", env={"QUICKFT_API_KEY": "env-key"})
    try:
        # chat's own layers, in this process while the server loads (its answers hold newlines: no piped lines),
        # greedy and 4 tokens long, as `quickft chat --temperature 0 --max-new-tokens 4` answers: a message with a
        # system prompt, then a conversation of two turns (the tiny model's context, 64 tokens, holds no more)
        session = load_session(chat_format_run)
        session.params |= {"temperature": 0.0, "max_new_tokens": 4}

        def say(question: str) -> str:
            out = io.StringIO()
            turn(session, question, out=out)
            return out.getvalue().removesuffix("\n")

        session.system = "Suma."
        with_system = say("3 + 4")
        session.system, session.history = None, []
        first, second = say("3 + 4"), say("12 + 9")
        assert first != second and all((with_system, first, second))  # a dropped system prompt: prompt_tokens

        client = server.wait().client(api_key="env-key")
        model = f"{chat_format_run.name}-merged"
        assert [m.id for m in client.models.list().data] == [model]
        tokenizer = AutoTokenizer.from_pretrained(merged)

        def served(messages: list[dict]) -> str:
            answer = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=4)
            framed = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            assert answer.usage.prompt_tokens == len(framed if isinstance(framed, list) else framed["input_ids"])
            return answer.choices[0].message.content

        user = {"role": "user", "content": "3 + 4"}
        assert served([{"role": "system", "content": "Suma."}, user]) == with_system
        assert served([user]) == first
        # the earlier answer as chat keeps it in its history (without the spaces around it)
        assert served([user, session.history[1], {"role": "user", "content": "12 + 9"}]) == second
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key=KEY).models.list()
    finally:
        server.stop()
