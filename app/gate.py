"""The door in front of the routes (plain ASGI middleware): rate limits, and the API key
checked before a single byte of the body is read.

For every request but the probes and the scrape (EXEMPT_PATHS):
1. the client address is counted (ZEROUNLEARN_RATE_LIMIT_PER_ADDRESS): 429 beyond;
2. on /v1 with authentication on, a bearer key is looked up; a request that carries a
   body (Content-Length above 0, or chunked) without a valid key gets 401 at once, and
   the connection is closed, so nobody can make the API buffer a body without a key;
3. a valid key is counted (ZEROUNLEARN_RATE_LIMIT_PER_KEY): 429 beyond.
Requests without a body and without a valid key go on: the routes answer 401 (or serve
the one open /v1 call). A key found here is left in the request state for app.auth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import CHECKED_KEY, bearer_token, lookup_key
from app.errors import error_body
from app.ratelimit import RateLimiter
from store import ArtifactStore, StoreError

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Never limited: orchestrators and Prometheus must always reach them."""


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    try:
        return int(headers.get(b"content-length", b"0")) > 0
    except ValueError:
        return True


class RequestGate:
    def __init__(
        self, app: ASGIApp, store: ArtifactStore, limiter: RateLimiter | None, auth: bool
    ) -> None:
        self.app = app
        self.store = store
        self.limiter = limiter if limiter is not None and limiter.enabled else None
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.limiter is None and not (self.auth and scope["path"].startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        refusal = await anyio.to_thread.run_sync(self._check, scope)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await send_refusal(send, refusal, close=_has_body(dict(scope.get("headers") or [])))

    def _check(self, scope: Scope) -> Refusal | None:
        """Counts and lookups (Redis, the key store): run in a worker thread."""
        client = scope.get("client")
        if self.limiter is not None:
            verdict = self.limiter.hit_address(client[0] if client else None)
            if verdict is not None:
                return _limited("this client address", verdict.limit, verdict.retry_after_s)
        if not (self.auth and scope["path"].startswith("/v1/")):
            return None
        headers = dict(scope.get("headers") or [])
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        doc = None
        if token is not None:
            try:
                doc = lookup_key(self.store, token)
            except (StoreError, OSError):
                return None  # the route reports the store's state
        if doc is None:
            if _has_body(headers):
                message = ("send an API key: 'Authorization: Bearer <key>'" if token is None
                           else "the API key is not valid (unknown or revoked)")
                return Refusal(401, "unauthorized", message, [(b"www-authenticate", b"Bearer")])
            return None
        scope.setdefault("state", {})[CHECKED_KEY] = (token, doc)
        if self.limiter is not None:
            verdict = self.limiter.hit_key(doc["id"])
            if verdict is not None:
                return _limited(f"API key {doc['id']}", verdict.limit, verdict.retry_after_s)
        return None


def _limited(who: str, limit: str, retry_after_s: int) -> Refusal:
    message = f"too many requests from {who} (limit: {limit}); retry in {retry_after_s} s"
    return Refusal(429, "rate_limited", message, [(b"retry-after", str(retry_after_s).encode())])


async def send_refusal(send: Send, refusal: Refusal, *, close: bool) -> None:
    """The refusal in the API's error shape; with `close` the connection is closed after
    it (the body the client may still be sending is never read). Also the connection
    limit's 503 (app.server)."""
    body = json.dumps(error_body(refusal.code, refusal.message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *refusal.headers,
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
