"""A model's retain bank: the facts forget edits must keep (add, list, remove, measure)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from app import retain, services
from app.auth import Operator, Viewer
from app.deps import ModelDep, QueueDep, StoreDep
from app.paging import PAGED, Page, after_cursor, link_next
from app.routes.responses import errors
from app.schemas import JobAccepted
from app.schemas_retain import (
    FACT_EXAMPLE,
    MAX_FACTS_PER_REQUEST,
    RetainAdded,
    RetainBankOut,
    RetainFactIn,
    RetainFactOut,
)

router = APIRouter(prefix="/v1/models/{model_id}/retain", tags=["retain"])
FactId = Annotated[str, Path(description="Fact id, e.g. f-0123456789abcdef")]

_BODY = {
    "requestBody": {
        "required": True,
        "description": "Facts as JSON lines (one object a line) or a JSON array.",
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "string"},
                "example": '{"prompt": "The capital of Spain is", "answer": " Madrid", '
                           '"subject": "Spain"}\n',
            },
            "application/json": {
                "schema": {"type": "array", "items": RetainFactIn.model_json_schema(),
                           "minItems": 1, "maxItems": MAX_FACTS_PER_REQUEST},
                "example": [FACT_EXAMPLE],
            },
        },
    }
}


async def raw_body(request: Request) -> bytes:
    """The request body as sent (JSON lines or a JSON array, parsed by app.retain)."""
    return await request.body()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RetainAdded,
    responses=errors(401, 403, 404, 413, 422, 503),
    openapi_extra=_BODY,
)
def add_facts(
    who: Operator,
    model: ModelDep,
    store: StoreDep,
    queue: QueueDep,
    body: Annotated[bytes, Depends(raw_body)],
) -> Any:
    """Add facts the model must keep (operator); a job measures which it knows."""
    return retain.add_facts(store, queue, who, model, retain.parse_facts(body))


@router.get("", response_model=RetainBankOut, response_model_exclude_unset=True,
            responses={**PAGED, **errors(401, 403, 404, 422)})
def list_facts(
    who: Viewer,
    model: ModelDep,
    store: StoreDep,
    page: Page,
    response: Response,
    include_text: Annotated[bool, Query(description="Admin only: also the facts' text "
                                        "(audited).")] = False,
) -> Any:
    """The bank: counts of all facts, and a page of their ids, hashes and statuses,
    oldest first (Link: the next page; text only for an admin who asks)."""
    bank = retain.list_facts(store, who, model, include_text)
    # the bank's own order (facts appended batch by batch): when added, then the place
    # in the batch it came in
    keyed, seen = [], Counter[str]()
    for fact in bank["facts"]:
        added = str(fact.get("added_at") or "")
        keyed.append(([added, seen[added]], fact))
        seen[added] += 1
    chosen, next_key = after_cursor(keyed, lambda pair: pair[0], page)
    link_next(response, page, next_key)
    return {**bank, "facts": [fact for _, fact in chosen]}


@router.post(
    "/measure",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(401, 403, 404, 409, 503),
)
def measure(
    who: Operator, model: ModelDep, store: StoreDep, queue: QueueDep, response: Response
) -> Any:
    """Measure every fact again on the active version (operator), e.g. after a rollback."""
    services.require_ready(model)
    job = retain.measure(store, queue, who, model, "all")
    response.headers["Location"] = services.job_links(job["id"])["job"]
    return services.accepted(job)


@router.delete("/{fact_id}", response_model=RetainFactOut, response_model_exclude_unset=True,
               responses=errors(401, 403, 404))
def remove_fact(who: Operator, model: ModelDep, fact_id: FactId, store: StoreDep) -> Any:
    """Take a fact out of the bank (operator); later edits no longer protect it."""
    return retain.remove_fact(store, who, model, fact_id)
