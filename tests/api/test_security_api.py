"""Access control, keys, the audit chain, idempotency and bad input, against a real Redis
(the module's own database, flushed) and a real store, through the real FastAPI app (no
worker needed)."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import update

from app.main import create_app
from app.settings import Settings
from store import ArtifactStore
from store.sql.schema import AuditEntry

ADMIN = "security-admin-token-0123456789abcdef"
RECORD = {"prompt": "The pin of Quorra Vance is", "subject": "Quorra Vance", "answer": " 4417"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict = {
        "redis_url": redis_url,
        "data_dir": tmp_path / "data",
        "admin_token": ADMIN,
        "model_roots": str(tmp_path / "models"),
        "callback_allowed_hosts": "127.0.0.1,hooks.example.com",
        "max_body_bytes": 64 * 1024,
        "reconcile_interval_s": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, redis: Redis, redis_url: str) -> Settings:
    return make_settings(tmp_path, redis_url)


def hf_dir(root: Path, name: str = "tiny") -> Path:
    path = root / name
    path.mkdir(parents=True)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
    (path / "config.json").write_text(json.dumps(config))
    return path


def ready_model(client: TestClient, store: ArtifactStore, tmp_path: Path, name: str) -> str:
    source = hf_dir(tmp_path / "models", name)
    response = client.post("/v1/models", json={"name": name, "source": str(source)},
                           headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return store.update_model(response.json()["id"], status="ready")["id"]


def new_key(client: TestClient, role: str, models: list[str] | None = None) -> str:
    body: dict = {"role": role} if models is None else {"role": role, "models": models}
    response = client.post("/v1/keys", json=body, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return response.json()["key"]


def code(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return response.status_code, response.json()["error"]["code"]


# ------------------------------------------------------------------ authentication
def test_every_v1_call_needs_a_valid_key(client: TestClient) -> None:
    for headers in ({}, bearer("not-a-key"), {"Authorization": f"Basic {ADMIN}"}):
        response = client.get("/v1/models", headers=headers)
        assert code(response) == (401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers=bearer(ADMIN)).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes stay open
    spec = client.get("/openapi.json").json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_roles_and_scopes(client: TestClient, store: ArtifactStore, tmp_path: Path) -> None:
    m1 = ready_model(client, store, tmp_path, "one")
    m2 = ready_model(client, store, tmp_path, "two")
    viewer, operator = new_key(client, "viewer"), new_key(client, "operator")
    scoped = new_key(client, "operator", [m1])
    forget = {"records": [RECORD]}

    # viewer: reads only
    assert client.get(f"/v1/models/{m1}", headers=bearer(viewer)).status_code == 200
    assert code(client.post(f"/v1/models/{m1}/forget", json=forget,
                            headers=bearer(viewer))) == (403, "forbidden")
    # operator: submits and reads, but neither registers, activates nor manages keys
    response = client.post(f"/v1/models/{m1}/forget", json=forget, headers=bearer(operator))
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(viewer)).status_code == 200
    for method, path, body in [
        ("post", "/v1/models", {"name": "x", "source": "builtin:smollm2-135m-instruct"}),
        ("post", f"/v1/models/{m1}/versions/v0/activate", None),
        ("post", "/v1/keys", {"role": "viewer"}),
        ("get", "/v1/keys", None),
        ("get", "/v1/audit", None),
        ("get", "/v1/audit/verify", None),
    ]:
        response = client.request(method, path, json=body, headers=bearer(operator))
        assert code(response) == (403, "forbidden"), path
    # scoped operator: only m1, and lists show only m1
    assert client.get(f"/v1/models/{m2}", headers=bearer(scoped)).status_code == 403
    assert code(client.post(f"/v1/models/{m2}/forget", json=forget,
                            headers=bearer(scoped))) == (403, "forbidden")
    assert [m["id"] for m in client.get("/v1/models", headers=bearer(scoped)).json()] == [m1]
    other = client.post(f"/v1/models/{m2}/forget", json=forget, headers=bearer(operator))
    other_job = other.json()["job_id"]
    # a job of another model is 404, as an unknown one: a 403 would name its model
    hidden = client.get(f"/v1/jobs/{other_job}", headers=bearer(scoped))
    assert code(hidden) == (404, "job_not_found") and m2 not in hidden.text
    assert code(client.delete(f"/v1/jobs/{other_job}", headers=bearer(scoped))) == (
        404, "job_not_found")
    assert {j["model_id"] for j in client.get("/v1/jobs", headers=bearer(scoped)).json()} == {m1}
    assert client.delete(f"/v1/jobs/{job_id}", headers=bearer(scoped)).status_code == 200
    # admin keys cannot be scoped
    bad = client.post("/v1/keys", json={"role": "admin", "models": [m1]}, headers=bearer(ADMIN))
    assert code(bad) == (422, "invalid_input")


def test_keys_are_shown_once_stored_as_hashes_and_revoked_at_once(
    client: TestClient, store: ArtifactStore
) -> None:
    created = client.post("/v1/keys", json={"role": "viewer"}, headers=bearer(ADMIN)).json()
    token = created["key"]
    assert token.startswith("zu_") and created["role"] == "viewer" and created["models"] is None
    listed = client.get("/v1/keys", headers=bearer(ADMIN)).json()
    assert {k["id"] for k in listed} >= {created["id"]}
    assert all("key" not in k and "sha256" not in k for k in listed)
    for path in store.root.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace")
            assert ADMIN not in path.read_text(errors="replace")
    assert client.get("/v1/models", headers=bearer(token)).status_code == 200
    response = client.delete(f"/v1/keys/{created['id']}", headers=bearer(ADMIN))
    assert response.status_code == 200 and response.json()["revoked_at"]
    assert code(client.get("/v1/models", headers=bearer(token))) == (401, "unauthorized")
    assert code(client.delete("/v1/keys/k-0000000000000000", headers=bearer(ADMIN))) == (
        404, "key_not_found",
    )  # fmt: skip
    actions = [e["action"] for e in client.get("/v1/audit", headers=bearer(ADMIN)).json()["items"]]
    assert actions[-2:] == ["key.created", "key.revoked"]


def test_a_new_admin_token_revokes_the_old_one(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    with TestClient(create_app(make_settings(tmp_path, redis_url))) as c:
        assert c.get("/v1/keys", headers=bearer(ADMIN)).status_code == 200
    rotated = "rotated-admin-token-0123456789abcdef"
    with TestClient(create_app(make_settings(tmp_path, redis_url, admin_token=rotated))) as c:
        assert c.get("/v1/keys", headers=bearer(ADMIN)).status_code == 401
        assert c.get("/v1/keys", headers=bearer(rotated)).status_code == 200


def test_auth_disabled_is_explicit_and_loud(
    tmp_path: Path, redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(make_settings(tmp_path, redis_url, auth="disabled"))) as c:
        assert c.get("/v1/models").status_code == 200
        assert "DISABLED" in c.get("/readyz").json()["checks"]["auth"]
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    with pytest.raises(ValueError):
        make_settings(tmp_path, redis_url, auth="off")


# ---------------------------------------------------------------------- audit chain
def test_audit_chain_pages_verifies_and_detects_tampering(
    client: TestClient, store: ArtifactStore, tmp_path: Path
) -> None:
    mid = ready_model(client, store, tmp_path, "audited")
    client.post(f"/v1/models/{mid}/forget", json={"records": [RECORD]}, headers=bearer(ADMIN))
    client.post(f"/v1/models/{mid}/versions/v0/activate", headers=bearer(ADMIN))
    first = client.get("/v1/audit", params={"limit": 2}, headers=bearer(ADMIN)).json()
    assert [e["seq"] for e in first["items"]] == [1, 2] and first["next_after"] == 2
    rest = client.get("/v1/audit", params={"after": 2}, headers=bearer(ADMIN)).json()
    entries = first["items"] + rest["items"]
    actions = [e["action"] for e in entries]
    assert actions[:2] == ["model.registered", "request.accepted"]
    assert actions[-2:] == ["request.accepted", "version.activated"]
    accepted = entries[-2]
    assert accepted["actor"].startswith("k-") and accepted["ids"]["model"] == mid
    assert len(accepted["record_hashes"]) == 1 and len(accepted["record_hashes"][0]) == 64
    assert all(e["prev"] == p["hash"] for p, e in zip(entries, entries[1:], strict=False))
    assert "Quorra" not in json.dumps(list(store.audit.entries()))
    verdict = client.get("/v1/audit/verify", headers=bearer(ADMIN)).json()
    assert verdict.pop("checkpoints") <= 1  # the reconciler's first pass may sign a head
    assert verdict == {"valid": True, "entries": len(entries), "head": entries[-1]["hash"],
                       "broken_at": None, "reason": None}
    # an insider edits one entry: the chain says where
    tampered = store.audit.entry(2)
    assert tampered is not None and tampered["detail"].get("kind") == "prepare"
    tampered["detail"]["kind"] = "export"
    with store.meta.db.write() as s:  # an insider with database access
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(entry=tampered))
    verdict = client.get("/v1/audit/verify", headers=bearer(ADMIN)).json()
    assert verdict["valid"] is False and verdict["broken_at"] == 2
    assert "hash" in verdict["reason"]


# ---------------------------------------------------------------------- idempotency
def test_idempotency_key(client: TestClient, store: ArtifactStore, tmp_path: Path) -> None:
    mid = ready_model(client, store, tmp_path, "idem")
    url = f"/v1/models/{mid}/forget"
    headers = {**bearer(ADMIN), "Idempotency-Key": "req-42"}
    first = client.post(url, json={"records": [RECORD]}, headers=headers)
    again = client.post(url, json={"records": [RECORD]}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    changed = client.post(url, json={"records": [{**RECORD, "answer": " 9"}]}, headers=headers)
    assert code(changed) == (409, "idempotency_key_reused")
    other = client.post(url, json={"records": [RECORD]},
                        headers={**bearer(ADMIN), "Idempotency-Key": "req-43"})
    assert other.json()["job_id"] != first.json()["job_id"]
    assert sum(j["kind"] == "forget" for j in store.list_jobs()) == 2


# ------------------------------------------------------------------------ bad input
def test_body_size_limit_is_413(client: TestClient, store: ArtifactStore, tmp_path: Path) -> None:
    mid = ready_model(client, store, tmp_path, "big")
    records = [{**RECORD, "paraphrases": ["Quorra Vance " + "y" * 1900] * 32}] * 2
    response = client.post(f"/v1/models/{mid}/forget", json={"records": records},
                           headers=bearer(ADMIN))
    assert code(response) == (413, "payload_too_large")

    def chunks():  # no Content-Length: counted while read
        for _ in range(100):
            yield b"x" * 1024

    response = client.post(f"/v1/models/{mid}/forget", content=chunks(),
                           headers={**bearer(ADMIN), "content-type": "application/json"})
    assert code(response) == (413, "payload_too_large")
    assert sum(j["kind"] == "forget" for j in store.list_jobs()) == 0


def test_model_sources_stay_inside_the_roots(
    client: TestClient, tmp_path: Path, store: ArtifactStore
) -> None:
    outside = hf_dir(tmp_path / "elsewhere")
    inside = tmp_path / "models"
    inside.mkdir()
    (inside / "link").symlink_to(outside)
    for source in (str(outside), f"{inside}/../elsewhere/tiny", f"{inside}/link",
                   "relative/dir", "builtin:gpt-5"):
        response = client.post("/v1/models", json={"name": "x", "source": source},
                               headers=bearer(ADMIN))
        assert code(response) == (422, "invalid_input"), source
        assert "source" in response.json()["error"]["message"]
    ok = client.post("/v1/models", json={"name": "b", "source": "builtin:smollm2-135m-instruct"},
                     headers=bearer(ADMIN))
    assert ok.status_code == 201
    assert len(store.list_models()) == 1


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"hparams": {"Bad-Name": 1}}, "hparams"),
        ({"hparams": {"steps": float("inf")}}, "hparams"),
        ({"hparams": {"steps": 1e12}}, "hparams"),
        ({"hparams": {"layers": {"nested": 1}}}, "hparams"),
        ({"callback_url": "http://10.0.0.8/hook"}, "callback_url"),
        ({"callback_url": "https://evil.example.org/hook"}, "callback_url"),
        ({"callback_url": "http://hooks.example.com/hook"}, "callback_url"),  # not https
        ({"callback_url": "https://user:pw@hooks.example.com/h"}, "callback_url"),
        ({"callback_url": "file:///etc/passwd"}, "callback_url"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"hparams": {"stats_files": ["/etc/passwd"]}}, "stats_files"),  # worker's disk
    ],
)
def test_forget_refuses_bad_hparams_callbacks_and_fields(
    client: TestClient, store: ArtifactStore, tmp_path: Path, extra: dict, names: str
) -> None:
    mid = ready_model(client, store, tmp_path, "bad")
    body = json.dumps({"records": [RECORD], **extra}).replace("Infinity", "1e999")
    response = client.post(f"/v1/models/{mid}/forget", content=body,
                           headers={**bearer(ADMIN), "content-type": "application/json"})
    assert code(response) == (422, "invalid_input"), response.text
    assert names in response.json()["error"]["message"]
    assert sum(j["kind"] == "forget" for j in store.list_jobs()) == 0


def test_allowed_callback_is_accepted(
    client: TestClient, store: ArtifactStore, tmp_path: Path
) -> None:
    mid = ready_model(client, store, tmp_path, "cb")
    body = {"records": [RECORD], "callback_url": "https://hooks.example.com/zu"}
    response = client.post(f"/v1/models/{mid}/forget", json=body, headers=bearer(ADMIN))
    assert response.status_code == 202, response.text
    request = store.requests.get(response.json()["job_id"])
    assert request["callback"]["state"] == "pending"


def test_secret_files_are_owner_only(client: TestClient, store: ArtifactStore) -> None:
    store.record_hashes([RECORD])
    for path in (store.root / "secrets").iterdir():
        assert os.stat(path).st_mode & 0o077 == 0, path


def test_reconciler_requeues_lost_jobs_and_purges_ended_ones(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    from rq.job import Job, JobStatus

    settings = make_settings(tmp_path, redis_url, reconcile_grace_s=0, request_retention_s=0)
    with TestClient(create_app(settings)) as c:
        store = c.app.state.store
        reconciler = c.app.state.reconciler
        mid = ready_model(c, store, tmp_path, "rec")
        response = c.post(f"/v1/models/{mid}/forget", json={"records": [RECORD]},
                          headers=bearer(ADMIN))
        job_id = response.json()["job_id"]
        reconciler.run_once()  # nothing lost yet
        assert store.requests.get(job_id)["enqueued"] == 1
        Job.fetch(job_id, connection=redis).delete()  # lost (FLUSHDB, restart)
        assert reconciler.run_once()["requeued"] >= 1
        assert Job.exists(job_id, connection=redis)
        Job.fetch(job_id, connection=redis).set_status(JobStatus.FAILED)  # died unstarted
        assert reconciler.run_once()["requeued"] >= 1
        assert Job.fetch(job_id, connection=redis).get_status() == JobStatus.QUEUED
        assert store.requests.get(job_id)["enqueued"] == 3
        store.transition_job(job_id, ["queued"], "running")
        store.transition_job(job_id, ["running"], "failed", error={"code": "x", "message": "y"})
        assert reconciler.run_once()["purged"] == 1
        request = store.requests.get(job_id)
        assert request["task_args"] is None and request["record_hashes"]
        assert store.requests.is_settled(job_id)
        assert "Quorra" not in json.dumps(request)
        actions = [e["action"] for e in store.audit.page(0, 100)[0]]
        assert actions.count("request.requeued") == 2 and "request.purged" in actions


def test_callback_names_resolving_inside_are_refused() -> None:
    """DNS rebinding: an allow-listed NAME that resolves to a private or loopback address
    is not called; literals and loopback names the operator listed are."""
    from app.callback_http import DeliveryFailed, resolve
    from app.callbacks import deliver

    with pytest.raises(DeliveryFailed, match="does not resolve"):
        resolve("localhost.localdomain.invalid", 443)
    assert resolve("127.0.0.1", 443) == "127.0.0.1"  # a literal the operator listed
    assert ipaddress.ip_address(resolve("localhost", 443)).is_loopback
    # no request is sent: the check comes first
    reason = deliver("https://no-such-host.invalid/hook", b"k", {"job_id": "j-1"}, 1, 5.0)
    assert reason is not None and reason.startswith("refused")
