"""Statuses and kinds are StrEnums in store.enums: the strings they stand for are the
HTTP contract and the stored data, so they are pinned here, and a real store (SQLite,
or PostgreSQL under ZEROUNLEARN_TEST_DATABASE) keeps them as the same plain text."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from app.main import create_app
from app.queue import INTERACTIVE_KINDS, TASKS
from app.settings import Settings
from store import ArtifactStore
from store.enums import (
    FACT_STATUSES,
    JOB_KINDS,
    JOB_STATUSES,
    MODEL_STATUSES,
    TERMINAL_JOB_STATUSES,
    CallbackState,
    JobKind,
    JobStatus,
    ModelStatus,
)
from store.sql.schema import Job, Model
from tests.support.redis_dbs import NEVER_CONTACTED

# The contract as it was before the enums: a changed value breaks clients and old rows.
KINDS = ["forget", "verify", "prepare", "export", "retain", "compact"]
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
MODEL = ["preparing", "ready", "failed"]
FACTS = ["pending", "known", "unknown", "invalid"]


def test_the_values_are_the_stored_strings() -> None:
    assert list(JOB_KINDS) == KINDS and JobKind.GENERATE == "generate"
    assert list(JOB_STATUSES) == STATUSES
    assert set(TERMINAL_JOB_STATUSES) == {"succeeded", "failed", "cancelled"}
    assert list(MODEL_STATUSES) == MODEL
    assert list(FACT_STATUSES) == FACTS
    assert list(CallbackState) == ["pending", "delivered", "gave_up"]
    assert f"{JobStatus.QUEUED}" == str(JobStatus.QUEUED) == "queued"


def test_every_kind_has_one_task() -> None:
    assert set(TASKS) == set(JobKind)
    assert INTERACTIVE_KINDS <= set(JobKind)


def test_openapi_lists_the_same_strings(tmp_path: Path) -> None:
    settings = Settings(redis_url=NEVER_CONTACTED, data_dir=tmp_path / "data",
                        admin_token="t" * 40, model_roots=str(tmp_path))
    api = create_app(settings).openapi()
    schemas = api["components"]["schemas"]
    assert schemas["JobOut"]["properties"]["kind"]["enum"] == KINDS
    assert schemas["JobOut"]["properties"]["status"]["enum"] == STATUSES
    assert schemas["JobAccepted"]["properties"]["status"]["enum"] == STATUSES
    assert schemas["ModelOut"]["properties"]["status"]["enum"] == MODEL
    assert schemas["RetainFactOut"]["properties"]["status"]["enum"] == FACTS
    params = {p["name"]: p["schema"] for p in api["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert params["kind"]["anyOf"][0]["enum"] == KINDS
    assert params["status"]["anyOf"][0]["enum"] == STATUSES


def test_the_store_keeps_plain_strings(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "data")
    model = store.create_model({"name": "m", "source": "builtin:x"})
    assert model["status"] == ModelStatus.PREPARING
    job = store.create_job({"kind": JobKind.FORGET, "model_id": model["id"]})
    assert store.transition_job(job["id"], [JobStatus.QUEUED], JobStatus.RUNNING)
    with store.meta.db.read() as s:
        row = s.execute(select(Job.kind, Job.status, Job.doc).where(Job.id == job["id"])).one()
        model_status = s.scalar(select(Model.status).where(Model.id == model["id"]))
    assert (row.kind, row.status, model_status) == ("forget", "running", "preparing")
    assert (row.doc["kind"], row.doc["status"]) == ("forget", "running")
    back = store.get_job(job["id"])
    assert type(back["status"]) is str and back["status"] == JobStatus.RUNNING
    assert [j["id"] for j in store.list_jobs(status=JobStatus.RUNNING)] == [job["id"]]
    assert [j["id"] for j in store.list_jobs(status="running")] == [job["id"]]
