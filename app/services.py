"""What the routes do, between the store and the queue; routes stay one call thick.

Order matters for durability: Redis is pinged before anything is written, the job
document is written before the job is enqueued (so a worker always finds it), and a
job that could not be enqueued is marked failed rather than left "queued".
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from redis.exceptions import RedisError

from app.auth import Principal
from app.callbacks import check_callback_url
from app.errors import ConflictError, InvalidInput, Unavailable, WorkerFailed
from app.hparams import check_hparams
from app.quality_gate import LOOSENED, requested_gate
from app.queue import JobQueue
from app.schemas import CreateModel, ForgetRequest, GenerateRequest, RecordIn, VerifyRequest
from app.settings import Settings
from app.sources import check_edit_layers, inspect_source
from app.submission import QUEUE_DOWN, Submission, submit_job
from store import ArtifactStore, NotFound
from store.datakeys import GENERATE_ANSWER, GENERATE_PROMPT, SealBroken
from store.enums import JobKind, JobStatus, ModelStatus

logger = logging.getLogger(__name__)

def job_links(job_id: str) -> dict[str, str]:
    return {"job": f"/v1/jobs/{job_id}"}


def accepted(job: dict[str, Any]) -> dict[str, Any]:
    """Body of a 202: the job id, its status and where to poll it."""
    return {"job_id": job["id"], "status": job["status"], "links": job_links(job["id"])}


def register_model(
    store: ArtifactStore, queue: JobQueue, settings: Settings, who: Principal, req: CreateModel
) -> dict[str, Any]:
    """Validate the source, record the model and its v0, and queue its prepare job."""
    info = inspect_source(req.source, settings.model_root_paths)
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
            "status": ModelStatus.PREPARING,
        }
    )
    store.publish_version(model["id"], {"parent": None, "method": None}, None)
    store.audit.append(who.key_id, "model.registered", ids={"model": model["id"]},
                       detail={"source_kind": _source_kind(info.source)})
    try:
        job = submit_job(
            store, queue, who, Submission(JobKind.PREPARE, model["id"], "v0", (model["id"],))
        )
    except RedisError:
        store.update_model(model["id"], status=ModelStatus.FAILED, error=QUEUE_DOWN)
        raise
    model = store.update_model(model["id"], prepare_job_id=job["id"])
    logger.info("model %s registered; prepare job %s queued", model["id"], job["id"])
    return model


def _source_kind(source: str) -> str:
    return "builtin" if source.startswith("builtin:") else (
        "gguf" if source.endswith(".gguf") else "directory"
    )


def require_ready(model: dict[str, Any]) -> None:
    """409 unless the model's prepare job has finished."""
    if model.get("status") != ModelStatus.READY:
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
    store: ArtifactStore,
    queue: JobQueue,
    settings: Settings,
    who: Principal,
    model: dict,
    req: ForgetRequest,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Queue a forget job on base_version, or (none given) on the model's head.

    Without base_version the job follows the head: the worker builds on the version that
    is active when the job runs (under the model's edit lock), so requests queued
    together each keep the deletions of the ones before. Until then the job's `version`
    is the active version at submission; its `base` says which rule applies.
    """
    require_ready(model)
    check_hparams(model, req.method, req.hparams)
    gate, loosened = requested_gate(settings, who, req.quality_gate)
    base = req.base_version or model["active_version"]
    store.get_version(model["id"], base)
    records = _records(req.records, settings)
    callback = check_callback_url(req.callback_url, settings) if req.callback_url else None
    # the gate travels only when the request has one: (..., hparams[, quality_gate])
    args = (model["id"], base, records, req.method, req.hparams, *([gate] if gate else []))
    mode = "explicit" if req.base_version else "active"
    sub = Submission(
        JobKind.FORGET, model["id"], base, args, tuple(store.record_hashes(records)), callback,
        req.model_dump(mode="json"), {"base": mode},
        audits=((LOOSENED, loosened),) if loosened else (),
    )  # fmt: skip
    job = submit_job(store, queue, who, sub, idempotency_key)
    logger.info(
        "forget job %s queued: model %s, base %s (%s), method %s, %d record(s)",
        job["id"], model["id"], base, mode, req.method, len(records),
    )  # fmt: skip
    return job


def verify(
    store: ArtifactStore,
    queue: JobQueue,
    settings: Settings,
    who: Principal,
    model: dict,
    version: str,
    req: VerifyRequest,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Queue a verification of `version` against its parent."""
    require_ready(model)
    store.get_version(model["id"], version)
    records = _records(req.records, settings)
    args = (model["id"], version, records, req.reference_texts,
            req.thresholds.model_dump(mode="json"))  # fmt: skip
    sub = Submission(
        JobKind.VERIFY, model["id"], version, args, tuple(store.record_hashes(records)),
        body={"version": version, **req.model_dump(mode="json")},
    )  # fmt: skip
    job = submit_job(store, queue, who, sub, idempotency_key)
    logger.info("verify job %s queued: model %s, version %s", job["id"], model["id"], version)
    return job


def export(
    store: ArtifactStore, queue: JobQueue, who: Principal, model: dict, version: str
) -> dict[str, Any]:
    """Queue the export of `version` as a Hugging Face checkpoint."""
    require_ready(model)
    store.get_version(model["id"], version)
    sub = Submission(JobKind.EXPORT, model["id"], version, (model["id"], version))
    return submit_job(store, queue, who, sub)


def get_job(store: ArtifactStore, who: Principal, job_id: str) -> dict[str, Any]:
    """A job document, if the caller's scope includes its model; 404 as for an unknown
    job otherwise (a 403 would tell the caller which model the job belongs to)."""
    job = store.get_job(job_id)
    if not who.allows_model(job["model_id"]):
        raise NotFound(f"job {job_id!r} not found", kind="job")
    return job


def cancel_job(
    store: ArtifactStore, queue: JobQueue, who: Principal, job_id: str
) -> dict[str, Any]:
    """Cancel a queued job (idempotent); 409 once it runs or has finished."""
    get_job(store, who, job_id)
    job = store.transition_job(job_id, [JobStatus.QUEUED], JobStatus.CANCELLED)
    if job is None:
        current = store.get_job(job_id)
        if current["status"] == JobStatus.CANCELLED:
            return current
        raise ConflictError(
            f"job {job_id} is {current['status']}; only a queued job can be cancelled",
            code="job_not_cancellable",
        )
    queue.cancel(job_id)
    store.audit.append(who.key_id, "job.cancelled", ids={"job": job_id, "model": job["model_id"]})
    logger.info("job %s cancelled", job_id)
    return job


def activate(store: ArtifactStore, who: Principal, model: dict, version: str) -> dict[str, Any]:
    """Make `version` the active one (an older one: rollback); returns its manifest."""
    manifest = store.get_version(model["id"], version)
    store.update_model(model["id"], active_version=version)
    store.audit.append(who.key_id, "version.activated",
                       ids={"model": model["id"], "version": version},
                       detail={"previous": model.get("active_version")})
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
    if queue.workers_alive(interactive=True) == 0:
        raise Unavailable(f"no worker is listening on queue {queue.interactive.name}",
                          code="no_worker")
    return {"text": _generate_sealed(store, queue, model["id"], version, req)}


def _generate_sealed(
    store: ArtifactStore, queue: JobQueue, model_id: str, version: str, req: GenerateRequest
) -> str:
    """The prompt goes to the worker sealed under a data key of its own, the answer comes
    back sealed under it, and the key is destroyed once answered (or given up on), so
    what Redis and its persistence files keep of either can no longer be read."""
    request_id = f"gen-{uuid.uuid4().hex}"
    keys = store.data_keys
    try:
        prompt = keys.seal(request_id, GENERATE_PROMPT, req.prompt)
        result = queue.generate(request_id, model_id, version, prompt, req.max_new_tokens)
        try:
            text = keys.unseal(request_id, GENERATE_ANSWER, result.get("text"))
        except SealBroken:
            raise WorkerFailed("the worker's answer could not be opened") from None
    finally:
        keys.destroy(request_id)
    return str(text)
