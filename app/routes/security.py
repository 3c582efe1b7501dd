"""API keys (admin) and the audit trail (admin); receipts and checkpoints: routes.receipts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from app.auth import Admin, Viewer
from app.checkpoints import verify_checkpoints
from app.deps import SettingsDep, StoreDep
from app.errors import ConflictError
from app.paging import PAGED, Page, after_cursor, link_next, seq_after
from app.routes.responses import errors
from app.schemas_security import (
    AuditPage,
    AuditVerification,
    CreateKey,
    KeyCreated,
    KeyOut,
    WhoAmI,
)
from app.signing import ReceiptKeys

router = APIRouter(tags=["security"])
KeyId = Annotated[str, Path(description="Key id, e.g. k-0123456789abcdef")]


@router.post(
    "/v1/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=errors(401, 403, 422),
)
def create_key(body: CreateKey, who: Admin, store: StoreDep) -> Any:
    """Create an API key; `key` is in this answer only (the store keeps its hash)."""
    doc, token = store.keys.create(body.role, body.models, created_by=who.key_id)
    store.audit.append(who.key_id, "key.created", ids={"key": doc["id"]},
                       detail={"role": doc["role"], "models": doc["models"]})
    return {**doc, "key": token}


@router.get("/v1/keys/me", response_model=WhoAmI, responses=errors(401))
def who_am_i(who: Viewer) -> Any:
    """The calling key: its id, role and model scope (what the dashboard may offer)."""
    models = sorted(who.models) if who.models is not None else None
    return {"id": who.key_id, "role": who.role, "models": models}


@router.get("/v1/keys", response_model=list[KeyOut], responses={**PAGED, **errors(401, 403, 422)})
def list_keys(who: Admin, store: StoreDep, page: Page, response: Response) -> Any:
    """A page of the keys (never the secret nor its hash), oldest first (Link: the next)."""
    chosen, next_key = after_cursor(store.keys.list(),
                                    lambda k: [k.get("created_at") or "", k["id"]], page)
    link_next(response, page, next_key)
    return chosen


@router.delete("/v1/keys/{key_id}", response_model=KeyOut,
               responses=errors(401, 403, 404, 409))
def revoke_key(key_id: KeyId, who: Admin, store: StoreDep) -> Any:
    """Revoke a key: it fails with 401 from the next request on. Idempotent (audited
    once); 409 `last_admin_key` for the only live admin key."""
    doc = store.keys.get(key_id)
    if doc["role"] == "admin" and not doc.get("revoked_at") and \
            store.keys.live_admins() == (key_id,):
        raise ConflictError(f"key {key_id} is the last admin key: create another admin key "
                            "before revoking it", code="last_admin_key")
    doc, revoked = store.keys.revoke_once(key_id)
    if revoked:
        store.audit.append(who.key_id, "key.revoked", ids={"key": key_id})
    return doc


@router.get("/v1/audit", response_model=AuditPage,
            responses={**PAGED, **errors(401, 403, 422)})
def audit_page(
    who: Admin,
    store: StoreDep,
    page: Page,
    response: Response,
    after: int = Query(0, ge=0, description="Entries with a seq above this (or: cursor)"),
) -> Any:
    """A page of the audit trail, oldest first (Link and next_after: the next)."""
    items, next_after = store.audit.page(seq_after(page, after), page.limit)
    link_next(response, page, [next_after] if next_after is not None else None)
    return {"items": items, "next_after": next_after}


@router.get("/v1/audit/verify", response_model=AuditVerification, responses=errors(401, 403))
def audit_verify(who: Admin, store: StoreDep, settings: SettingsDep) -> Any:
    """Check the hash chain, then the trail against every signed checkpoint; the first
    broken entry is named."""
    chain = store.audit.verify()
    signed = verify_checkpoints(store, ReceiptKeys(settings, store).jwks())
    if chain["valid"] and not signed["valid"]:
        chain = {**chain, "valid": False, "head": None, "broken_at": signed["broken_at"],
                 "reason": signed["reason"]}
    return {**chain, "checkpoints": signed["checkpoints"]}
