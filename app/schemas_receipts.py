"""Bodies of the receipt and checkpoint endpoints: JWKS, signed receipts, checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from client.receipts_verify import CHECKPOINT_TYPE, RECEIPT_TYPE

B64Url = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=128)]


class Jwk(BaseModel):
    """An Ed25519 public key (RFC 8037); kid is its RFC 7638 thumbprint."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: B64Url
    kid: B64Url
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class Jwks(BaseModel):
    """Every key that signed receipts or checkpoints: the current one first."""

    keys: list[Jwk]


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alg: Literal["EdDSA"]
    kid: B64Url = Field(description="RFC 7638 thumbprint of the signing key (see the JWKS)")
    value: B64Url = Field(description="Ed25519 signature over the RFC 8785 canonical JSON "
                                      "of the signed object, base64url without padding")


AUDIT_REF: dict[str, Any] = {"seq": 42, "hash": "5e" * 32}


class Receipt(BaseModel):
    """A signed deletion receipt: `receipt` is what was done, `signature` vouches for it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "receipt": {
                        "type": RECEIPT_TYPE,
                        "request_id": "j-0123456789abcdef",
                        "model_id": "m-0123456789ab",
                        "base_version": "v0",
                        "version": "v1",
                        "record_hashes": ["9f86d081884c7d65" * 4],
                        "patch_sha256": "2c26b46b68ffc68f" * 4,
                        "verification": {"after": {"efficacy": 0.0}},
                        "issued_at": "2025-01-31T12:00:40.000Z",
                        "audit_entry": AUDIT_REF,
                    },
                    "signature": {"alg": "EdDSA", "kid": "A" * 43, "value": "A" * 86},
                }
            ]
        },
    )

    receipt: dict[str, Any] = Field(max_length=64)
    signature: Signature


class ReceiptCheck(BaseModel):
    genuine: bool = Field(description="Signed by a key of GET /v1/receipts/keys, unchanged")
    reason: str | None = None
    kid: str | None = Field(None, description="The key that signed it")
    audit_entry_matches: bool | None = Field(
        None, description="The audit entry the receipt names still has the signed hash "
        "(null: not genuine, or the receipt names none)")


class Checkpoint(BaseModel):
    """A signed audit head: `checkpoint` {type, seq, hash, time}, `signature`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "checkpoint": {"type": CHECKPOINT_TYPE, **AUDIT_REF,
                                   "time": "2025-01-31T13:00:00.000Z"},
                    "signature": {"alg": "EdDSA", "kid": "A" * 43, "value": "A" * 86},
                }
            ]
        }
    )

    checkpoint: dict[str, Any]
    signature: Signature


class CheckpointPage(BaseModel):
    items: list[Checkpoint]
    next_after: int | None = Field(None, description="Pass as ?after= for the next page.")
