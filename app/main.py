"""create_app: the FastAPI application, its state on app.state (no module globals)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.queue import JobQueue, connect_redis
from app.routes import api_router
from app.settings import Settings, load_settings
from store import ArtifactStore

logger = logging.getLogger(__name__)

DESCRIPTION = """\
On-demand forgetting in language models (ZeroUnlearn). Register a model, submit
forget requests (202 + a job to poll), and get a new immutable version of the
weights; verify, activate (roll back), generate with and export any version.

Errors are always `{"error": {"code", "message"}}`: 404 unknown model, version or
job; 409 conflicts; 422 invalid input (the message names the field); 503 queue or
store unavailable; 504 no worker answered in time. Request text (prompts, answers)
is never logged, stored or echoed.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for `settings` (default: from the environment)."""
    settings = settings or load_settings()
    redis = connect_redis(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("API ready: store %s, queue %s", settings.data_dir, settings.queue_name)
        yield
        redis.close()

    app = FastAPI(
        title="ZeroUnlearn service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = ArtifactStore(settings.data_dir)
    app.state.redis = redis
    app.state.queue = JobQueue(redis, settings)
    install_error_handlers(app)
    app.include_router(api_router)
    return app
