"""Retiring versions (admin): delete a version's files, compact a version into one patch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app import services
from app.auth import Admin
from app.deps import ModelDep, QueueDep, StoreDep, Version
from app.routes.responses import errors
from app.schemas import JobAccepted, VersionOut
from app.version_admin import delete_version, queue_compaction
from app.version_guard import SealOverride, with_state

router = APIRouter(prefix="/v1/models/{model_id}/versions", tags=["versions"])


@router.delete("/{version}", response_model=VersionOut, responses=errors(401, 403, 404, 409))
def delete(who: Admin, model: ModelDep, version: Version, store: StoreDep) -> Any:
    """Delete a version's patch and exports (admin); its manifest stays, marked deleted."""
    manifest = delete_version(store, who, model, version)
    return with_state(manifest, model, store.lifecycle.read(model["id"]))


@router.post(
    "/{version}/compact",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(401, 403, 404, 409, 503),
)
def compact(
    who: Admin,
    model: ModelDep,
    version: Version,
    store: StoreDep,
    queue: QueueDep,
    response: Response,
    override_seal_reason: SealOverride = None,
) -> Any:
    """Queue the rewrite of this version as one patch from v0 (admin)."""
    job = queue_compaction(store, queue, who, model, version, override_seal_reason)
    response.headers["Location"] = services.job_links(job["id"])["job"]
    return services.accepted(job)
