"""What the routes do, between the store and the queue; routes stay one call thick.

Order matters for durability: Redis is pinged before anything is written, the job
document is written before the job is enqueued (so a worker always finds it), and a
job that could not be enqueued is marked failed rather than left "queued".
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from app.errors import ConflictError, InvalidInput, Unavailable
from app.queue import JobQueue
from app.schemas import CreateModel, ForgetRequest, GenerateRequest, RecordIn, VerifyRequest
from app.settings import Settings
from app.sources import check_edit_layers, inspect_source
from store import ArtifactStore

logger = logging.getLogger(__name__)

QUEUE_DOWN = {"code": "queue_unavailable", "message": "the job could not be queued"}


def job_links(job_id: str) -> dict[str, str]:
    return {"job": f"/v1/jobs/{job_id}"}


def accepted(job: dict[str, Any]) -> dict[str, Any]:
    """Body of a 202: the job id, its status and where to poll it."""
    return {"job_id": job["id"], "status": job["status"], "links": job_links(job["id"])}


def submit_job(
    store: ArtifactStore, queue: JobQueue, kind: str, model_id: str, version: str, *args: Any
) -> dict[str, Any]:
    """Record a job document, then enqueue worker.tasks.<kind>(job_id, *args)."""
    queue.ping()
    job = store.create_job({"kind": kind, "model_id": model_id, "version": version})
    try:
        queue.enqueue(kind, job["id"], *args)
    except RedisError:
        store.transition_job(job["id"], ["queued"], "failed", error=QUEUE_DOWN)
        raise
    return job


def register_model(store: ArtifactStore, queue: JobQueue, req: CreateModel) -> dict[str, Any]:
    """Validate the source, record the model and its v0, and queue its prepare job."""
    info = inspect_source(req.source)
    check_edit_layers(req.edit_layers, info.num_layers)
    queue.ping()
    model = store.create_model(
        {
            "name": req.name,
            "source": info.source,
            "architecture": info.architecture,
            "num_layers": info.num_layers,
            "edit_layers": sorted(req.edit_layers) if req.edit_layers else None,
            "dtype": req.dtype,
            "active_version": "v0",
            "status": "preparing",
        }
    )
    store.publish_version(model["id"], {"parent": None, "method": None}, None)
    try:
        job = submit_job(store, queue, "prepare", model["id"], "v0", model["id"])
    except RedisError:
        store.update_model(model["id"], status="failed", error=QUEUE_DOWN)
        raise
    model = store.update_model(model["id"], prepare_job_id=job["id"])
    logger.info("model %s registered; prepare job %s queued", model["id"], job["id"])
    return model


def require_ready(model: dict[str, Any]) -> None:
    """409 unless the model's prepare job has finished."""
    if model.get("status") != "ready":
        raise ConflictError(
            f"model {model['id']} is {model.get('status')}; it accepts jobs once 'ready'",
            code="model_not_ready",
        )


def _records(records: list[RecordIn], settings: Settings) -> list[dict[str, Any]]:
    if len(records) > settings.max_records:
        raise InvalidInput(
            f"records: at most {settings.max_records} records per request (got {len(records)})"
        )
    return [record.model_dump(mode="json") for record in records]


def forget(
    store: ArtifactStore, queue: JobQueue, settings: Settings, model: dict, req: ForgetRequest
) -> dict[str, Any]:
    """Queue a forget job on base_version (default: the active version)."""
    require_ready(model)
    base = req.base_version or model["active_version"]
    store.get_version(model["id"], base)
    records = _records(req.records, settings)
    job = submit_job(
        store, queue, "forget", model["id"], base, model["id"], base, records,
        req.method, req.hparams,
    )  # fmt: skip
    logger.info(
        "forget job %s queued: model %s, base %s, method %s, %d record(s)",
        job["id"], model["id"], base, req.method, len(records),
    )  # fmt: skip
    return job


def verify(
    store: ArtifactStore,
    queue: JobQueue,
    settings: Settings,
    model: dict,
    version: str,
    req: VerifyRequest,
) -> dict[str, Any]:
    """Queue a verification of `version` against its parent."""
    require_ready(model)
    store.get_version(model["id"], version)
    records = _records(req.records, settings)
    job = submit_job(
        store, queue, "verify", model["id"], version, model["id"], version, records,
        req.reference_texts, req.thresholds.model_dump(mode="json"),
    )  # fmt: skip
    logger.info("verify job %s queued: model %s, version %s", job["id"], model["id"], version)
    return job


def export(store: ArtifactStore, queue: JobQueue, model: dict, version: str) -> dict[str, Any]:
    """Queue the export of `version` as a Hugging Face checkpoint."""
    require_ready(model)
    store.get_version(model["id"], version)
    return submit_job(store, queue, "export", model["id"], version, model["id"], version)


def cancel_job(store: ArtifactStore, queue: JobQueue, job_id: str) -> dict[str, Any]:
    """Cancel a queued job (idempotent); 409 once it runs or has finished."""
    job = store.transition_job(job_id, ["queued"], "cancelled")
    if job is None:
        current = store.get_job(job_id)
        if current["status"] == "cancelled":
            return current
        raise ConflictError(
            f"job {job_id} is {current['status']}; only a queued job can be cancelled",
            code="job_not_cancellable",
        )
    queue.cancel(job_id)
    logger.info("job %s cancelled", job_id)
    return job


def activate(store: ArtifactStore, model: dict, version: str) -> dict[str, Any]:
    """Make `version` the active one (an older one: rollback); returns its manifest."""
    manifest = store.get_version(model["id"], version)
    store.update_model(model["id"], active_version=version)
    logger.info("model %s: version %s is active", model["id"], version)
    return {**manifest, "active": True}


def generate(
    store: ArtifactStore,
    queue: JobQueue,
    settings: Settings,
    model: dict,
    version: str,
    req: GenerateRequest,
) -> dict[str, Any]:
    """Ask a live worker for a continuation of the prompt with `version`."""
    require_ready(model)
    store.get_version(model["id"], version)
    if req.max_new_tokens > settings.max_new_tokens:
        raise InvalidInput(f"max_new_tokens: at most {settings.max_new_tokens}")
    if queue.workers_alive() == 0:
        raise Unavailable(f"no worker is listening on queue {queue.name}", code="no_worker")
    result = queue.generate(model["id"], version, req.prompt, req.max_new_tokens)
    return {"text": str(result.get("text", ""))}
