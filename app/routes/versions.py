"""Versions of a model: manifests, activation (rollback), verify, generate, export."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app import services
from app.auth import Admin, Operator, Viewer
from app.deps import IdempotencyKey, ModelDep, QueueDep, SettingsDep, StoreDep, Version
from app.routes.responses import errors
from app.schemas import GenerateOut, GenerateRequest, JobAccepted, VerifyRequest, VersionOut

router = APIRouter(prefix="/v1/models/{model_id}/versions", tags=["versions"])


def _with_active(manifest: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    return {**manifest, "active": manifest["id"] == model["active_version"]}


def _accepted(job: dict[str, Any], response: Response) -> dict[str, Any]:
    response.headers["Location"] = services.job_links(job["id"])["job"]
    return services.accepted(job)


@router.get("", response_model=list[VersionOut], responses=errors(401, 403, 404))
def list_versions(who: Viewer, model: ModelDep, store: StoreDep) -> Any:
    """All versions of the model, v0 first."""
    return [_with_active(m, model) for m in store.list_versions(model["id"])]


@router.get("/{version}", response_model=VersionOut, responses=errors(401, 403, 404))
def get_version(who: Viewer, model: ModelDep, version: Version, store: StoreDep) -> Any:
    """One version's manifest."""
    return _with_active(store.get_version(model["id"], version), model)


@router.post(
    "/{version}/activate", response_model=VersionOut, responses=errors(401, 403, 404)
)
def activate(who: Admin, model: ModelDep, version: Version, store: StoreDep) -> Any:
    """Make this version active (admin); activating an older one is the rollback."""
    return services.activate(store, who, model, version)


@router.post(
    "/{version}/verify",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(401, 403, 404, 409, 413, 422, 503),
)
def verify(
    body: VerifyRequest,
    who: Operator,
    model: ModelDep,
    version: Version,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Queue a verification job (operator); its result is the report."""
    job = services.verify(store, queue, settings, who, model, version, body, idempotency_key)
    return _accepted(job, response)


@router.post(
    "/{version}/generate",
    response_model=GenerateOut,
    responses=errors(401, 403, 404, 409, 413, 422, 502, 503, 504),
)
def generate(
    body: GenerateRequest,
    who: Operator,
    model: ModelDep,
    version: Version,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
) -> Any:
    """Generate a continuation with this version (answered by a worker, or 504)."""
    return services.generate(store, queue, settings, model, version, body)


@router.post(
    "/{version}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(401, 403, 404, 409, 503),
)
def export(
    who: Operator,
    model: ModelDep,
    version: Version,
    store: StoreDep,
    queue: QueueDep,
    response: Response,
) -> Any:
    """Queue an export job (operator); result.path is a loadable Hugging Face checkpoint."""
    return _accepted(services.export(store, queue, who, model, version), response)
