"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app.deps import QueueDep, SettingsDep, StoreDep
from app.errors import error_body
from store import StoreError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; the message lists why"}})
def readyz(store: StoreDep, queue: QueueDep, settings: SettingsDep) -> Any:
    """Redis answers and the store is writable: this process can accept requests.

    Workers are reported (`checks.workers`), not required: they scale to zero and roll
    independently, and an API process without a worker still accepts and queues jobs.
    """
    checks: dict[str, Any] = {"redis": "ok", "store": "ok", "queue": queue.name,
                              "workers": {"alive": None, "interactive": None}}
    checks["auth"] = "enabled" if settings.auth_enabled else (
        "DISABLED: development only, anyone can call the API"
    )
    reasons = []
    try:
        queue.ping()
        checks["workers"] = {"alive": queue.workers_alive(),
                             "interactive": queue.workers_alive(interactive=True)}
    except RedisError as exc:
        checks["redis"] = "unreachable"
        reasons.append(f"Redis is unreachable ({type(exc).__name__})")
    try:
        store.check_writable()
    except (StoreError, OSError):
        checks["store"] = "not writable"
        reasons.append("the artifact store is not writable")
    if reasons:
        body = error_body("not_ready", "; ".join(reasons), checks=checks)
        return JSONResponse(status_code=503, content=body)
    return {"status": "ready", "checks": checks}


@router.get("/readyz/workers",
            responses={503: {"description": "No worker listens on the queue"}})
def workers_ready(queue: QueueDep) -> Any:
    """Workers alive on this device class's queues (503 with none): for alerts and
    dashboards, not for the API's own readiness probe."""
    try:
        alive = queue.workers_alive()
        interactive = queue.workers_alive(interactive=True)
    except RedisError as exc:
        body = error_body("not_ready", f"Redis is unreachable ({type(exc).__name__})")
        return JSONResponse(status_code=503, content=body)
    workers = {"alive": alive, "interactive": interactive, "queue": queue.name,
               "interactive_queue": queue.interactive.name}
    if alive == 0:
        body = error_body("no_worker", f"no worker is listening on queue {queue.name}",
                          workers=workers)
        return JSONResponse(status_code=503, content=body)
    return {"status": "ready", "workers": workers}
