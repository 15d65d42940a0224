"""The studio's child processes: `quickft serve RUN --port 0` for chat, studio/base.py for base vs fine-tuned.

Started on demand, one of each kind per run, at most MAX_CHILDREN at once (the least recently used idle one is stopped
for a new one), and stopped with the studio. The serve children require a key of the studio's own (QUICKFT_API_KEY in
their environment, not on a command line others can read): only the studio talks to them.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from quickft.errors import UserError

CHILD_START_S = 300
"""How long a child may take to load its model before the request fails."""
SERVE_READY = r"serving .* on (http://127\.0\.0\.1:\d+/v1)"
"""serve's startup line, once the model is loaded (it names the port --port 0 got)."""
BASE_READY = r"^ready"
MAX_CHILDREN = 2
"""Children (each with a model loaded: chat's serve, or base vs fine-tuned) running at once."""


class Busy(UserError):
    """Every child the studio may run is answering: a new one cannot start now (503)."""


class Child:
    """A quickft child process on loopback (serve, or the base-vs-fine-tuned worker), its stderr kept for errors."""

    def __init__(self, args: list[str], *, ready: str, stdin: bool = False, env: dict | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=os.environ | (env or {}),
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self.ready = threading.Event()
        self.ready_pattern = re.compile(ready)
        self.url: str | None = None
        """What the ready line named: serve's /v1 URL."""
        self.started = False
        self.lock = threading.Lock()  # one question at a time for the base worker (it answers in order)
        self.users = 0
        """Requests using it now (each holds a Lease): a child in use is never the one stopped to make room."""
        self.used = time.monotonic()
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


class Lease:
    """A child in use by one request; release() (idempotent) hands it back."""

    def __init__(self, children: Children, child: Child):
        self.children, self.child, self.released = children, child, False

    def release(self) -> None:
        with self.children.lock:
            if not self.released:
                self.released = True
                self.child.users -= 1
                self.child.used = time.monotonic()


class Children:
    """The studio's child processes, one of each kind per run, started on demand, at most `limit` at once, stopped
    with the studio. The serve children require a key of the studio's own (QUICKFT_API_KEY in their environment, not
    on a command line others can read): only the studio talks to them."""

    def __init__(self, limit: int = MAX_CHILDREN):
        self.limit = limit
        self.key = secrets.token_urlsafe(24)
        self._children: dict[tuple[str, str], Child] = {}
        self.lock = threading.Lock()

    def serve(self, path: Path) -> Lease:
        """`quickft serve RUN --port 0` for this run (its /v1 URL: lease.child.url), started if it is not running."""
        return self._lease(
            ("serve", str(path)),
            lambda: Child(
                ["quickft", "serve", str(path), "--port", "0"], ready=SERVE_READY, env={"QUICKFT_API_KEY": self.key}
            ),
            f"quickft serve {path}",
        )

    def base_worker(self, path: Path) -> Lease:
        return self._lease(
            ("base", str(path)),
            lambda: Child(["quickft.studio.base", str(path)], ready=BASE_READY, stdin=True),
            f"the base model of {path}",
        )

    def _lease(self, key: tuple[str, str], start, what: str) -> Lease:
        with self.lock:
            child = self._children.get(key)
            if child is None or not child.alive():
                self._make_room()
                child = self._children[key] = start()
            child.users += 1
            lease = Lease(self, child)
        try:
            child.wait_ready(what)
        except BaseException:
            lease.release()
            raise
        return lease

    def _make_room(self) -> None:
        """Stop the least recently used idle children until a new one fits (with the lock held)."""
        self._children = {k: c for k, c in self._children.items() if c.alive()}
        while len(self._children) >= self.limit:
            idle = [k for k, c in self._children.items() if c.users == 0]
            if not idle:
                raise Busy(
                    f"the studio already runs {self.limit} models (chat or base vs fine-tuned), all answering",
                    hint="try again when an answer is done",
                )
            oldest = min(idle, key=lambda k: self._children[k].used)
            self._children.pop(oldest).stop()

    def stop_all(self) -> None:
        with self.lock:
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
