"""uvicorn's HTTP protocol with TCP_NODELAY set on every accepted connection, a
deadline for request headers, and the connection limit's 503 in the API's error shape
(NoDelayH11Protocol's docstring).

With --workers > 1 uvicorn binds the listening socket itself (`socket.socket(family)`,
so proto = 0) and hands it to the worker processes; asyncio only sets TCP_NODELAY on
accepted sockets whose proto is IPPROTO_TCP, so Nagle's algorithm stays on. uvicorn
writes a response's headers and body in two writes, and the body then waits for the
client's delayed ACK: +40 ms on every keep-alive request (measured here: 44 ms for
GET /healthz with 2 workers, 0.8 ms with 1). Upstream: Kludex/uvicorn issue 3149.
Setting the option per connection works whichever way the socket was bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from typing import TYPE_CHECKING, Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.errors import OVERLOADED
from app.gate import EXEMPT_PATHS, Refusal, send_refusal
from store.settings import ConnectionSettings

if TYPE_CHECKING:
    from app.settings import Settings

OVERLOAD_RETRY_AFTER_S = 1
"""Retry-After of the 503 beyond ZEROUNLEARN_MAX_CONNECTIONS: a hint to back off briefly
(requests here take milliseconds; the limit is reached by held connections)."""


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP transport's socket (no-op otherwise)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol (the one it picks without httptools), TCP_NODELAY on, and
    a deadline for a request's headers, which uvicorn lacks (slowloris).

    The deadline (ZEROUNLEARN_HEADER_TIMEOUT_S, validated by app.settings at start) runs
    from the connection's start, or from the end of the previous response, until the
    request line and headers are complete; past it the connection is closed. A response
    that ends while the client is still sending a body nobody reads closes the
    connection too (a trickled body would otherwise keep it open for ever).

    Beyond the connection limit (uvicorn's limit_concurrency, ZEROUNLEARN_MAX_CONNECTIONS)
    uvicorn answers a plain-text 503 of its own. Here the same test is made by `_admit`,
    which answers 503 `overloaded` in the API's error shape with Retry-After, never reads
    the body and closes the connection. The probes and the scrape (app.gate.EXEMPT_PATHS)
    are answered even then: a liveness probe that failed under load would have a busy but
    healthy process restarted.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout_s()
        self._header_timer: asyncio.TimerHandle | None = None
        # uvicorn's own check (and its plain-text 503) off; _admit makes it instead
        self.max_connections: int | None = self.limit_concurrency
        self.limit_concurrency = None
        self._routes: ASGIApp = self.app
        self.app = self._admit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        self._arm_header_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:  # waiting for the next request's headers
            self._arm_header_timer()
        elif self.conn.their_state is not h11.DONE:  # a body the app did not read
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def over_limit(self) -> bool:
        """uvicorn's limit_concurrency test, made once this request's task exists (so it
        counts itself among the tasks): open connections or running requests at the
        limit."""
        limit = self.max_connections
        return limit is not None and (len(self.connections) >= limit
                                      or len(self.tasks) - 1 >= limit)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] not in EXEMPT_PATHS
                and self.over_limit()):
            self.logger.warning("Exceeded concurrency limit.")
            await send_refusal(send, overloaded(self.max_connections or 0), close=True)
            return
        await self._routes(scope, receive, send)


def overloaded(limit: int) -> Refusal:
    """The 503 beyond the connection limit (the body is never read)."""
    message = (f"this API process is at its limit of {limit} open connections and "
               f"requests (ZEROUNLEARN_MAX_CONNECTIONS); retry in {OVERLOAD_RETRY_AFTER_S} s")
    return Refusal(503, OVERLOADED, message,
                   [(b"retry-after", str(OVERLOAD_RETRY_AFTER_S).encode())])


@functools.cache
def header_timeout_s() -> float:
    """ZEROUNLEARN_HEADER_TIMEOUT_S, read once per process. uvicorn builds the protocol
    itself (by import string in spawned processes), so no settings object reaches it."""
    return ConnectionSettings.load().header_timeout_s


HTTP_PROTOCOL = "app.server:NoDelayH11Protocol"
"""uvicorn's `http` setting: an import string, so spawned worker processes load it."""


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's protocol and connection limits from the settings. The header
    deadline is not among them: the protocol reads ZEROUNLEARN_HEADER_TIMEOUT_S itself
    (header_timeout_s)."""
    return {
        "http": HTTP_PROTOCOL,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_connections,
    }
