"""Receipt keys (public JWKS, admin rotation), receipt checks and signed audit checkpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.auth import Admin, Viewer
from app.checkpoints import list_checkpoints, make_checkpoint
from app.deps import SettingsDep, StoreDep
from app.errors import InvalidInput, validation_message
from app.paging import PAGED, Page, link_next, seq_after
from app.receipts import check_receipt
from app.routes.responses import errors
from app.schemas_receipts import Checkpoint, CheckpointPage, Jwk, Jwks, Receipt, ReceiptCheck
from app.signing import ReceiptKeys
from client.receipts_verify import InvalidJson, parse_strict

router = APIRouter(tags=["receipts"])
JWKS_CACHE = "public, max-age=300"
"""Receivers may cache the key set briefly; a rotated-in key shows within minutes."""
RECEIPT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}},
    }
}
"""The body of POST /v1/receipts/verify, documented by hand: it is read raw, so that a
duplicate object key can be refused (a JSON parser would silently keep one of them)."""


@router.get("/v1/receipts/keys", response_model=Jwks)
def receipt_keys(response: Response, store: StoreDep, settings: SettingsDep) -> Any:
    """The public keys of receipts and checkpoints as a JWKS (RFC 8037); no API key needed."""
    response.headers["Cache-Control"] = JWKS_CACHE
    return ReceiptKeys(settings, store).jwks()


@router.post("/v1/receipts/keys/rotate", status_code=status.HTTP_201_CREATED,
             response_model=Jwk, responses=errors(401, 403, 409))
def rotate_receipt_key(who: Admin, store: StoreDep, settings: SettingsDep) -> Any:
    """Sign from now on with a new key (admin); old keys stay in the JWKS."""
    keys = ReceiptKeys(settings, store)
    old = keys.current().kid
    new = keys.rotate()
    store.audit.append(who.key_id, "receipt_key.rotated", detail={"kid": new.kid,
                                                                   "previous": old})
    return new.jwk


@router.post("/v1/receipts/verify", response_model=ReceiptCheck, responses=errors(401, 422),
             openapi_extra=RECEIPT_BODY)
async def verify_receipt(
    request: Request, who: Viewer, store: StoreDep, settings: SettingsDep
) -> Any:
    """Is this receipt genuine (signed by a key of the JWKS, unchanged), and is its audit
    entry still in the trail? Duplicate object keys: 422."""
    try:
        doc = parse_strict(await request.body())
    except InvalidJson as exc:
        raise InvalidInput(f"receipt: {exc}", code="invalid_receipt") from None
    try:
        Receipt.model_validate(doc)
    except ValidationError as exc:
        errors = [dict(e) for e in exc.errors()]
        raise InvalidInput(validation_message(errors), code="invalid_receipt") from None
    return await run_in_threadpool(check_receipt, store, ReceiptKeys(settings, store), doc)


@router.get("/v1/audit/checkpoints", response_model=CheckpointPage,
            responses={**PAGED, **errors(401, 422)})
def audit_checkpoints(
    who: Viewer,
    store: StoreDep,
    page: Page,
    response: Response,
    after: int = Query(0, ge=0, description="Checkpoints of a seq above this (or: cursor)"),
) -> Any:
    """Signed audit heads, oldest first (any key: they hold no entry's content; Link and
    next_after: the next page)."""
    items, next_after = list_checkpoints(store, seq_after(page, after), page.limit)
    link_next(response, page, [next_after] if next_after is not None else None)
    return {"items": items, "next_after": next_after}


@router.post("/v1/audit/checkpoints", response_model=Checkpoint, status_code=201,
             responses={200: {"model": Checkpoint,
                              "description": "The head did not move: its checkpoint"},
                        **errors(401, 403, 409)})
def make_audit_checkpoint(
    response: Response, who: Admin, store: StoreDep, settings: SettingsDep
) -> Any:
    """Sign the audit trail's head now (admin); 409 when the chain is broken."""
    doc, new = make_checkpoint(store, ReceiptKeys(settings, store))
    if not new:
        response.status_code = status.HTTP_200_OK
    return doc
