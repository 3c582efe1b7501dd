"""Jobs: status, listing, cancellation and deletion receipts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Response

from app import services
from app.auth import Operator, Viewer
from app.deps import JobId, QueueDep, SettingsDep, StoreDep
from app.paging import PAGED, Page, keyset_page, link_next, string_pair
from app.receipts import build_receipt
from app.routes.responses import errors
from app.schemas import JobKind, JobOut, JobStatus
from app.schemas_receipts import Receipt
from app.signing import ReceiptKeys

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut], responses={**PAGED, **errors(401, 422)})
def list_jobs(
    who: Viewer,
    store: StoreDep,
    page: Page,
    response: Response,
    model_id: str | None = Query(None, max_length=64, description="Only this model's jobs"),
    status: JobStatus | None = Query(None, description="Only jobs in this status"),
    kind: JobKind | None = Query(None, description="Only jobs of this kind"),
    order: Literal["asc", "desc"] = Query("asc", description="asc: oldest first; desc: "
                                          "newest first"),
) -> Any:
    """A page of the jobs of the models the key may see, oldest first unless
    order=desc (Link: the next page)."""
    after = string_pair(page)
    chosen, next_key = keyset_page(
        lambda n: store.list_jobs(model_id, status=status, kind=kind, limit=n, after=after,
                                  models=who.models, descending=order == "desc"),
        lambda job: [job.get("created_at") or "", job["id"]], page)
    link_next(response, page, next_key)
    return chosen


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
