"""Job-end callbacks: allow-listed URLs, signed bodies, retries with backoff.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com), so a receiver can
use any of its verifier libraries. The body is JSON; each request carries
    webhook-id: msg_<job id>           (the same on every retry of a delivery)
    webhook-timestamp: <unix seconds>  (of this attempt)
    webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>
The key is given to receivers as `whsec_<base64 of the key bytes>`. Its bytes: the
base64 after `whsec_` when ZEROUNLEARN_CALLBACK_SECRET starts with `whsec_`, else the UTF-8
bytes of that setting, else the 32 bytes of the generated secrets/callback-key file of
the store (hex text there). A receiver compares in constant time, refuses timestamps
more than a few minutes away (replays) and ignores a webhook-id it has seen. Deliveries
are retried with exponential backoff until a 2xx answer or the maximum age; redirects
are never followed; every attempt is in the audit trail (host and outcome, not the URL).
Attempts run off the reconciler (app.callback_delivery), each within one total deadline
(ZEROUNLEARN_CALLBACK_TIMEOUT_S), to the address the DNS check saw (app.callback_http).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from app import callback_http
from app.callback_http import is_loopback_host
from app.errors import InvalidInput
from app.receipts import build_receipt
from app.settings import Settings
from app.signing import ReceiptKeys
from store import ArtifactStore
from store.enums import JobKind, JobStatus

logger = logging.getLogger(__name__)

CALLBACK_KEY = "callback-key"
ID_HEADER = "webhook-id"
SIGNATURE_HEADER = "webhook-signature"
TIMESTAMP_HEADER = "webhook-timestamp"
SECRET_PREFIX = "whsec_"
DEFAULT_PORTS = {"http": 80, "https": 443}


def check_callback_url(url: str, settings: Settings) -> str:
    """The URL if its host is allowed; InvalidInput naming callback_url otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("callback_url: not a valid URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("callback_url: must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("callback_url: must not carry credentials")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise InvalidInput("callback_url: must use https (http only for loopback hosts)")
    names = allowed_names(host, port or DEFAULT_PORTS[parts.scheme])
    if not names & settings.allowed_callback_hosts:
        raise InvalidInput("callback_url: the host is not on ZEROUNLEARN_CALLBACK_ALLOWED_HOSTS")
    return url


def allowed_names(host: str, port: int) -> set[str]:
    """The allow-list entries that admit `host` (as urlsplit gives it: lower case, an
    IPv6 literal without brackets) on `port`: "host" and "host:port"; for IPv6 also the
    bracketed forms operators write, "[::1]" and "[::1]:9101"."""
    names = {host, f"{host}:{port}"}
    if ":" in host:  # an IPv6 literal
        names |= {f"[{host}]", f"[{host}]:{port}"}
    return names


def callback_secret(settings: Settings, store: ArtifactStore) -> bytes:
    """The HMAC key bytes (module docstring: which ones)."""
    if settings.callback_secret is not None:
        value = settings.callback_secret.get_secret_value()
        if value.startswith(SECRET_PREFIX):  # base64 checked by Settings
            return base64.b64decode(value[len(SECRET_PREFIX):])
        return value.encode()
    return store.secret(CALLBACK_KEY)


def whsec(secret: bytes) -> str:
    """The key as receivers' Standard Webhooks libraries take it."""
    return SECRET_PREFIX + base64.b64encode(secret).decode("ascii")


def message_id(job_id: str) -> str:
    """webhook-id of a job's delivery: the same on every retry."""
    return f"msg_{job_id}"


def signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """webhook-signature: v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">."""
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def payload(store: ArtifactStore, settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """What a callback says: the job's end, its version and (forget) its receipt."""
    receipt = None
    if job.get("kind") == JobKind.FORGET and job.get("status") == JobStatus.SUCCEEDED:
        receipt = build_receipt(store, ReceiptKeys(settings, store), job)
    return {
        "event": "job.finished",
        "job_id": job["id"],
        "kind": job.get("kind"),
        "model_id": job.get("model_id"),
        "status": job.get("status"),
        "version": (job.get("result") or {}).get("version"),
        "error": job.get("error"),
        "finished_at": job.get("finished_at"),
        "receipt": receipt,
    }


def deliver(url: str, secret: bytes, body: dict[str, Any], attempt: int,
            deadline_s: float, *, resolver: callback_http.Resolver = callback_http.resolve,
            tls: ssl.SSLContext | None = None) -> str | None:
    """POST once within deadline_s in all, resolution included (app.callback_http), to
    the address `resolver` checked; None on a 2xx answer, else a short reason (status or
    error)."""
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    timestamp, msg_id = int(time.time()), message_id(body["job_id"])
    headers = {
        "Content-Type": "application/json",
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, msg_id, timestamp, raw),
        "ZeroUnlearn-Attempt": str(attempt),
    }
    try:
        status = callback_http.resolve_and_post(url, headers, raw, deadline_s,
                                                resolver=resolver, tls=tls)
    except callback_http.DeliveryFailed as exc:
        return exc.reason
    if 200 <= status < 300:
        return None
    return f"HTTP {status}"


def next_delay(settings: Settings, attempts: int) -> float:
    """Exponential backoff after `attempts` failed attempts, capped."""
    return float(min(settings.callback_backoff_s * 2 ** (attempts - 1),
                     settings.callback_backoff_max_s))
