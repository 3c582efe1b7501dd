"""Idempotency records: a unique key hash (racing inserts: one job) and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from store.sql import Database, SqlMetadata
from store.sql.repositories import IDEMPOTENCY_TTL, IdempotencyRepository
from tests.sql.race import race

KEY = "1" * 64
BODY = "b" * 64


def test_default_expiry_is_a_day() -> None:
    assert IDEMPOTENCY_TTL == timedelta(hours=24)


def test_racing_inserts_make_one_job(db_url: str, meta: SqlMetadata) -> None:
    racers = [IdempotencyRepository(Database(db_url)) for _ in range(6)]
    try:
        results = race(len(racers), lambda i: racers[i].insert_or_get(
            KEY, f"j-{i:016x}", BODY))
    finally:
        for repo in racers:
            repo.db.dispose()
    assert not [r for r in results if isinstance(r, Exception)], results
    created = [record for record, made in results if made]
    assert len(created) == 1
    assert {record["job_id"] for record, _ in results} == {created[0]["job_id"]}
    assert meta.idempotency.get(KEY)["job_id"] == created[0]["job_id"]


def test_expired_record_is_replaced(meta: SqlMetadata) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    first, made = meta.idempotency.insert_or_get(KEY, "j-0000000000000001", BODY, now=now)
    assert made
    later = now + IDEMPOTENCY_TTL - timedelta(seconds=1)
    same, made = meta.idempotency.insert_or_get(KEY, "j-0000000000000002", BODY, now=later)
    assert not made and same["job_id"] == "j-0000000000000001"
    assert meta.idempotency.get(KEY, now=later) is not None
    expired = now + IDEMPOTENCY_TTL
    assert meta.idempotency.get(KEY, now=expired) is None
    new, made = meta.idempotency.insert_or_get(KEY, "j-0000000000000003", BODY, now=expired)
    assert made and new["job_id"] == "j-0000000000000003"
    assert meta.idempotency.get(KEY, now=expired)["job_id"] == "j-0000000000000003"


def test_release_and_purge(meta: SqlMetadata) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    meta.idempotency.insert_or_get(KEY, "j-0000000000000001", BODY, now=now)
    meta.idempotency.release(KEY, "j-0000000000000009")  # not its job: kept
    assert meta.idempotency.get(KEY, now=now) is not None
    meta.idempotency.release(KEY, "j-0000000000000001")
    assert meta.idempotency.get(KEY, now=now) is None
    meta.idempotency.insert_or_get("2" * 64, "j-0000000000000002", BODY, now=now)
    assert meta.idempotency.purge_expired(now=now + IDEMPOTENCY_TTL) == 1
