"""What `quickft serve` and `quickft studio` share about listening: the socket, who may reach it, and how long a
client may take to send its request.

The threat model, for both: on loopback (the default) only this machine's programs reach the server, and a web page
open in this machine's browser is the attacker to keep out. DNS rebinding (a page whose host name now points at
127.0.0.1) is refused by the Host check: on loopback only loopback names are served. Cross-site requests are refused
by the Origin check: a browser names the page that sent a request, and only the server's own origin is taken.
--allow-remote lifts the Host check (other machines' names for this one are not known), and then the key (serve) or
the token (studio) is what keeps others out.

Slow clients: uvicorn has no timeout for reading a request, so a client that sends one byte would hold its
connection for as long as it likes. Here the headers must arrive within READ_TIMEOUT_S (HeaderTimeout, on the
connection), and the body within READ_TIMEOUT_S of them (read_body); uvicorn's limit_concurrency bounds the
connections (503 past it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from quickft.errors import UserError

READ_TIMEOUT_S = 10
"""A request's headers, and then its body, must each arrive within this (the connection is closed, or 408)."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the (slow) model load: a port in use is an error at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}", hint="use an address such as 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", hint="choose another --port") from None
    sock.listen(128)
    return sock


# ---------------------------------------------------------------------------------------------- who may reach it


def guard(app, *, host: str, allow_remote: bool, refuse):
    """`app` behind the Host check (loopback names only, unless --allow-remote) and the Origin check (same origin
    only). `refuse(status, message)` is the response to a refused request, in the server's own error shape."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = SameOrigin(app, refuse)
    if allow_remote:
        return app
    names = [*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host]  # --host 127.0.0.2 is loopback too
    return TrustedHostMiddleware(app, allowed_hosts=list(dict.fromkeys(names)), www_redirect=False)


class SameOrigin:
    """Refuses a request whose Origin header (which browsers send with every POST, and with every cross-origin
    fetch) is not this server's own: a page elsewhere cannot make the server work for it, even blind (a text/plain
    POST needs no CORS preflight). Clients that are not browsers send no Origin and pass."""

    def __init__(self, app, refuse):
        self.app, self.refuse = app, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and (urlsplit(origin).netloc.lower() != host.lower() or not host):
                message = f"a request from the page at {origin} is refused: only this server's own pages may call it"
                await self.refuse(403, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------- reading a request


class BodyError(Exception):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def read_body(request, *, limit: int, drain: int) -> bytes:
    """The request's body: BodyError 413 past `limit` bytes (read and dropped up to `drain`, so the client gets the
    413 rather than a broken pipe), 408 when it takes over READ_TIMEOUT_S to arrive."""
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    too_big = BodyError(413, f"the body is over {limit:,} bytes", "request_too_large")
    if length and length.isdigit() and int(length) > drain:
        raise too_big
    body, size = bytearray(), 0
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    body += chunk
                elif size > drain:
                    break
    except TimeoutError:
        raise BodyError(408, f"the body did not arrive within {READ_TIMEOUT_S} s", "request_timeout") from None
    except ClientDisconnect:  # gone mid-body: nothing to answer, and no traceback in the log for it
        raise BodyError(400, "the client went away before its body ended", "client_gone") from None
    if size > limit:
        raise too_big
    return bytes(body)


def uvicorn_config(app, *, limit_concurrency: int, **settings):
    """uvicorn's settings for both servers: its h11 protocol with the header timeout, a bound on connections."""
    import uvicorn

    return uvicorn.Config(app, http=_header_timeout_protocol(), limit_concurrency=limit_concurrency, **settings)


def _header_timeout_protocol():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        """uvicorn's h11 protocol, closing a connection whose request headers take over READ_TIMEOUT_S to arrive
        (counted from the connection, or from the previous answer on a kept-alive one)."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            waiting_after = self.cycle  # a new cycle starts once a request's headers are in

            def check() -> None:
                idle = self.cycle is None or self.cycle.response_complete  # not answering a request
                if self.cycle is waiting_after and idle and not self.transport.is_closing():
                    self.transport.close()

            if timer := getattr(self, "_header_timer", None):
                timer.cancel()
            self._header_timer = self.loop.call_later(READ_TIMEOUT_S, check)

    return HeaderTimeout
