"""Jobs: status, listing and cancellation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app import services
from app.deps import JobId, QueueDep, StoreDep
from app.routes.responses import errors
from app.schemas import JobOut, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut])
def list_jobs(
    store: StoreDep,
    model_id: str | None = Query(None, description="Only this model's jobs"),
    status: JobStatus | None = Query(None, description="Only jobs in this status"),
) -> Any:
    """Job documents, oldest first."""
    jobs = store.list_jobs(model_id=model_id)
    return [j for j in jobs if status is None or j.get("status") == status]


@router.get("/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(job_id: JobId, store: StoreDep) -> Any:
    """One job: status, progress, result or error."""
    return store.get_job(job_id)


@router.delete("/{job_id}", response_model=JobOut, responses=errors(404, 409))
def cancel_job(job_id: JobId, store: StoreDep, queue: QueueDep) -> Any:
    """Cancel a queued job (409 once it runs or has finished)."""
    return services.cancel_job(store, queue, job_id)
