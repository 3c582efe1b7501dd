"""Typed dependencies: the app's state and the model a path names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request

from app.queue import JobQueue
from app.settings import Settings
from store import ArtifactStore


# Plain attribute reads: `async def` so FastAPI runs them on the event loop instead of
# sending each through the thread pool (one thread hop per sync dependency).
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]

ModelId = Annotated[str, Path(description="Model id, e.g. m-0123456789ab")]
Version = Annotated[str, Path(description="Version id, e.g. v0")]
JobId = Annotated[str, Path(description="Job id, e.g. j-0123456789abcdef")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Retrying with the same key and body returns the same job (409 with "
        "another body).",
    ),
]


def get_model(model_id: ModelId, store: StoreDep) -> dict[str, Any]:
    """The model document named by the path (404 when unknown)."""
    return store.get_model(model_id)


ModelDep = Annotated[dict[str, Any], Depends(get_model)]
