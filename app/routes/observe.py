"""/metrics (Prometheus text format) and the dashboard's static files at /."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""The dashboard: plain HTML, CSS and JavaScript modules, no build step."""


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus metrics: this process's HTTP counters; jobs, queue, workers from Redis
    and the store (open, like /healthz: counts and ids only, never request text)."""
    body = generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
def dashboard() -> FileResponse:
    """The dashboard's single page."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/ui", include_in_schema=False)
def dashboard_alias() -> RedirectResponse:
    return RedirectResponse("/")
