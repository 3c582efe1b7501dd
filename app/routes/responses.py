"""OpenAPI descriptions of the error responses routes can give."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorBody

_TEXT = {
    401: "No valid API key (send 'Authorization: Bearer <key>')",
    403: "The key's role or model scope does not allow this call",
    413: "The request body is too large",
    404: "Unknown model, version or job",
    409: "Conflict (model not ready, job no longer cancellable)",
    422: "Invalid input; the message names the field",
    502: "The worker failed",
    503: "Queue or store unavailable, or no worker alive",
    504: "No worker answered in time",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the given error statuses, all with the error shape."""
    return {s: {"model": ErrorBody, "description": _TEXT[s]} for s in statuses}
