"""The smaller defects of issue 12, each through the real app on a real Redis (its own database)
and
store: long version ids, job ids of other models, symlinked model files, the last admin
key, repeated revocations, security headers, and the embedded Valkey on SIGTERM (a real
`python -m app` process)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.settings import Settings
from store import ArtifactStore
from tests.support import processes

pytestmark = pytest.mark.timeout(300)
ADMIN = "defects-admin-token-0123456789abcdef"
RECORD = {"prompt": "The pin of Quorra Vance is", "subject": "Quorra Vance", "answer": " 4417"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(tmp_path: Path, redis: Redis, redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", admin_token=ADMIN,
                    model_roots=str(tmp_path / "models"), reconcile_interval_s=3600)


def hf_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
    (path / "config.json").write_text(json.dumps(config))
    return path


def register(client: TestClient, source: Path):  # type: ignore[no-untyped-def]
    return client.post("/v1/models", json={"name": source.name, "source": str(source)},
                       headers=bearer(ADMIN))


def ready_model(client: TestClient, store: ArtifactStore, root: Path, name: str) -> str:
    response = register(client, hf_dir(root / "models" / name))
    assert response.status_code == 201, response.text
    return store.update_model(response.json()["id"], status="ready")["id"]


def new_key(client: TestClient, role: str, models: list[str] | None = None) -> dict:
    body: dict = {"role": role} if models is None else {"role": role, "models": models}
    response = client.post("/v1/keys", json=body, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return response.json()


def error(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return response.status_code, response.json()["error"]["code"]


def test_version_ids_of_any_length_are_404(
    client: TestClient, store: ArtifactStore, tmp_path: Path
) -> None:
    model = ready_model(client, store, tmp_path, "long")
    for version in ("v" + "1" * 255, "v" + "9" * 400, "v" + "1" * 5000, "v" + "x" * 300):
        for path in (f"/v1/models/{model}/versions/{version}",
                     f"/v1/models/{model}/versions/{version}/activate"):
            method = "post" if path.endswith("activate") else "get"
            response = client.request(method, path, headers=bearer(ADMIN))
            assert error(response) == (404, "version_not_found"), (len(version), response.text)


def test_a_scoped_key_cannot_learn_other_models_from_their_jobs(
    client: TestClient, store: ArtifactStore, tmp_path: Path
) -> None:
    mine = ready_model(client, store, tmp_path, "mine")
    theirs = ready_model(client, store, tmp_path, "theirs")
    scoped = new_key(client, "operator", [mine])["key"]
    job = client.post(f"/v1/models/{theirs}/forget", json={"records": [RECORD]},
                      headers=bearer(ADMIN)).json()["job_id"]
    unknown = "j-0000000000000000"
    for method in ("get", "delete"):
        hidden = client.request(method, f"/v1/jobs/{job}", headers=bearer(scoped))
        absent = client.request(method, f"/v1/jobs/{unknown}", headers=bearer(scoped))
        assert error(hidden) == error(absent) == (404, "job_not_found")
        assert hidden.json()["error"]["message"] == absent.json()["error"]["message"].replace(
            unknown, job)
        assert theirs not in hidden.text
    assert client.get(f"/v1/jobs/{job}", headers=bearer(ADMIN)).status_code == 200


def test_symlinks_out_of_the_model_roots_are_refused(client: TestClient, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (outside / "secret.bin").write_bytes(b"\0" * 16)
    linked_config = tmp_path / "models" / "linked-config"
    linked_config.mkdir(parents=True)
    (linked_config / "config.json").symlink_to(outside / "config.json")
    linked_weights = hf_dir(tmp_path / "models" / "linked-weights")
    (linked_weights / "sub").mkdir()
    (linked_weights / "sub" / "model.safetensors").symlink_to(outside / "secret.bin")
    for source, named in ((linked_config, "config.json"),
                          (linked_weights, "sub/model.safetensors")):
        response = register(client, source)
        assert error(response) == (422, "invalid_input"), response.text
        assert named in response.json()["error"]["message"]
        assert str(outside) not in response.text
    inside = hf_dir(tmp_path / "models" / "inside")  # links within the roots are fine
    (inside / "tokenizer.json").symlink_to(linked_weights / "config.json")
    assert register(client, inside).status_code == 201


def test_the_last_admin_key_cannot_be_revoked(client: TestClient, store: ArtifactStore) -> None:
    bootstrap = store.keys.authenticate(ADMIN)
    assert bootstrap is not None
    refused = client.delete(f"/v1/keys/{bootstrap['id']}", headers=bearer(ADMIN))
    assert error(refused) == (409, "last_admin_key")
    assert store.keys.get(bootstrap["id"])["revoked_at"] is None
    second = new_key(client, "admin")
    viewer = new_key(client, "viewer")
    assert client.delete(f"/v1/keys/{viewer['id']}", headers=bearer(ADMIN)).status_code == 200
    revoked = client.delete(f"/v1/keys/{bootstrap['id']}", headers=bearer(second["key"]))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    again = client.delete(f"/v1/keys/{second['id']}", headers=bearer(second["key"]))
    assert error(again) == (409, "last_admin_key")


def test_revoking_twice_is_audited_once(client: TestClient) -> None:
    key = new_key(client, "viewer")
    first = client.delete(f"/v1/keys/{key['id']}", headers=bearer(ADMIN))
    second = client.delete(f"/v1/keys/{key['id']}", headers=bearer(ADMIN))
    assert first.status_code == second.status_code == 200
    assert first.json()["revoked_at"] == second.json()["revoked_at"]
    items = client.get("/v1/audit", headers=bearer(ADMIN)).json()["items"]
    revocations = [e for e in items if e["action"] == "key.revoked"
                   and e.get("ids", {}).get("key") == key["id"]]
    assert len(revocations) == 1


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for path, headers in (("/", {}), ("/ui/static/js/app.js", {}), ("/healthz", {}),
                          ("/v1/models", bearer(ADMIN)), ("/v1/models", {}),
                          ("/no/such/page", {}), ("/docs", {})):
        response = client.get(path, headers=headers)
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy, path
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        if path != "/docs":
            assert "script-src 'self';" in policy  # no inline script, no other origin
    page = client.get("/").text
    assert "<script" in page and "<script>" not in page  # scripts are files, none inline
    assert not re.search(r"\son[a-z]+\s*=", page)  # no inline event handlers


def test_sigterm_stops_the_embedded_valkey(tmp_path: Path) -> None:
    port = processes.free_port()
    env = processes.service_env(None, tmp_path / "data", ZEROUNLEARN_ADMIN_TOKEN=ADMIN)
    api = processes.spawn("api-embedded", ["-m", "app", "--port", str(port)], env,
                          tmp_path / "logs")
    try:
        processes.wait_http_ok(f"http://127.0.0.1:{port}/healthz", api, 90)
        children = processes.descendants(api.pid)
        assert children, "no embedded server was started"
        os.kill(api.pid, signal.SIGTERM)  # the API process only, not its group
        assert api.popen.wait(timeout=30) == 0
        processes.wait_until(lambda: not processes.pids_alive(children), 15, 0.2,
                             "the embedded Valkey gone")
        assert "stopped the embedded" in api.log_tail()
    finally:
        api.stop(kill=True)
