"""Canonical JSON and salted hashes: what stays of request text once it is purged.

A plain sha256 of a short fact ("Jane Roe lives at 12 Elm Street") can be found again
by guessing; an HMAC keyed with the installation's secret salt cannot, without the salt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

RECORD_SALT = "record-salt"
"""Name of the secret (store.secretfiles) that keys record hashes."""


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def salted_hash(salt: bytes, value: Any) -> str:
    """HMAC-SHA256(salt, canonical JSON of value), hex."""
    return hmac.new(salt, canonical_json(value), hashlib.sha256).hexdigest()


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()
