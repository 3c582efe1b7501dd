"""Bodies of the security endpoints: API keys and the audit trail (receipts and
checkpoints: app.schemas_receipts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Role = Literal["viewer", "operator", "admin"]
ModelIdStr = Annotated[str, StringConstraints(pattern=r"^m-[0-9a-f]{12}$")]


class CreateKey(BaseModel):
    """A new API key: its role and, optionally, the models it may act on."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"role": "operator", "models": ["m-0123456789ab"]}]},
    )

    role: Role
    models: list[ModelIdStr] | None = Field(
        None, min_length=1, max_length=100, description="Scope; default: every model."
    )

    @model_validator(mode="after")
    def _admin_unscoped(self) -> CreateKey:
        if self.role == "admin" and self.models is not None:
            raise ValueError("models: admin keys cannot be scoped to models")
        return self


class KeyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "k-0123456789abcdef",
                    "role": "operator",
                    "models": ["m-0123456789ab"],
                    "created_at": "2025-01-31T12:00:00.000Z",
                    "created_by": "k-fedcba9876543210",
                    "revoked_at": None,
                    "bootstrap": False,
                }
            ]
        }
    )

    id: str
    role: Role
    models: list[str] | None = None
    created_at: str
    created_by: str | None = None
    revoked_at: str | None = None
    bootstrap: bool = False


class KeyCreated(KeyOut):
    """The new key; `key` is shown this once and never stored (only its hash is)."""

    key: str


class AuditEntry(BaseModel):
    seq: int
    time: str
    actor: str
    action: str
    ids: dict[str, Any] = Field(default_factory=dict)
    record_hashes: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)
    prev: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_after: int | None = Field(None, description="Pass as ?after= for the next page.")


class AuditVerification(BaseModel):
    valid: bool
    entries: int
    head: str | None = None
    broken_at: int | None = Field(None, description="Line number of the first bad entry "
                                  "(a checkpoint mismatch: the entry's seq).")
    reason: str | None = None
    checkpoints: int = Field(0, description="Signed checkpoints the trail was checked against")


class WhoAmI(BaseModel):
    """The key that made the call (GET /v1/keys/me)."""

    id: str = Field(description="Key id; 'auth-disabled' when authentication is off")
    role: Role
    models: list[str] | None = Field(None, description="Model scope; null: every model")
