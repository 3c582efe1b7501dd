"""The audit trail in SQL: dense seq under concurrent appends, a chain that verifies
like store.audit's, and a rewritten entry detected."""

from __future__ import annotations

from sqlalchemy import update

from store.audit import GENESIS, entry_hash
from store.sql import Database, SqlMetadata
from store.sql.repositories import AuditRepository
from store.sql.schema import AuditEntry
from tests.sql.race import race


def test_append_page_verify(meta: SqlMetadata) -> None:
    assert meta.audit.verify() == {"valid": True, "entries": 0, "head": GENESIS,
                                   "broken_at": None, "reason": None}
    first = meta.audit.append(None, "model.created", ids={"model": "m-1", "job": None},
                              record_hashes=["a" * 64], detail={"n": 1})
    second = meta.audit.append("k-1", "key.revoked")
    assert first["seq"] == 1 and first["prev"] == GENESIS and first["actor"] == "system"
    assert first["ids"] == {"model": "m-1"} and first["hash"] == entry_hash(first)
    assert second["seq"] == 2 and second["prev"] == first["hash"]
    assert meta.audit.page(0, 1) == ([first], 1)
    assert meta.audit.page(1, 5) == ([second], None)
    assert meta.audit.head() == second and meta.audit.entry(1) == first
    assert meta.audit.verify()["entries"] == 2


def test_concurrent_appends_are_dense_and_chained(db_url: str, meta: SqlMetadata) -> None:
    racers = [AuditRepository(Database(db_url)) for _ in range(6)]
    try:
        results = race(len(racers), lambda i: [racers[i].append(f"w{i}", "job.started")
                                               for _ in range(5)])
    finally:
        for repo in racers:
            repo.db.dispose()
    assert not [r for r in results if isinstance(r, Exception)], results
    seqs = sorted(entry["seq"] for batch in results for entry in batch)
    assert seqs == list(range(1, 31))
    verdict = meta.audit.verify()
    assert verdict["valid"] and verdict["entries"] == 30
    assert meta.audit.append(None, "after")["seq"] == 31


def test_rewritten_entry_is_detected(meta: SqlMetadata) -> None:
    for i in range(4):
        meta.audit.append(None, "request.accepted", detail={"i": i})
    entry = meta.audit.entry(2)
    forged = {**entry, "actor": "k-someone-else"}
    with meta.db.write() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(entry=forged))
    verdict = meta.audit.verify()
    assert not verdict["valid"] and verdict["broken_at"] == 2
    assert verdict["reason"] == "hash does not match the entry's content"
    # Re-hashing the forged entry does not help: the next entry's prev no longer matches.
    forged["hash"] = entry_hash(forged)
    with meta.db.write() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2)
                  .values(entry=forged, hash=forged["hash"]))
    verdict = meta.audit.verify()
    assert not verdict["valid"] and verdict["broken_at"] == 3
