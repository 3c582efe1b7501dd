"""Check a signed deletion receipt (or audit checkpoint) against a JWKS, with no server.

Pure: `cryptography` and `rfc8785`, no web framework, no store. The CLI's
`zerounlearn receipts verify` and the API's POST /v1/receipts/verify both use it.

A signed document is {"<body name>": {...}, "signature": {"alg": "EdDSA", "kid", "value"}}:
`value` is the Ed25519 signature (RFC 8032), base64url without padding, over the RFC 8785
canonical JSON of the body; `kid` is the RFC 7638 thumbprint of the signing key's public
JWK (RFC 8037: kty "OKP", crv "Ed25519"). JSON with a duplicate object key is refused
before anything else: two parsers could read two different receipts from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

RECEIPT_TYPE = "zerounlearn.deletion-receipt/v2"
CHECKPOINT_TYPE = "zerounlearn.audit-checkpoint/v1"
ALG = "EdDSA"
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class InvalidJson(ValueError):
    """Not JSON we accept: malformed, a duplicate object key, NaN or Infinity."""


@dataclass(frozen=True)
class Verdict:
    """The answer: genuine or not, why not, and the key that signed it."""

    genuine: bool
    reason: str | None = None
    kid: str | None = None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object) -> bytes:
    """Strict: only the base64url alphabet, no padding, and canonical (ValueError otherwise).

    Canonical means the unused low bits of the last character are zero, so exactly one
    text decodes to given bytes: a changed last character can never verify the same."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidJson(f"duplicate object key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON")


def parse_strict(text: str | bytes) -> Any:
    """json.loads that refuses duplicate object keys, NaN and Infinity (InvalidJson)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except InvalidJson:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidJson(f"not valid JSON ({type(exc).__name__})") from None


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes; ValueError for what JCS cannot express."""
    return rfc8785.dumps(value)


def thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of an Ed25519 public JWK: sha256 over its required members
    {"crv","kty","x"} in that order, no spaces; base64url."""
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64url(hashlib.sha256(members.encode("ascii")).digest())


def public_jwk(public_key: bytes) -> dict[str, str]:
    """The RFC 8037 JWK of a raw 32-byte Ed25519 public key; kid: its thumbprint."""
    x = b64url(public_key)
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": thumbprint(x), "alg": ALG,
            "use": "sig"}


def find_key(jwks: Any, kid: str) -> Ed25519PublicKey | None:
    """The Ed25519 key of `jwks` whose kid is `kid` AND whose thumbprint is `kid` (a
    mislabelled entry does not count); None when there is none."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kid") != kid:
            continue
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        try:
            raw = b64url_decode(x)
        except ValueError:
            continue
        if len(raw) == PUBLIC_KEY_BYTES and thumbprint(str(x)) == kid:
            return Ed25519PublicKey.from_public_bytes(raw)
    return None


def check_signature(body: Any, signature: Any, jwks: Any) -> Verdict:
    """Is `signature` a valid Ed25519 signature by a key of `jwks` over canonical(body)?"""
    if not isinstance(body, dict) or not isinstance(signature, dict):
        return Verdict(False, "the document must hold two JSON objects")
    kid = signature.get("kid")
    if signature.get("alg") != ALG or not isinstance(kid, str):
        return Verdict(False, f"the signature must be alg {ALG} with a kid")
    if set(signature) != {"alg", "kid", "value"}:
        return Verdict(False, "the signature has unexpected members", kid)
    key = find_key(jwks, kid)
    if key is None:
        return Verdict(False, f"unknown key id {kid} (not in the key set)", kid)
    try:
        value = b64url_decode(signature.get("value"))
    except ValueError:
        return Verdict(False, "the signature value is not base64url", kid)
    if len(value) != SIGNATURE_BYTES:
        return Verdict(False, "the signature value has the wrong length", kid)
    try:
        message = canonical(body)
    except ValueError:
        return Verdict(False, "the document cannot be canonicalised (RFC 8785)", kid)
    try:
        key.verify(value, message)
    except InvalidSignature:
        return Verdict(False, "the signature does not match the content (tampered)", kid)
    return Verdict(True, None, kid)


def check_document(doc: Any, jwks: Any, name: str = "receipt",
                   doc_type: str = RECEIPT_TYPE) -> Verdict:
    """A parsed {name: {...}, "signature": {...}} document: genuine and of `doc_type`?"""
    if not isinstance(doc, dict) or set(doc) != {name, "signature"}:
        return Verdict(False, f"expected exactly the members {name!r} and 'signature'")
    verdict = check_signature(doc[name], doc["signature"], jwks)
    if verdict.genuine and doc[name].get("type") != doc_type:
        return Verdict(False, f"not a {doc_type} document", verdict.kid)
    return verdict


def check_receipt_text(text: str | bytes, jwks: Any) -> Verdict:
    """The whole offline check of a receipt file's text: strict parse, then signature."""
    try:
        doc = parse_strict(text)
    except InvalidJson as exc:
        return Verdict(False, f"refused: {exc}")
    return check_document(doc, jwks)
