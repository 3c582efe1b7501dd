"""Models and versions in SQL: documents, and version numbers claimed concurrently."""

from __future__ import annotations

import pytest

from store import Conflict, InvalidDocument, NotFound
from store.sql import Database, SqlMetadata
from store.sql.repositories import VersionRepository
from tests.sql.race import race

SHA = "ab" * 32


def test_models(meta: SqlMetadata) -> None:
    first = meta.models.create({"name": "a", "source": "builtin:x"})
    second = meta.models.create({"name": "b", "source": "/m",
                                 "created_at": "2999-01-01T00:00:00.000Z"})
    assert first["status"] == "preparing" and first["active_version"] == "v0"
    assert meta.models.get(first["id"]) == first
    assert [m["id"] for m in meta.models.list()] == [first["id"], second["id"]]
    ready = meta.models.update(first["id"], status="ready", num_layers=2)
    assert meta.models.get(first["id"]) == ready and ready["num_layers"] == 2
    with pytest.raises(Conflict):
        meta.models.create({"id": first["id"], "name": "c", "source": "s"})
    with pytest.raises(InvalidDocument):
        meta.models.update(first["id"], status="gone")
    with pytest.raises(NotFound):
        meta.models.update("m-ffffffffffff", status="ready")
    with pytest.raises(NotFound):
        meta.models.get("m-ffffffffffff")


def test_versions(meta: SqlMetadata) -> None:
    model = meta.models.create({"name": "a", "source": "s"})
    v0 = meta.versions.publish(model["id"], {"method": None})
    v1 = meta.versions.publish(model["id"], {
        "parent": "v0", "method": "zerounlearn", "job_id": "j-0000000000000001",
        "records": [{"sha256": SHA}], "patch": {"bytes": 10, "sha256": SHA, "layers": [1]}})
    assert (v0["id"], v1["id"]) == ("v0", "v1")
    assert meta.versions.get(model["id"], "v1") == v1
    assert meta.versions.list(model["id"]) == [v0, v1]
    assert meta.versions.numbers(model["id"]) == [0, 1]
    with pytest.raises(InvalidDocument):  # request text never goes into a manifest
        meta.versions.publish(model["id"], {"records": [{"sha256": SHA, "prompt": "x"}]})
    with pytest.raises(NotFound):
        meta.versions.publish(model["id"], {"parent": "v7"})
    with pytest.raises(NotFound):
        meta.versions.get(model["id"], "v2")
    with pytest.raises(NotFound):
        meta.versions.get(model["id"], "v" + "9" * 300)
    with pytest.raises(NotFound):
        meta.versions.publish("m-ffffffffffff", {})


def test_concurrent_publishes_get_distinct_dense_numbers(db_url: str, meta: SqlMetadata) -> None:
    model = meta.models.create({"name": "a", "source": "s"})
    meta.versions.publish(model["id"], {})
    racers = [VersionRepository(Database(db_url)) for _ in range(6)]
    try:
        results = []
        for _ in range(3):
            results += race(len(racers), lambda i: racers[i].publish(
                model["id"], {"parent": "v0", "job_id": f"j-{i:016x}"}))
    finally:
        for repo in racers:
            repo.db.dispose()
    assert not [r for r in results if isinstance(r, Exception)], results
    numbers = sorted(int(r["id"][1:]) for r in results)
    assert numbers == list(range(1, 19))
    assert meta.versions.numbers(model["id"]) == list(range(19))
