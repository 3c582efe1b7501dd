"""Models: register, list, read, and submit forget requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app import services
from app.deps import ModelDep, QueueDep, SettingsDep, StoreDep
from app.routes.responses import errors
from app.schemas import CreateModel, ForgetRequest, JobAccepted, ModelOut

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    responses=errors(422, 503),
)
def create_model(body: CreateModel, store: StoreDep, queue: QueueDep, response: Response) -> Any:
    """Register a base model as version v0 and queue its prepare job."""
    model = services.register_model(store, queue, body)
    response.headers["Location"] = f"/v1/models/{model['id']}"
    return model


@router.get("", response_model=list[ModelOut])
def list_models(store: StoreDep) -> Any:
    """All registered models, oldest first."""
    return store.list_models()


@router.get("/{model_id}", response_model=ModelOut, responses=errors(404))
def get_model(model: ModelDep) -> Any:
    """One model."""
    return model


@router.post(
    "/{model_id}/forget",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(404, 409, 422, 503),
)
def forget(
    body: ForgetRequest,
    model: ModelDep,
    store: StoreDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
) -> Any:
    """Queue a forget job; its result names the new version."""
    job = services.forget(store, queue, settings, model, body)
    response.headers["Location"] = services.job_links(job["id"])["job"]
    return services.accepted(job)
