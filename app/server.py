"""uvicorn's HTTP protocol with TCP_NODELAY set on every accepted connection, and a
deadline for request headers (NoDelayH11Protocol's docstring).

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
import os
import socket
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from app.settings import Settings

HEADER_TIMEOUT_ENV = "ZEROUNLEARN_HEADER_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0


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
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV) or
                                    DEFAULT_HEADER_TIMEOUT_S)
        self._header_timer: asyncio.TimerHandle | None = None

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


HTTP_PROTOCOL = "app.server:NoDelayH11Protocol"
"""uvicorn's `http` setting: an import string, so spawned worker processes load it."""


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's protocol and connection limits from the settings. The header
    deadline is not among them: the protocol reads ZEROUNLEARN_HEADER_TIMEOUT_S itself."""
    return {
        "http": HTTP_PROTOCOL,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_connections,
    }
