"""create_app: the FastAPI application, its state on app.state (no module globals)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.errors import install_error_handlers
from app.gate import RequestGate
from app.limits import BodySizeLimit
from app.metrics_jobs import JobTally
from app.observability import RequestContext, ServiceCollector, metrics_registry
from app.queue import JobQueue, connect_redis
from app.ratelimit import RateLimiter
from app.reconciler import Reconciler
from app.routes import api_router
from app.routes.observe import STATIC_DIR
from app.security_headers import SecurityHeaders
from app.settings import Settings, load_settings
from store import ArtifactStore, StoreError
from store.sql.startup import prepare_database

logger = logging.getLogger(__name__)

DESCRIPTION = """\
On-demand forgetting in language models (ZeroUnlearn). Register a model, submit
forget requests (202 + a job to poll), and get a new immutable version of the
weights; verify, activate (roll back), generate with and export any version.

Errors are always `{"error": {"code", "message"}}`: 404 unknown model, version or
job; 408 a body sent too slowly; 409 conflicts; 413 a body too large; 422 invalid input
(the message names the field); 429 a rate limit reached (`Retry-After` says when to
retry); 503 queue or store unavailable; 504 no worker answered in time. Request text
(prompts, answers) is never logged, stored or echoed.

Every /v1 call but `GET /v1/receipts/keys` (the public keys that check receipts offline)
needs an API key, `Authorization: Bearer <key>` (401 without a valid one,
403 when its role or model scope does not allow the call): viewer reads; operator also
submits forget, verify, export and generate requests; admin also registers models,
activates versions, manages keys and reads the audit trail.
"""
AUTH_DISABLED_WARNING = (
    "AUTHENTICATION IS DISABLED (ZEROUNLEARN_AUTH=disabled): anyone who can reach this "
    "API can submit, read and roll back everything. Development only."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for `settings` (default: from the environment)."""
    settings = settings or load_settings()
    redis = connect_redis(settings)
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    store = ArtifactStore.open(settings.data_dir, settings.store_url,
                               s3_endpoint_url=settings.s3_endpoint_url,
                               database_url=database_url)
    prepare_database(store)  # migrate; refuse an old data directory not imported yet
    queue = JobQueue(redis, settings)
    reconciler = Reconciler(store, queue, settings)
    job_tally = JobTally(store)  # the job metrics, refreshed off the request path

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _bootstrap_auth(settings, store)
        reconciler.start()
        job_tally.start()
        logger.info("API ready: store %s, queue %s", store.describe(), settings.queue_name)
        yield
        job_tally.stop()
        reconciler.stop()
        redis.close()
        store.close()

    app = FastAPI(
        title="ZeroUnlearn service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.redis = redis
    app.state.queue = queue
    app.state.reconciler = reconciler
    app.state.job_tally = job_tally
    registry, request_metrics = metrics_registry(ServiceCollector(store, queue, job_tally))
    app.state.metrics_registry = registry
    limiter = RateLimiter(redis, settings.rate_limit_per_key, settings.rate_limit_per_address)
    install_error_handlers(app)
    app.include_router(api_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestGate, store=store, limiter=limiter,  # before any body byte
                       auth=settings.auth_enabled)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext, metrics=request_metrics)  # outermost: sees 413s
    return app


def _bootstrap_auth(settings: Settings, store: ArtifactStore) -> None:
    """Say loudly when auth is off; register the configured admin token's hash."""
    if not settings.auth_enabled:
        logger.warning(AUTH_DISABLED_WARNING)
        return
    if settings.admin_token is None:
        logger.warning("ZEROUNLEARN_ADMIN_TOKEN is not set: only keys already in the store "
                       "are accepted")
        return
    try:
        doc = store.keys.ensure_bootstrap(settings.admin_token.get_secret_value())
    except (StoreError, OSError) as exc:
        logger.error("could not register the admin token: %s", exc)
        return
    logger.info("bootstrap admin key %s is active", doc["id"])
