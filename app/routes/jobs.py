"""Jobs: status, listing, cancellation and deletion receipts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app import services
from app.auth import Operator, Viewer
from app.deps import JobId, QueueDep, SettingsDep, StoreDep
from app.receipts import build_receipt
from app.routes.responses import errors
from app.schemas import JobOut, JobStatus
from app.schemas_receipts import Receipt
from app.signing import ReceiptKeys

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut], responses=errors(401))
def list_jobs(
    who: Viewer,
    store: StoreDep,
    model_id: str | None = Query(None, max_length=64, description="Only this model's jobs"),
    status: JobStatus | None = Query(None, description="Only jobs in this status"),
) -> Any:
    """Job documents of the models the key may see, oldest first."""
    jobs = store.list_jobs(model_id=model_id)
    return [
        j for j in jobs
        if (status is None or j.get("status") == status) and who.allows_model(j["model_id"])
    ]  # fmt: skip


@router.get("/{job_id}", response_model=JobOut, responses=errors(401, 403, 404))
def get_job(job_id: JobId, who: Viewer, store: StoreDep) -> Any:
    """One job: status, progress, result or error."""
    return services.get_job(store, who, job_id)


@router.delete("/{job_id}", response_model=JobOut, responses=errors(401, 403, 404, 409))
def cancel_job(job_id: JobId, who: Operator, store: StoreDep, queue: QueueDep) -> Any:
    """Cancel a queued job (operator; 409 once it runs or has finished)."""
    return services.cancel_job(store, queue, who, job_id)


@router.get("/{job_id}/receipt", response_model=Receipt, responses=errors(401, 403, 404, 409))
def get_receipt(job_id: JobId, who: Viewer, store: StoreDep, settings: SettingsDep) -> Any:
    """The signed deletion receipt of a succeeded forget job (409 for any other job)."""
    job = services.get_job(store, who, job_id)
    return build_receipt(store, ReceiptKeys(settings, store), job)
