"""Several machines, one shared store: the API and two workers, each with its OWN local
data directory, all on an S3-compatible object store (moto's server on localhost).

Worker A prepares the tiny GPT-2 and forgets facts; A stops. Worker B, which has never
seen the model, verifies the new version (downloading its patch from the object store)
and forgets more facts on top of it, reusing the statistics A computed (fetched, not
recomputed: no model sampling in B's log). Jobs, versions and the audit chain live in
the one shared metadata database (ZEROUNLEARN_DATABASE_URL, as several machines must
have it: PostgreSQL with ZEROUNLEARN_TEST_DATABASE=postgresql, else an SQLite file
outside every machine's directory), patches and the export in the object store; no
machine's local directory holds them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from store import ArtifactStore
from store.backends.s3 import S3Backend
from store.sql.engine import DATABASE_URL_ENV
from tests.support import processes
from tests.support.moto_s3 import CREDENTIALS, ENV, moto_s3_server, new_bucket
from tests.support.postgres import fresh_database_url
from tests.support.redis_dbs import redis_db
from tests.support.tiny_model import TINY_REQUEST_HPARAMS, tiny_facts

SAMPLING_LOG = "tokens from the model in"  # StatsCache's line when it samples a corpus
pytestmark = pytest.mark.timeout(900)


@dataclass
class Machines:
    root: Path
    redis_url: str
    env: dict[str, str]
    api: processes.ServiceProcess
    client: httpx.Client
    shared: ArtifactStore  # a client of the object store, as a fourth machine

    def data_dir(self, name: str) -> Path:
        return self.root / name / "data"

    def worker(self, name: str) -> processes.ServiceProcess:
        return processes.start_worker(self.redis_url, self.data_dir(name), self.root / "logs",
                                      name=f"s3-{name}", env=self.env)


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    root = tmp_path_factory.mktemp("s3stack")
    with (
        moto_s3_server(root / "logs") as endpoint,
        redis_db("s3-stack") as redis_url,
    ):
        url = new_bucket(endpoint)
        database = (os.environ.get(DATABASE_URL_ENV) or fresh_database_url()
                    or f"sqlite:///{root / 'shared-db' / 'metadata.sqlite3'}")
        env = {"ZEROUNLEARN_STORE_URL": url, "ZEROUNLEARN_S3_ENDPOINT_URL": endpoint,
               DATABASE_URL_ENV: database, **ENV}
        api = processes.start_api(redis_url, root / "api" / "data", root / "logs",
                                  **processes.api_defaults(root), **env)
        backend = S3Backend(url, endpoint_url=endpoint, client_options=CREDENTIALS)
        client = httpx.Client(base_url=api.extra["url"], timeout=60.0,
                              headers=processes.auth_headers())
        try:
            yield Machines(root, redis_url, env, api, client,
                           ArtifactStore(root / "observer", backend, database_url=database))
        finally:
            client.close()
            api.stop()


def records(people: range) -> list[dict[str, Any]]:
    """The secret code of each person in `people`; neighbour: their city."""
    facts = tiny_facts()
    out = []
    for i in people:
        code, city = facts[4 * i], facts[4 * i + 1]
        out.append({"prompt": code["prompt"], "answer": code["answer"],
                    "neighbors": [{"prompt": city["prompt"], "answer": city["answer"]}]})
    return out


def forget(client: httpx.Client, model_id: str, people: range) -> dict[str, Any]:
    body = {"records": records(people), "method": "zerounlearn", "hparams": TINY_REQUEST_HPARAMS}
    response = client.post(f"/v1/models/{model_id}/forget", json=body)
    assert response.status_code == 202, response.text
    return processes.wait_job(client, response.json()["job_id"])


def stats_files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.safetensors")}


def test_two_workers_on_two_machines_share_one_store(
    machines: Machines, tiny_gpt2_dir: Path
) -> None:
    c, shared = machines.client, machines.shared
    worker_a = machines.worker("a")
    try:
        # a model source must be reachable from every worker: here one local path
        created = c.post("/v1/models", json={"name": "tiny", "source": str(tiny_gpt2_dir)})
        assert created.status_code == 201, created.text
        mid = created.json()["id"]
        model = processes.wait_model_ready(c, mid)
        assert model["status"] == "ready", model
        first = forget(c, mid, range(0, 3))
        assert first["status"] == "succeeded", first
        assert first["result"]["version"] == "v1"
    finally:
        worker_a.stop()
    log_a = (machines.root / "logs" / "s3-a.log").read_text()
    assert SAMPLING_LOG in log_a  # A computed the statistics
    a_stats = stats_files(machines.data_dir("a") / "stats")
    assert a_stats and {f"stats/{n}" for n in a_stats} <= set(shared.backend.list_keys("stats/"))

    worker_b = machines.worker("b")
    try:
        check = {"records": records(range(0, 3))}
        response = c.post(f"/v1/models/{mid}/versions/v1/verify", json=check)
        assert response.status_code == 202, response.text
        verified = processes.wait_job(c, response.json()["job_id"])
        assert verified["status"] == "succeeded", verified
        assert [r["forgotten"] for r in verified["result"]["records"]] == [True] * 3
        manifest = c.get(f"/v1/models/{mid}/versions/v1").json()
        cached = machines.data_dir("b") / "models" / mid / "versions" / "v1" / "patch.safetensors"
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == manifest["patch"]["sha256"]

        second = forget(c, mid, range(10, 13))
        assert second["status"] == "succeeded", second
        assert second["result"]["version"] == "v2" and second["result"]["parent"] == "v1"
        v2 = c.get(f"/v1/models/{mid}/versions/v2").json()
        assert v2["patch"]["sha256"] != manifest["patch"]["sha256"]  # a new edit

        response = c.post(f"/v1/models/{mid}/versions/v2/export")
        exported = processes.wait_job(c, response.json()["job_id"])
        assert exported["status"] == "succeeded", exported
        where = exported["result"]["path"]
        assert where.startswith("s3://") and where.endswith(f"exports/{mid}/v2")
    finally:
        worker_b.stop()
    log_b = (machines.root / "logs" / "s3-b.log").read_text()
    assert "statistics file(s) from the shared store" in log_b
    assert SAMPLING_LOG not in log_b  # B reused A's statistics: nothing recomputed
    assert stats_files(machines.data_dir("b") / "stats") == a_stats

    # everything lives in the object store; the machines' directories are caches
    assert [v["id"] for v in shared.list_versions(mid)] == ["v0", "v1", "v2"]
    jobs = {j["id"]: j for j in shared.list_jobs(mid)}
    assert jobs[first["id"]]["status"] == jobs[second["id"]]["status"] == "succeeded"
    assert shared.backend.exists(f"exports/{mid}/v2/zerounlearn-export.json")
    for name in ("api", "a", "b"):
        assert not (machines.data_dir(name) / "jobs").exists(), name
        assert not (machines.data_dir(name) / "audit").exists(), name
        assert not (machines.data_dir(name) / "metadata.sqlite3").exists(), name
    audit = c.get("/v1/audit/verify").json()
    assert audit["valid"] is True and audit["entries"] >= 6, audit
    assert shared.audit.verify()["head"] == audit["head"]
