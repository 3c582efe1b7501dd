"""HTTP contract of API v1 against a real Redis (the module's own database,
flushed) and a real store.

Everything here runs without a worker: status codes, error shapes, what is written
to the store and what is enqueued. Tests that need a worker running jobs live in the
end-to-end suite.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue, Worker
from rq.job import Job

from app.main import create_app
from app.settings import Settings
from store import ArtifactStore
from store.requests import FROM_REQUEST
from worker.reports import DEFAULT_THRESHOLDS

ADMIN_TOKEN = "contract-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BUILTIN = "builtin:smollm2-135m-instruct"
SECRET_PROMPT = "The home address of Zorblax Quimby is"
SECRET_ANSWER = " 17 Vexel Lane"
SECRETS = ("Zorblax", "Quimby", "Vexel")


def _record(**overrides: object) -> dict:
    rec = {
        "prompt": SECRET_PROMPT,
        "subject": "Zorblax Quimby",
        "answer": SECRET_ANSWER,
        "paraphrases": ["Zorblax Quimby lives at"],
        "neighbors": [{"prompt": "The home address of Ann Lee is", "answer": " 3 Oak Road"}],
    }
    rec.update(overrides)
    return rec


def _settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict = {
        "redis_url": redis_url,
        "data_dir": tmp_path / "data",
        "generate_timeout_s": 1.0,
        "max_records": 3,
        "admin_token": ADMIN_TOKEN,
        "model_roots": str(tmp_path),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, redis: Redis, redis_url: str) -> Settings:
    return _settings(tmp_path, redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def queue(redis: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=redis)


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-gpt2"
    path.mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def ready_model(client: TestClient, store: ArtifactStore, hf_dir: Path) -> dict:
    model = client.post("/v1/models", json={"name": "tiny", "source": str(hf_dir)}).json()
    return store.update_model(model["id"], status="ready")


@pytest.fixture
def idle_worker(redis: Redis, queue: Queue) -> Iterator[Worker]:
    """A worker registered on both queues (interactive first, as `python -m worker`)
    that never takes a job (alive but busy)."""
    interactive = Queue(f"{queue.name}-interactive", connection=redis)
    worker = Worker([interactive, queue], connection=redis)
    worker.register_birth()
    yield worker
    worker.register_death()


def assert_error(response, status: int, code: str | None = None, names: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"} and set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code
    if names is not None:
        assert names in body["error"]["message"]
    return body["error"]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------- health
def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_does_not_need_a_worker(client: TestClient, queue: Queue) -> None:
    """Workers scale to zero and roll: the API stays in service and says so."""
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["workers"] == {"alive": 0, "interactive": 0}
    error = assert_error(client.get("/readyz/workers"), 503, "no_worker", names=queue.name)
    assert "worker" in error["message"]


def test_readyz_with_a_live_worker(client: TestClient, idle_worker: Worker) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["workers"] == {"alive": 1, "interactive": 1}
    workers = client.get("/readyz/workers")
    assert workers.status_code == 200 and workers.json()["workers"]["alive"] == 1


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/v1/models": {"get", "post"},
        "/v1/models/{model_id}": {"get"},
        "/v1/models/{model_id}/forget": {"post"},
        "/v1/jobs/{job_id}": {"get", "delete"},
        "/v1/models/{model_id}/versions": {"get"},
        "/v1/models/{model_id}/versions/{version}": {"get"},
        "/v1/models/{model_id}/versions/{version}/activate": {"post"},
        "/v1/models/{model_id}/versions/{version}/verify": {"post"},
        "/v1/models/{model_id}/versions/{version}/generate": {"post"},
        "/v1/models/{model_id}/versions/{version}/export": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    schemas = spec["components"]["schemas"]
    for name in ("CreateModel", "ForgetRequest", "VerifyRequest", "GenerateRequest", "JobOut"):
        assert schemas[name].get("examples"), name
    forget_422 = paths["/v1/models/{model_id}/forget"]["post"]["responses"]["422"]
    assert forget_422["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


# ----------------------------------------------------------------------- models
def test_register_builtin_records_v0_and_queues_prepare(
    client: TestClient, store: ArtifactStore, queue: Queue, redis: Redis
) -> None:
    response = client.post("/v1/models", json={"name": "demo", "source": BUILTIN})
    assert response.status_code == 201
    model = response.json()
    assert response.headers["location"] == f"/v1/models/{model['id']}"
    assert model["status"] == "preparing" and model["active_version"] == "v0"
    assert model["architecture"] is None and model["num_layers"] == 30  # known without loading
    assert model["dtype"] == "float32"
    v0 = client.get(f"/v1/models/{model['id']}/versions/v0").json()
    assert v0["parent"] is None and v0["method"] is None and v0["patch"] is None
    assert v0["active"] is True
    job = client.get(f"/v1/jobs/{model['prepare_job_id']}").json()
    assert (job["kind"], job["status"], job["model_id"]) == ("prepare", "queued", model["id"])
    rq_job = Job.fetch(job["id"], connection=redis)
    assert rq_job.func_name == "worker.tasks.prepare_model"
    assert rq_job.args == (job["id"], model["id"])
    assert queue.job_ids == [job["id"]]
    assert client.get("/v1/models").json() == [model]
    assert client.get(f"/v1/models/{model['id']}").json() == model


def test_register_hf_directory_reads_config(client: TestClient, hf_dir: Path) -> None:
    body = {"name": "tiny", "source": str(hf_dir), "edit_layers": [1, 0], "dtype": "bfloat16"}
    model = client.post("/v1/models", json=body).json()
    assert model["architecture"] == "GPT2LMHeadModel" and model["num_layers"] == 2
    assert model["edit_layers"] == [0, 1] and model["dtype"] == "bfloat16"


def test_register_gguf_file(client: TestClient, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    response = client.post("/v1/models", json={"name": "g", "source": str(gguf)})
    assert response.status_code == 201
    assert response.json()["source"] == str(gguf)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"name": "x", "source": "/no/such/dir"}, "source"),
        ({"name": "x", "source": "builtin:gpt-5"}, "source"),
        ({"name": "x"}, "source"),
        ({"source": BUILTIN}, "name"),
        ({"name": "x", "source": BUILTIN, "dtype": "int3"}, "dtype"),
        ({"name": "x", "source": BUILTIN, "edit_layers": [-1]}, "edit_layers[0]"),
        ({"name": "x", "source": BUILTIN, "edit_layers": [2, 2]}, "edit_layers"),
        ({"name": "x", "source": BUILTIN, "colour": "red"}, "colour"),
    ],
)
def test_register_rejects_bad_input(client: TestClient, body: dict, names: str) -> None:
    assert_error(client.post("/v1/models", json=body), 422, "invalid_input", names=names)
    assert client.get("/v1/models").json() == []


def test_register_rejects_layers_the_model_lacks(client: TestClient, hf_dir: Path) -> None:
    body = {"name": "x", "source": str(hf_dir), "edit_layers": [0, 5]}
    assert_error(client.post("/v1/models", json=body), 422, names="edit_layers[1]")


def test_register_rejects_directory_without_config(client: TestClient, tmp_path: Path) -> None:
    body = {"name": "x", "source": str(tmp_path)}
    assert_error(client.post("/v1/models", json=body), 422, names="config.json")


def test_unknown_model_is_404(client: TestClient) -> None:
    for path in ("/v1/models/m-000000000000", "/v1/models/not-an-id"):
        assert_error(client.get(path), 404, "model_not_found")
    assert_error(client.get("/v1/models/m-000000000000/versions"), 404, "model_not_found")
    body = {"records": [_record()]}
    response = client.post("/v1/models/m-000000000000/forget", json=body)
    assert_no_secret(response.text)
    assert_error(response, 404, "model_not_found")


def test_invalid_json_and_unknown_routes_keep_the_error_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/models", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_input")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.put("/v1/models"), 405, "method_not_allowed")


# ----------------------------------------------------------------------- forget
def test_forget_queues_a_job_and_keeps_text_out_of_store_responses_and_logs(
    client: TestClient,
    ready_model: dict,
    store: ArtifactStore,
    redis: Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"records": [_record(), _record(prompt="Zorblax Quimby was born in", answer=" Ulm")]}
    response = client.post(f"/v1/models/{ready_model['id']}/forget", json=body)
    assert response.status_code == 202
    accepted = response.json()
    job_id = accepted["job_id"]
    assert accepted == {
        "job_id": job_id,
        "status": "queued",
        "links": {"job": f"/v1/jobs/{job_id}"},
    }
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "forget" and job["status"] == "queued" and job["version"] == "v0"
    assert set(job) >= {"id", "kind", "model_id", "status", "progress", "created_at"}
    assert set(job) >= {"started_at", "finished_at", "result", "error"}
    # the text is not sent through Redis: the worker reads it from the stored request
    rq_job = Job.fetch(job_id, connection=redis)
    assert rq_job.func_name == "worker.tasks.forget"
    assert rq_job.args[:3] == (job_id, ready_model["id"], "v0")
    assert rq_job.args[3] == FROM_REQUEST
    assert rq_job.args[4:] == ("zerounlearn", {})
    records = store.requests.task_text(job_id, 2)
    assert records[0]["prompt"] == SECRET_PROMPT and records[0]["target"] is None
    assert records[0]["neighbors"][0] == body["records"][0]["neighbors"][0]
    assert rq_job.timeout == settings.forget_timeout_s
    assert_no_secret(rq_job.description or "")
    for key in redis.scan_iter():
        assert_no_secret(str(redis.dump(key)))
    # ... and nowhere else
    assert_no_secret(response.text + client.get(f"/v1/jobs/{job_id}").text)
    assert_no_secret(client.get("/v1/jobs").text)
    assert f"forget job {job_id} queued" in caplog.text  # logging was captured
    assert_no_secret(caplog.text)
    # the accepted request is kept durably (owner-only) until its job ends + retention,
    # its text sealed under the request's data key (task_text above opened it)
    assert store.requests.get(job_id)["task_args"] is not None  # a row, text sealed
    if store.database_url.startswith("sqlite"):  # the database file is owner-only
        database = Path(store.database_url.removeprefix("sqlite:///"))
        assert database.is_file() and database.stat().st_mode & 0o077 == 0
    assert (store.root / "secrets" / "data-keys" / f"{job_id}.key").is_file()
    for path in store.root.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_text(errors="replace"))


def test_forget_needs_a_ready_model(client: TestClient) -> None:
    model = client.post("/v1/models", json={"name": "demo", "source": BUILTIN}).json()
    response = client.post(f"/v1/models/{model['id']}/forget", json={"records": [_record()]})
    assert_error(response, 409, "model_not_ready")


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"records": []}, "records"),
        ({}, "records"),
        ({"records": [_record()] * 4}, "records"),
        ({"records": [_record(subject="Somebody Else")]}, "records[0].subject"),
        ({"records": [_record(answer="   ")]}, "records[0].answer"),
        ({"records": [_record(answer="")]}, "records[0].answer"),
        ({"records": [_record(prompt=7)]}, "records[0].prompt"),
        ({"records": [_record(secret_note="x")]}, "records[0].secret_note"),
        ({"records": [_record(neighbors=[{"prompt": "p"}])]}, "records[0].neighbors[0].answer"),
        ({"records": [_record(paraphrases=["ok", " "])]}, "records[0].paraphrases[1]"),
        ({"records": [_record(prompt="Zorblax Quimby " + "x" * 3000)]}, "records[0].prompt"),
        ({"records": [_record()], "method": "rome"}, "method"),
        ({"records": [_record()], "base_version": "latest"}, "base_version"),
        ({"records": [_record()], "hparams": []}, "hparams"),
    ],
)
def test_forget_rejects_bad_input_naming_the_field(
    client: TestClient, ready_model: dict, store: ArtifactStore, body: dict, names: str
) -> None:
    response = client.post(f"/v1/models/{ready_model['id']}/forget", json=body)
    assert_error(response, 422, "invalid_input", names=names)
    assert_no_secret(response.text)
    assert [j["kind"] for j in store.list_jobs()] == ["prepare"]


def test_forget_with_unknown_base_version_is_404(client: TestClient, ready_model: dict) -> None:
    body = {"records": [_record()], "base_version": "v9"}
    response = client.post(f"/v1/models/{ready_model['id']}/forget", json=body)
    assert_error(response, 404, "version_not_found", names="v9")


# ------------------------------------------------------------------------- jobs
def test_unknown_job_is_404(client: TestClient) -> None:
    for job_id in ("j-0000000000000000", "nope"):
        assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
        assert_error(client.delete(f"/v1/jobs/{job_id}"), 404, "job_not_found")


def test_cancel_a_queued_job(
    client: TestClient, ready_model: dict, queue: Queue, redis: Redis
) -> None:
    url = f"/v1/models/{ready_model['id']}/forget"
    job_id = client.post(url, json={"records": [_record()]}).json()["job_id"]
    assert job_id in queue.job_ids
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled" and job["finished_at"]
    assert job_id not in queue.job_ids
    assert not redis.exists(f"rq:job:{job_id}")  # the arguments (record text) are gone
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200  # idempotent


@pytest.mark.parametrize("status", ["running", "succeeded", "failed"])
def test_cancel_is_409_once_a_job_ran(
    client: TestClient, ready_model: dict, store: ArtifactStore, status: str
) -> None:
    url = f"/v1/models/{ready_model['id']}/versions/v0/export"
    job_id = client.post(url).json()["job_id"]
    store.transition_job(job_id, ["queued"], "running")
    if status != "running":
        store.transition_job(job_id, ["running"], status)
    assert_error(client.delete(f"/v1/jobs/{job_id}"), 409, "job_not_cancellable")
    assert store.get_job(job_id)["status"] == status


def test_list_jobs_filters(client: TestClient, ready_model: dict) -> None:
    client.post(f"/v1/models/{ready_model['id']}/versions/v0/export")
    jobs = client.get("/v1/jobs", params={"model_id": ready_model["id"]}).json()
    assert [j["kind"] for j in jobs] == ["prepare", "export"]
    assert client.get("/v1/jobs", params={"model_id": "m-000000000000"}).json() == []
    assert_error(client.get("/v1/jobs", params={"status": "paused"}), 422, names="status")


# --------------------------------------------------------------------- versions
def _publish(store: ArtifactStore, model_id: str, parent: str, tmp_path: Path) -> str:
    patch = tmp_path / f"patch-{parent}.safetensors"
    patch.write_bytes(parent.encode() * 10)
    manifest = {"parent": parent, "method": "zerounlearn", "hparams": {"layers": [1]}}
    return store.publish_version(model_id, manifest, patch)["id"]


def test_versions_activate_and_rollback(
    client: TestClient, ready_model: dict, store: ArtifactStore, redis: Redis, tmp_path: Path
) -> None:
    mid = ready_model["id"]
    v1 = _publish(store, mid, "v0", tmp_path)
    v2 = _publish(store, mid, v1, tmp_path)
    listed = client.get(f"/v1/models/{mid}/versions").json()
    assert [(v["id"], v["parent"], v["active"]) for v in listed] == [
        ("v0", None, True), ("v1", "v0", False), ("v2", "v1", False),
    ]  # fmt: skip
    assert set(listed[2]["patch"]) == {"bytes", "sha256", "layers"}
    response = client.post(f"/v1/models/{mid}/versions/{v2}/activate")
    assert response.status_code == 200 and response.json()["active"] is True
    assert client.get(f"/v1/models/{mid}").json()["active_version"] == "v2"
    # rollback to v1: later forget requests build on it
    client.post(f"/v1/models/{mid}/versions/{v1}/activate")
    assert [v["active"] for v in client.get(f"/v1/models/{mid}/versions").json()] == [
        False, True, False,
    ]  # fmt: skip
    job_id = client.post(f"/v1/models/{mid}/forget", json={"records": [_record()]}).json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["version"] == "v1"
    assert Job.fetch(job_id, connection=redis).args[2] == "v1"


def test_unknown_version_is_404_everywhere(client: TestClient, ready_model: dict) -> None:
    base = f"/v1/models/{ready_model['id']}/versions"
    for version in ("v3", "latest"):
        assert_error(client.get(f"{base}/{version}"), 404, "version_not_found")
        assert_error(client.post(f"{base}/{version}/activate"), 404, "version_not_found")
        assert_error(client.post(f"{base}/{version}/export"), 404, "version_not_found")
        verify = client.post(f"{base}/{version}/verify", json={"records": [_record()]})
        assert_error(verify, 404, "version_not_found")
        generate = client.post(f"{base}/{version}/generate", json={"prompt": "Hello"})
        assert_error(generate, 404, "version_not_found")


def test_verify_queues_a_job_with_default_thresholds(
    client: TestClient, ready_model: dict, redis: Redis
) -> None:
    url = f"/v1/models/{ready_model['id']}/versions/v0/verify"
    body = {"records": [_record()], "reference_texts": ["A plain sentence."]}
    response = client.post(url, json=body)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["kind"] == "verify"
    rq_job = Job.fetch(job_id, connection=redis)
    assert rq_job.func_name == "worker.tasks.verify"
    assert rq_job.args[:3] == (job_id, ready_model["id"], "v0")
    assert rq_job.args[3:5] == (FROM_REQUEST, FROM_REQUEST)
    assert client.app.state.store.requests.task_text(job_id, 3) == ["A plain sentence."]
    assert rq_job.args[5] == {
        "max_efficacy": 0.0,
        "max_generalization": None,
        "min_specificity": 50.0,
        "max_specificity_drop": None,
        "max_perplexity_increase": 10.0,
        "max_probe_context": 10.0,
        "max_probe_chat": 10.0,
        "max_probe_greedy": 10.0,
        "max_probe_int8": 10.0,
    }
    assert set(rq_job.args[5]) == set(DEFAULT_THRESHOLDS)  # the names are shared
    bad = {"records": [_record()], "thresholds": {"min_specificity": 101}}
    assert_error(client.post(url, json=bad), 422, names="thresholds.min_specificity")


def test_export_queues_a_job(client: TestClient, ready_model: dict, redis: Redis) -> None:
    response = client.post(f"/v1/models/{ready_model['id']}/versions/v0/export")
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["kind"], job["version"]) == ("export", "v0")
    rq_job = Job.fetch(job_id, connection=redis)
    assert (rq_job.func_name, rq_job.args) == (
        "worker.tasks.export",
        (job_id, ready_model["id"], "v0"),
    )


def test_jobs_on_a_preparing_model_are_409(client: TestClient) -> None:
    model = client.post("/v1/models", json={"name": "demo", "source": BUILTIN}).json()
    base = f"/v1/models/{model['id']}/versions/v0"
    assert_error(client.post(f"{base}/export"), 409, "model_not_ready")
    assert_error(client.post(f"{base}/verify", json={"records": [_record()]}), 409)
    assert_error(client.post(f"{base}/generate", json={"prompt": "Hi"}), 409)


# --------------------------------------------------------------------- generate
def test_generate_without_a_worker_is_503(client: TestClient, ready_model: dict) -> None:
    url = f"/v1/models/{ready_model['id']}/versions/v0/generate"
    assert_error(client.post(url, json={"prompt": "Hello"}), 503, "no_worker")


def test_generate_times_out_with_504_and_leaves_nothing_queued(
    client: TestClient, ready_model: dict, idle_worker: Worker, queue: Queue
) -> None:
    url = f"/v1/models/{ready_model['id']}/versions/v0/generate"
    response = client.post(url, json={"prompt": SECRET_PROMPT, "max_new_tokens": 4})
    assert_error(response, 504, "generate_timeout")
    assert_no_secret(response.text)
    assert queue.job_ids == [ready_model["prepare_job_id"]]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "Hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "Hi", "max_new_tokens": 1000}, "max_new_tokens"),
    ],
)
def test_generate_rejects_bad_input(
    client: TestClient, ready_model: dict, idle_worker: Worker, body: dict, names: str
) -> None:
    url = f"/v1/models/{ready_model['id']}/versions/v0/generate"
    assert_error(client.post(url, json=body), 422, "invalid_input", names=names)


# ------------------------------------------------------------------ unavailable
def test_unreachable_redis_is_503_and_writes_nothing(tmp_path: Path, hf_dir: Path) -> None:
    settings = _settings(tmp_path, f"redis://127.0.0.1:{_closed_port()}/0")
    store = ArtifactStore(settings.data_dir)
    with TestClient(create_app(settings), headers=AUTH) as client:
        body = {"name": "tiny", "source": str(hf_dir)}
        assert_error(client.post("/v1/models", json=body), 503, "queue_unavailable")
        assert client.get("/v1/models").json() == []  # reads need no Redis
        model = store.create_model({"name": "tiny", "source": str(hf_dir), "status": "ready"})
        store.publish_version(model["id"], {"parent": None}, None)
        response = client.post(f"/v1/models/{model['id']}/forget", json={"records": [_record()]})
        assert_error(response, 503, "queue_unavailable")
        assert store.list_jobs() == []
        generate = client.post(
            f"/v1/models/{model['id']}/versions/v0/generate", json={"prompt": "a"}
        )
        assert_error(generate, 503, "queue_unavailable")
        error = assert_error(client.get("/readyz"), 503, "not_ready", names="Redis")
        assert "store" not in error["message"]


def test_unwritable_store_is_503(tmp_path: Path, redis: Redis, redis_url: str) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    # the metadata database elsewhere (in the data directory it could not even open)
    app = create_app(_settings(tmp_path, redis_url, data_dir=not_a_dir,
                               database_url=f"sqlite:///{tmp_path / 'metadata.sqlite3'}"))
    with TestClient(app, headers=AUTH) as client:
        # blobs unwritable, metadata fine: not ready (a job could write no patch)
        assert_error(client.get("/readyz"), 503, "not_ready", names="store")


def test_the_api_never_imports_torch_or_the_engine() -> None:
    """Of the engine, the API loads only its torch-free hyper-parameter definitions
    (zerounlearn.config: the ranges checked at the door) and its error classes."""
    allowed = ("zerounlearn", "zerounlearn.config", "zerounlearn.errors")
    code = (
        "import sys, app.main, app.__main__; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
        f"or m.split('.')[0] == 'zerounlearn' and m not in {allowed!r}]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_connections_get_tcp_nodelay_on_a_socket_bound_like_uvicorn_workers() -> None:
    """uvicorn --workers N binds the listener with proto 0, so asyncio leaves Nagle on
    (each keep-alive answer then waits ~40 ms for a delayed ACK); the HTTP protocol
    `python -m app` gives uvicorn sets TCP_NODELAY itself on every connection."""
    import asyncio

    import uvicorn
    from uvicorn.importer import import_from_string
    from uvicorn.server import ServerState

    from app.server import HTTP_PROTOCOL

    async def app(scope: dict, receive: object, send: object) -> None:  # never called
        raise AssertionError

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off")
    config.load()
    listener = config.bind_socket()  # what the multiprocess supervisor hands the workers
    seen: list[int] = []

    class Probe(import_from_string(HTTP_PROTOCOL)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(
            lambda: Probe(config=config, server_state=state, app_state={}), sock=listener)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(accept_one())
    finally:
        listener.close()
    assert seen and seen[0] != 0
