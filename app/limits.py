"""Request body size and time limits, as plain ASGI middleware (before any parsing).

A declared Content-Length over the limit is refused at once; a body sent without one
(chunked) is counted while it is read and refused when it passes the limit (413). A
body that is not complete `timeout_s` seconds after the request began is refused with
408 (slow clients hold a connection and a buffer each). Either answer is in the API's
error shape and closes the connection: the rest of that body is never read.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


class BodyTooLarge(HTTPException):
    """Raised inside the app when a streamed body passes the limit: an HTTPException, so
    FastAPI's body parsing lets it through to the error handlers (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyTooSlow(HTTPException):
    """Raised inside the app when the body is not in by the deadline (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body was not received within {timeout_s:g} s")


def _body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(send, BodyTooLarge(self.max_bytes))
                return
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        seen = 0
        started = False
        complete = False  # the whole body is in: later receives wait for a disconnect
        refused = False  # the body was cut off: the connection must not be reused

        async def counted() -> Message:
            nonlocal seen, refused, complete
            if deadline is None or complete:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                except TimeoutError:
                    refused = True
                    raise BodyTooSlow(self.timeout_s or 0) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise BodyTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refused:
                    message = {**message, "headers": [*(message.get("headers") or []), CLOSE]}
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except (BodyTooLarge, BodyTooSlow) as exc:
            if not started:
                await self._refuse(send, exc)

    async def _refuse(self, send: Send, exc: HTTPException) -> None:
        code = "payload_too_large" if exc.status_code == 413 else "request_timeout"
        body = _body(code, str(exc.detail))
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            CLOSE,
        ]
        await send({"type": "http.response.start", "status": exc.status_code,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})
