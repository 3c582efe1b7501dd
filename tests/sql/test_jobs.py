"""Jobs in SQL: documents, filters, cursor paging, atomic transitions."""

from __future__ import annotations

import pytest

from store import Conflict, InvalidDocument, NotFound
from store.sql import Database, SqlMetadata
from store.sql.repositories import JobRepository
from tests.sql.race import race


def test_create_get_update(meta: SqlMetadata) -> None:
    job = meta.jobs.create({"kind": "forget", "model_id": "m-000000000001"})
    assert job["status"] == "queued" and job["progress"] == {"phase": None, "fraction": 0.0}
    assert meta.jobs.get(job["id"]) == job
    with pytest.raises(Conflict):
        meta.jobs.create({"id": job["id"], "kind": "verify", "model_id": "m-000000000001"})
    updated = meta.jobs.update(job["id"], progress={"phase": "keys", "fraction": 0.5})
    assert meta.jobs.get(job["id"]) == updated and updated["progress"]["phase"] == "keys"
    with pytest.raises(NotFound):
        meta.jobs.get("j-0000000000000000")
    with pytest.raises(InvalidDocument):
        meta.jobs.create({"kind": "nonsense", "model_id": "m-000000000001"})
    with pytest.raises(InvalidDocument):
        meta.jobs.update(job["id"], status="weird")


def test_transition_sets_times_and_refuses_wrong_status(meta: SqlMetadata) -> None:
    job = meta.jobs.create({"kind": "forget", "model_id": "m-000000000001"})
    running = meta.jobs.transition(job["id"], ["queued"], "running")
    assert running is not None and running["started_at"] and running["finished_at"] is None
    assert meta.jobs.transition(job["id"], ["queued"], "cancelled") is None
    done = meta.jobs.transition(job["id"], ["running"], "succeeded", result={"ok": 1})
    assert done is not None and done["finished_at"] and done["result"] == {"ok": 1}
    assert meta.jobs.get(job["id"]) == done
    assert meta.jobs.list(status="succeeded") == [done]


def test_filters_and_counts(meta: SqlMetadata) -> None:
    a, b = "m-00000000000a", "m-00000000000b"
    made = [meta.jobs.create({"kind": kind, "model_id": model,
                              "created_at": f"2025-01-01T00:00:0{i}.000Z"})
            for i, (model, kind) in enumerate((m, k) for m in (a, b)
                                              for k in ("forget", "verify", "export"))]
    meta.jobs.transition(made[0]["id"], ["queued"], "running")
    assert [j["id"] for j in meta.jobs.list(a)] == [j["id"] for j in made[:3]]
    assert [j["kind"] for j in meta.jobs.list(kind="verify")] == ["verify", "verify"]
    assert [j["id"] for j in meta.jobs.list(status="running")] == [made[0]["id"]]
    assert meta.jobs.list(b, kind="export", status="queued") == [made[5]]
    assert meta.jobs.counts() == {("forget", "running"): 1, ("forget", "queued"): 1,
                                  ("verify", "queued"): 2, ("export", "queued"): 2}


def test_cursor_paging_returns_every_job_exactly_once(meta: SqlMetadata) -> None:
    # Same created_at for several jobs: the id must break the tie.
    made = [meta.jobs.create({"kind": "forget", "model_id": "m-000000000001",
                              "created_at": f"2025-01-01T00:00:0{i % 3}.000Z"})
            for i in range(23)]
    seen, cursor = [], None
    while True:
        page = meta.jobs.list(limit=5, after=cursor)
        if not page:
            break
        assert len(page) <= 5
        seen += [j["id"] for j in page]
        cursor = JobRepository.cursor_of(page[-1])
    assert sorted(seen) == sorted(j["id"] for j in made) and len(seen) == len(set(seen))
    assert seen == [j["id"] for j in meta.jobs.list()]  # the pages follow the order


def test_racing_transitions_exactly_one_wins(db_url: str, meta: SqlMetadata) -> None:
    """Workers (each with its own engine, as separate processes would) race to start the
    same queued jobs; for each job exactly one transition returns a document."""
    jobs = [meta.jobs.create({"kind": "forget", "model_id": "m-000000000001"})
            for _ in range(5)]
    racers = [JobRepository(Database(db_url)) for _ in range(6)]
    try:
        for job in jobs:
            def start(i: int, job_id: str = job["id"]) -> dict | None:
                to = "running" if i % 2 else "cancelled"
                return racers[i].transition(job_id, ["queued"], to, worker=f"w{i}")

            results = race(len(racers), start)
            assert not [r for r in results if isinstance(r, Exception)], results
            winners = [r for r in results if r is not None]
            assert len(winners) == 1
            assert meta.jobs.get(job["id"]) == winners[0]
    finally:
        for repo in racers:
            repo.db.dispose()
