"""The version lifecycle document in SQL: seals added once, deletion final, overrides."""

from __future__ import annotations

import pytest

from store import NotFound
from store.lifecycle import public_state
from store.sql import SqlMetadata


def test_lifecycle(meta: SqlMetadata) -> None:
    model = meta.models.create({"name": "a", "source": "s"})["id"]
    assert meta.lifecycle.read(model) == {"versions": {}, "overrides": []}
    seal = {"v0": [{"version": "v1", "jobs": ["j-0000000000000001"]}]}
    assert meta.lifecycle.add_seals(model, seal) == {"v0": ["v1"]}
    assert meta.lifecycle.add_seals(model, seal) == {}
    state = public_state(meta.lifecycle.read(model), "v0")
    assert state["sealed"] and state["sealed_by"] == ["j-0000000000000001"]
    first = meta.lifecycle.mark_deleted(model, "v0", "k-1")
    assert meta.lifecycle.mark_deleted(model, "v0", "k-2")["deleted"] == first["deleted"]
    with pytest.raises(NotFound):
        meta.lifecycle.set_compacted(model, "v0", {"patch": None})
    meta.lifecycle.set_compacted(model, "v2", {"patch": {"sha256": "a" * 64}, "job_id": None})
    assert meta.lifecycle.read(model)["versions"]["v2"]["compacted"]["patch"]
    meta.lifecycle.add_override(model, {"version": "v0", "action": "generate"})
    assert meta.lifecycle.overrides(model) == [{"version": "v0", "action": "generate"}]
    with pytest.raises(NotFound):
        meta.lifecycle.add_override("m-ffffffffffff", {})
