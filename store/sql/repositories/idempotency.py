"""Idempotency records in SQL: a unique key hash per (caller's key, Idempotency-Key),
the job it created and the salted hash of the request body. Insert-or-get replaces the
lease and the striped locks of the document store: of two racing inserts the unique
constraint lets exactly one win, and the other gets the winner's record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from store.documents import utc_now
from store.sql.engine import Database
from store.sql.repositories.common import insert_if_absent
from store.sql.schema import Idempotency

IDEMPOTENCY_TTL = timedelta(hours=24)
"""How long an Idempotency-Key is remembered. Within it, a retry with the same key and
body gets the job the first request created (a different body: 409); after it the key
is forgotten and a request with it creates a new job. 24 hours covers a client's retries
over a day of outage, as in Stripe's and the IETF Idempotency-Key draft's practice."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as the column stores it


def _doc(row: Idempotency) -> dict[str, Any]:
    return {"key_hash": row.key_hash, "job_id": row.job_id, "body_hash": row.body_hash,
            "created_at": row.created_at, "expires_at": row.expires_at.isoformat() + "Z"}


class IdempotencyRepository:
    def __init__(self, db: Database, ttl: timedelta = IDEMPOTENCY_TTL) -> None:
        self.db = db
        self.ttl = ttl

    def insert_or_get(
        self, key_hash: str, job_id: str, body_hash: str, *, now: datetime | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Record that `key_hash` creates job `job_id`, unless a live record exists:
        (the record that holds, whether it is the one just made). An expired record is
        replaced. The caller creates the job only when the second value is True (and
        calls `release` if that fails)."""
        now = now or _now()
        expires_at = now + self.ttl
        values: dict[str, Any] = {"key_hash": key_hash, "job_id": job_id,
                                  "body_hash": body_hash, "created_at": utc_now(),
                                  "expires_at": expires_at}
        with self.db.write() as s:
            if insert_if_absent(s, Idempotency, values):
                return {**values, "expires_at": expires_at.isoformat() + "Z"}, True
            # Someone holds the key: take it over only if expired (a conditional update,
            # so of two racing take-overs one wins).
            taken = s.execute(update(Idempotency).where(
                Idempotency.key_hash == key_hash, Idempotency.expires_at <= now)
                .values(**values))
            row = s.scalar(select(Idempotency).where(Idempotency.key_hash == key_hash)
                           .execution_options(populate_existing=True))
            assert row is not None  # records are removed only once expired
            return _doc(row), bool(taken.rowcount)  # type: ignore[attr-defined]

    def get(self, key_hash: str, *, now: datetime | None = None) -> dict[str, Any] | None:
        """The live record of `key_hash`; None when there is none or it expired."""
        with self.db.read() as s:
            row = s.get(Idempotency, key_hash)
            if row is None or row.expires_at <= (now or _now()):
                return None
            return _doc(row)

    def release(self, key_hash: str, job_id: str) -> None:
        """Drop the record `insert_or_get` made for job_id (its job was never created)."""
        with self.db.write() as s:
            s.execute(delete(Idempotency).where(Idempotency.key_hash == key_hash,
                                                Idempotency.job_id == job_id))

    def purge_expired(self, *, now: datetime | None = None) -> int:
        """Delete expired records (indexed); returns how many."""
        with self.db.write() as s:
            result = s.execute(delete(Idempotency).where(
                Idempotency.expires_at <= (now or _now())))
            return int(result.rowcount)  # type: ignore[attr-defined]
