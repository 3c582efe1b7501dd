"""Who is calling: API keys (`Authorization: Bearer <key>`), roles and model scopes.

Roles, least powerful first: viewer (read), operator (also submit forget, verify,
export and generate requests, cancel jobs), admin (also register models, activate
versions, manage keys, read the audit trail). A key may be scoped to a set of models;
a call about any other model is 403. A missing, unknown or revoked key is 401.

Routes declare what they need with the `Viewer`, `Operator` and `Admin` dependencies;
a path's `model_id` is checked against the key's scope there, and services check the
model of a job themselves (404 as for an unknown job: a 403 would name its model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Forbidden, Unauthorized
from store import ArtifactStore

ROLES = ("viewer", "operator", "admin")
DISABLED_ACTOR = "auth-disabled"
"""Actor recorded in the audit trail while authentication is switched off."""

CHECKED_KEY = "zerounlearn.api_key"
"""Request state entry (token, key document) left by app.gate, which checks keys first."""
MAX_TOKEN_CHARS = 512

bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer <key>` (POST /v1/keys creates one).",
)


@dataclass(frozen=True)
class Principal:
    """The caller: its key id (the audit trail's actor), role and model scope."""

    key_id: str
    role: str
    models: frozenset[str] | None = None  # None: every model

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def allows_model(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    def check_model(self, model_id: str) -> None:
        """403 unless the key's scope includes the model."""
        if not self.allows_model(model_id):
            raise Forbidden(f"key {self.key_id} is not scoped to model {model_id}")


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller's principal; 401 without a valid key (unless auth is disabled)."""
    if not request.app.state.settings.auth_enabled:
        return Principal(DISABLED_ACTOR, "admin")
    if credentials is None or not credentials.credentials:
        raise Unauthorized("send an API key: 'Authorization: Bearer <key>'")
    token = credentials.credentials
    checked = request.scope.get("state", {}).get(CHECKED_KEY)  # by app.gate, if it did
    if checked is not None and checked[0] == token:
        doc = checked[1]
    else:
        doc = lookup_key(request.app.state.store, token)
    if doc is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    models = doc.get("models")
    return Principal(doc["id"], doc["role"], frozenset(models) if models is not None else None)


def lookup_key(store: ArtifactStore, token: str) -> dict | None:
    """The live key document of `token`; None when unknown, revoked or absurdly long."""
    return store.keys.authenticate(token) if 0 < len(token) <= MAX_TOKEN_CHARS else None


def bearer_token(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` header value, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def allow(role: str):  # type: ignore[no-untyped-def]
    """A dependency: the caller, who must hold `role` (or more) and, when the path names
    a model, be scoped to it."""

    async def dependency(  # no I/O: on the event loop, not a thread-pool hop
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        if not principal.at_least(role):
            raise Forbidden(f"this call needs the {role} role; key {principal.key_id} is "
                            f"{principal.role}")
        model_id = request.path_params.get("model_id")
        if isinstance(model_id, str):
            principal.check_model(model_id)
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(allow("viewer"))]
Operator = Annotated[Principal, Depends(allow("operator"))]
Admin = Annotated[Principal, Depends(allow("admin"))]
