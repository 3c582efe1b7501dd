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
    """Redis answers, the store is writable and at least one worker is alive."""
    checks: dict[str, Any] = {"redis": "ok", "store": "ok", "workers": 0, "queue": queue.name}
    checks["auth"] = "enabled" if settings.auth_enabled else (
        "DISABLED: development only, anyone can call the API"
    )
    reasons = []
    try:
        queue.ping()
        checks["workers"] = queue.workers_alive()
        if checks["workers"] == 0:
            reasons.append(f"no worker is listening on queue {queue.name}")
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
