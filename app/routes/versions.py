"""Versions of a model: manifests, activation (rollback), verify, generate, export."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app import services
from app.auth import Admin, Operator, Viewer
from app.deps import IdempotencyKey, ModelDep, QueueDep, SettingsDep, StoreDep, Version
from app.paging import PAGED, Page, keyset_page, link_next, seq_after
from app.routes.responses import errors
from app.schemas import GenerateOut, GenerateRequest, JobAccepted, VerifyRequest, VersionOut
from app.version_guard import SealOverride, check_usable, with_state
from store.enums import JobKind

router = APIRouter(prefix="/v1/models/{model_id}/versions", tags=["versions"])


def _accepted(job: dict[str, Any], response: Response) -> dict[str, Any]:
    response.headers["Location"] = services.job_links(job["id"])["job"]
    return services.accepted(job)


@router.get("", response_model=list[VersionOut],
            responses={**PAGED, **errors(401, 403, 404, 422)})
def list_versions(
    who: Viewer, model: ModelDep, store: StoreDep, page: Page, response: Response
) -> Any:
    """A page of the model's versions, v0 first (Link: the next); reads only the page's
    manifests."""
    after = seq_after(page, -1)
    manifests, next_key = keyset_page(
        lambda n: store.list_versions(model["id"], limit=n,
                                      after=after if after >= 0 else None),
        lambda m: [int(m["id"][1:])], page)
    lifecycle = store.lifecycle.read(model["id"])
    link_next(response, page, next_key)
    return [with_state(manifest, model, lifecycle) for manifest in manifests]


@router.get("/{version}", response_model=VersionOut, responses=errors(401, 403, 404))
def get_version(who: Viewer, model: ModelDep, version: Version, store: StoreDep) -> Any:
    """One version's manifest, with its state (active, sealed, deleted, compacted)."""
    manifest = store.get_version(model["id"], version)
    return with_state(manifest, model, store.lifecycle.read(model["id"]))


@router.post(
    "/{version}/activate", response_model=VersionOut, responses=errors(401, 403, 404, 409)
)
def activate(
    who: Admin, model: ModelDep, version: Version, store: StoreDep,
    override_seal_reason: SealOverride = None,
) -> Any:
    """Make this version active (admin); activating an older one is the rollback."""
    check_usable(store, who, model["id"], version, "activate", override_seal_reason)
    manifest = services.activate(store, who, model, version)
    now = {**model, "active_version": version}
    return with_state(manifest, now, store.lifecycle.read(model["id"]))


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
    override_seal_reason: SealOverride = None,
) -> Any:
    """Queue a verification job (operator); its result is the report."""
    check_usable(store, who, model["id"], version, JobKind.VERIFY, override_seal_reason)
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
    override_seal_reason: SealOverride = None,
) -> Any:
    """Generate a continuation with this version (answered by a worker, or 504)."""
    check_usable(store, who, model["id"], version, JobKind.GENERATE, override_seal_reason)
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
    override_seal_reason: SealOverride = None,
) -> Any:
    """Queue an export job (operator); result.path is a loadable Hugging Face checkpoint."""
    check_usable(store, who, model["id"], version, JobKind.EXPORT, override_seal_reason)
    return _accepted(services.export(store, queue, who, model, version), response)
