"""API keys (admin) and the audit trail (admin); receipts and checkpoints: routes.receipts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status

from app.auth import Admin, Viewer
from app.checkpoints import verify_checkpoints
from app.deps import SettingsDep, StoreDep
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


@router.get("/v1/keys", response_model=list[KeyOut], responses=errors(401, 403))
def list_keys(who: Admin, store: StoreDep) -> Any:
    """Every key (never the secret nor its hash), oldest first."""
    return store.keys.list()


@router.delete("/v1/keys/{key_id}", response_model=KeyOut, responses=errors(401, 403, 404))
def revoke_key(key_id: KeyId, who: Admin, store: StoreDep) -> Any:
    """Revoke a key: it fails with 401 from the next request on."""
    doc = store.keys.revoke(key_id)
    store.audit.append(who.key_id, "key.revoked", ids={"key": key_id})
    return doc


@router.get("/v1/audit", response_model=AuditPage, responses=errors(401, 403))
def audit_page(
    who: Admin,
    store: StoreDep,
    after: int = Query(0, ge=0, description="Entries with a seq above this"),
    limit: int = Query(100, ge=1, le=1000),
) -> Any:
    """A page of the audit trail, oldest first."""
    items, next_after = store.audit.page(after, limit)
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
