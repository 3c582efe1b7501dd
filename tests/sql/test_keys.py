"""API keys in SQL: hashes only, authentication, revocation once, the last admin."""

from __future__ import annotations

import pytest

from store import NotFound
from store.sql import Database, SqlMetadata
from store.sql.repositories import KeyRepository, LastAdminKey
from tests.sql.race import race


def test_create_authenticate_revoke_once(meta: SqlMetadata) -> None:
    admin, admin_token = meta.keys.create("admin", None, created_by=None)
    viewer, token = meta.keys.create("viewer", ["m-000000000002", "m-000000000001"],
                                     created_by=admin["id"])
    assert viewer["models"] == ["m-000000000001", "m-000000000002"]
    assert token not in str(meta.keys.list())  # only the hash is stored
    assert meta.keys.authenticate(token) == viewer
    assert meta.keys.authenticate(token + "x") is None
    doc, revoked = meta.keys.revoke_once(viewer["id"])
    assert revoked and doc["revoked_at"]
    again, revoked_again = meta.keys.revoke_once(viewer["id"])
    assert not revoked_again and again == doc == meta.keys.get(viewer["id"])
    assert meta.keys.authenticate(token) is None
    assert meta.keys.authenticate(admin_token) == admin
    with pytest.raises(NotFound):
        meta.keys.revoke_once("k-0000000000000000")


def test_last_admin_cannot_be_revoked(meta: SqlMetadata) -> None:
    first, _ = meta.keys.create("admin", None, created_by=None)
    with pytest.raises(LastAdminKey):
        meta.keys.revoke_once(first["id"])
    second, _ = meta.keys.create("admin", None, created_by=None)
    assert meta.keys.revoke_once(first["id"])[1]
    with pytest.raises(LastAdminKey):
        meta.keys.revoke(second["id"])
    assert meta.keys.live_admins() == (second["id"],)


def test_bootstrap_key(meta: SqlMetadata) -> None:
    old = meta.keys.ensure_bootstrap("zu_" + "a" * 43)
    new = meta.keys.ensure_bootstrap("zu_" + "b" * 43)
    assert meta.keys.get(old["id"])["revoked_at"] and meta.keys.live_admins() == (new["id"],)


def test_concurrent_revocations_of_the_last_two_admins(db_url: str, meta: SqlMetadata) -> None:
    racers = [KeyRepository(Database(db_url)) for _ in range(2)]
    try:
        for _ in range(5):
            pair = [meta.keys.create("admin", None, created_by=None)[0] for _ in range(2)]
            for other in set(meta.keys.live_admins()) - {k["id"] for k in pair}:
                meta.keys.revoke(other)  # the pair are the last two live admins
            results = race(2, lambda i, pair=pair: racers[i].revoke_once(pair[i]["id"]))
            wins = [r for r in results if isinstance(r, tuple) and r[1]]
            refused = [r for r in results if isinstance(r, LastAdminKey)]
            assert len(wins) == 1 and len(refused) == 1, results
            assert len(meta.keys.live_admins()) == 1
    finally:
        for repo in racers:
            repo.db.dispose()
