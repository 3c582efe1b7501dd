"""API keys: only their sha256 is stored, as the object keys/{key_id}.json.

A key is a random token of 256 bits ("zu_..."), so a plain sha256 identifies it without
being reversible; its id is "k-" + the first 16 hex digits of that hash, which makes a
look-up one file read and the comparison constant-time over the full hash. Revocation
sets `revoked_at`; every request reads the file again, so it takes effect at once.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
from typing import Any

from store.backends.base import ObjectBackend
from store.documents import utc_now
from store.errors import Conflict, InvalidDocument, NotFound, StoreError
from store.hashing import sha256_hex
from store.objects import dump, load, read_doc, update_doc

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


class KeyStore:
    """API key documents: {"id", "role", "models", "sha256", "created_at", "created_by",
    "revoked_at", "bootstrap"}."""

    def __init__(self, backend: ObjectBackend) -> None:
        self.backend = backend

    def _key(self, key_id: str) -> str:
        if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
            raise NotFound(f"key {key_id!r} not found", kind="key")
        return f"keys/{key_id}.json"

    def create(
        self,
        role: str,
        models: list[str] | None,
        *,
        created_by: str | None,
        token: str | None = None,
        bootstrap: bool = False,
    ) -> tuple[dict[str, Any], str]:
        """Store a key (a new random one unless `token` is given); returns (doc, token)."""
        if role not in ROLES:
            raise InvalidDocument(f"role must be one of {', '.join(ROLES)}")
        token = token or new_token()
        doc: dict[str, Any] = {
            "id": key_id_for(token),
            "role": role,
            "models": sorted(set(models)) if models is not None else None,
            "sha256": sha256_hex(token),
            "created_at": utc_now(),
            "created_by": created_by,
            "revoked_at": None,
            "bootstrap": bootstrap,
        }
        if not self.backend.put_if_absent(self._key(doc["id"]), dump(doc)):
            raise Conflict(f"key {doc['id']} already exists")
        return doc, token

    def ensure_bootstrap(self, token: str) -> dict[str, Any]:
        """Make `token` the (only) bootstrap admin key; earlier bootstrap keys are revoked."""
        wanted = key_id_for(token)
        for doc in self.list():
            if doc.get("bootstrap") and doc["id"] != wanted and not doc.get("revoked_at"):
                self.revoke(doc["id"])
        with contextlib.suppress(NotFound):
            doc = self.get(wanted)
            if doc.get("revoked_at") is None:
                return doc
            raise Conflict("the configured admin token was revoked; configure a new one")
        doc, _ = self.create("admin", None, created_by=None, token=token, bootstrap=True)
        return doc

    def get(self, key_id: str) -> dict[str, Any]:
        missing = NotFound(f"key {key_id!r} not found", kind="key")
        return read_doc(self.backend, self._key(key_id), missing)

    def authenticate(self, token: str) -> dict[str, Any] | None:
        """The live key document whose secret is `token`; None when unknown or revoked."""
        try:
            doc = self.get(key_id_for(token))
        except (NotFound, ValueError):  # other errors: the store is unavailable
            return None
        if not hmac.compare_digest(str(doc.get("sha256", "")), sha256_hex(token)):
            return None
        return None if doc.get("revoked_at") else doc

    def list(self) -> list[dict[str, Any]]:
        docs = []
        for name in self.backend.children("keys/"):
            if not (name.endswith(".json") and KEY_ID_RE.match(name[: -len(".json")])):
                continue
            blob = self.backend.read(f"keys/{name}")
            if blob is not None:
                with contextlib.suppress(StoreError):
                    docs.append(load(blob.data, name))
        return sorted(docs, key=lambda d: (d.get("created_at") or "", d["id"]))

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Mark a key revoked (idempotent); returns its document."""
        return self.revoke_once(key_id)[0]

    def revoke_once(self, key_id: str) -> tuple[dict[str, Any], bool]:
        """Mark a key revoked; (its document, whether this call revoked it). A key that
        was already revoked is left as it was (False), so callers audit a revocation once."""
        key = self._key(key_id)
        self.get(key_id)  # NotFound before any write

        def revoke(doc: dict[str, Any]) -> dict[str, Any] | None:
            return None if doc.get("revoked_at") else {**doc, "revoked_at": utc_now()}

        missing = NotFound(f"key {key_id!r} not found", kind="key")
        changed = update_doc(self.backend, key, revoke, missing)
        return (changed, True) if changed is not None else (self.get(key_id), False)

    def live_admins(self) -> tuple[str, ...]:
        """Ids of the admin keys that are not revoked."""
        docs = self.list()
        return tuple(d["id"] for d in docs if d.get("role") == "admin" and not d.get("revoked_at"))
