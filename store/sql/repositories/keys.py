"""API keys in SQL (store.keys on documents): only the sha256 of a secret is stored.

Revocation is one transaction that also locks every live admin key, so the last live
admin key cannot be revoked, not even by two revocations of the last two racing.
"""

from __future__ import annotations

import hmac
from typing import Any

from sqlalchemy import select, update

from store.documents import utc_now
from store.errors import Conflict, InvalidDocument, NotFound
from store.hashing import sha256_hex
from store.keys import ROLES, key_id_for, new_token
from store.sql.engine import Database
from store.sql.repositories.common import insert_if_absent
from store.sql.schema import ApiKey

FIELDS = ("id", "role", "models", "sha256", "created_at", "created_by", "revoked_at",
          "bootstrap")
"""A key document's fields: every one a column."""


class LastAdminKey(Conflict):
    """Revoking this key would leave no live admin key."""


def _missing(key_id: Any) -> NotFound:
    return NotFound(f"key {key_id!r} not found", kind="key")


def _doc(row: ApiKey) -> dict[str, Any]:
    doc = {name: getattr(row, name) for name in FIELDS}
    doc["models"] = list(row.models) if row.models is not None else None
    return doc


def key_row(doc: dict[str, Any]) -> dict[str, Any]:
    """The row of a key document."""
    return {**{name: doc.get(name) for name in FIELDS}, "bootstrap": bool(doc.get("bootstrap"))}


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

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
            "id": key_id_for(token), "role": role,
            "models": sorted(set(models)) if models is not None else None,
            "sha256": sha256_hex(token), "created_at": utc_now(), "created_by": created_by,
            "revoked_at": None, "bootstrap": bootstrap,
        }
        with self.db.write() as s:
            if not insert_if_absent(s, ApiKey, key_row(doc)):
                raise Conflict(f"key {doc['id']} already exists")
        return doc, token

    def get(self, key_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(ApiKey, str(key_id))
            if row is None:
                raise _missing(key_id)
            return _doc(row)

    def authenticate(self, token: str) -> dict[str, Any] | None:
        """The live key whose secret is `token` (found by its hash); None when unknown
        or revoked."""
        digest = sha256_hex(token)
        with self.db.read() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.sha256 == digest))
            if row is None or not hmac.compare_digest(row.sha256, digest):
                return None
            return None if row.revoked_at else _doc(row)

    def list(self) -> list[dict[str, Any]]:
        """Every key, oldest first."""
        with self.db.read() as s:
            return [_doc(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.created_at,
                                                                       ApiKey.id))]

    def live_admins(self) -> tuple[str, ...]:
        """Ids of the admin keys that are not revoked."""
        with self.db.read() as s:
            return tuple(s.scalars(select(ApiKey.id).where(
                ApiKey.role == "admin", ApiKey.revoked_at.is_(None)).order_by(ApiKey.id)))

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Mark a key revoked (idempotent); returns its document."""
        return self.revoke_once(key_id)[0]

    def revoke_once(self, key_id: str) -> tuple[dict[str, Any], bool]:
        """Mark a key revoked; (its document, whether this call revoked it). LastAdminKey
        (a Conflict) when it is the only live admin key: checked in the same transaction,
        with every live admin key locked."""
        with self.db.write() as s:
            # Lock the live admins first, always in id order (no deadlock between two
            # revocations); a second revocation waits here, then sees the first's result.
            admins = list(s.scalars(select(ApiKey.id).where(
                ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.id).with_for_update()))
            row = s.scalar(select(ApiKey).where(ApiKey.id == str(key_id)).with_for_update())
            if row is None:
                raise _missing(key_id)
            if row.revoked_at is not None:
                return _doc(row), False
            if admins == [row.id]:
                raise LastAdminKey(f"key {key_id} is the last admin key: create another "
                                   "admin key before revoking it")
            now = utc_now()
            s.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=now))
            return {**_doc(row), "revoked_at": now}, True

    def ensure_bootstrap(self, token: str) -> dict[str, Any]:
        """Make `token` the (only) bootstrap admin key; earlier bootstrap keys are revoked
        (the new one is created first, so there is always a live admin)."""
        wanted = key_id_for(token)
        try:
            doc = self.get(wanted)
        except NotFound:
            doc, _ = self.create("admin", None, created_by=None, token=token, bootstrap=True)
        if doc.get("revoked_at") is not None:
            raise Conflict("the configured admin token was revoked; configure a new one")
        for other in self.list():
            if other.get("bootstrap") and other["id"] != wanted and not other.get("revoked_at"):
                self.revoke(other["id"])
        return doc
