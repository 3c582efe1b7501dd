"""API keys: only their sha256 is stored (the api_keys table, store.sql.repositories.keys).

A key is a random token of 256 bits ("zu_..."), so a plain sha256 identifies it without
being reversible; its id is "k-" + the first 16 hex digits of that hash, which makes a
look-up one indexed read and the comparison constant-time over the full hash. Revocation
sets `revoked_at`; every request reads the row again, so it takes effect at once.
"""

from __future__ import annotations

import re
import secrets

from store.hashing import sha256_hex

ROLES = ("viewer", "operator", "admin")
"""Roles, least powerful first: each can do what the ones before it can."""
KEY_PREFIX = "zu_"
KEY_ID_RE = re.compile(r"^k-[0-9a-f]{16}$")


def key_id_for(token: str) -> str:
    """The id of the key whose secret is `token`."""
    return f"k-{sha256_hex(token)[:16]}"


def new_token() -> str:
    """A fresh API key secret (shown to its owner once, never stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)
