"""Models: register, list, read, and submit forget requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app import services
from app.auth import Admin, Operator, Viewer
from app.deps import IdempotencyKey, ModelDep, QueueDep, SettingsDep, StoreDep
from app.paging import PAGED, Page, keyset_page, link_next, string_pair
from app.routes.responses import errors
from app.schemas import CreateModel, ForgetRequest, JobAccepted, ModelOut
from app.version_guard import SealOverride, check_usable
from store.enums import JobKind

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    responses=errors(401, 403, 422, 503),
)
def create_model(
    body: CreateModel,
    who: Admin,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
) -> Any:
    """Register a base model as version v0 and queue its prepare job (admin)."""
    model = services.register_model(store, queue, settings, who, body)
    response.headers["Location"] = f"/v1/models/{model['id']}"
    return model


@router.get("", response_model=list[ModelOut], responses={**PAGED, **errors(401, 422)})
def list_models(who: Viewer, store: StoreDep, page: Page, response: Response) -> Any:
    """A page of the registered models the key may see, oldest first (Link: the next)."""
    after = string_pair(page)

    def fetch(n: int) -> list[dict[str, Any]]:
        # a scoped key sees few models: filter the rows it may see, page after page
        found: list[dict[str, Any]] = []
        cursor = after
        while len(found) < n:
            rows = store.list_models(limit=n, after=cursor)
            found.extend(m for m in rows if who.allows_model(m["id"]))
            if len(rows) < n:
                break
            cursor = (rows[-1].get("created_at") or "", rows[-1]["id"])
        return found[:n]

    chosen, next_key = keyset_page(fetch, lambda m: [m.get("created_at") or "", m["id"]],
                                   page)
    link_next(response, page, next_key)
    return chosen


@router.get("/{model_id}", response_model=ModelOut, responses=errors(401, 403, 404))
def get_model(who: Viewer, model: ModelDep) -> Any:
    """One model."""
    return model


@router.post(
    "/{model_id}/forget",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(401, 403, 404, 409, 413, 422, 503),
)
def forget(
    body: ForgetRequest,
    who: Operator,
    model: ModelDep,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    override_seal_reason: SealOverride = None,
) -> Any:
    """Queue a forget job (operator); its result names the new version."""
    if body.base_version is not None:  # the head is followed as it is (README: sealing)
        check_usable(store, who, model["id"], body.base_version, JobKind.FORGET,
                     override_seal_reason)
    job = services.forget(store, queue, settings, who, model, body, idempotency_key)
    response.headers["Location"] = services.job_links(job["id"])["job"]
    return services.accepted(job)
