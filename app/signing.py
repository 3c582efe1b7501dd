"""The Ed25519 keys that sign deletion receipts and audit checkpoints.

Private keys are 32-byte Ed25519 seeds: ZEROUNLEARN_RECEIPT_KEY (64 hex digits) when set,
else store secrets `secrets/receipt-ed25519-NNNN.key`, made on first use; the highest
number signs, and rotating adds the next one. Every key that ever signs has its public
JWK (RFC 8037) kept under `receipts/keys/{kid}.json`, so the JWKS served at
GET /v1/receipts/keys lists retired keys too, and what they signed still verifies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.errors import ConflictError
from app.settings import Settings
from client.receipts_verify import ALG, b64url, canonical, public_jwk
from store import ArtifactStore, utc_now
from store.secretfiles import SECRETS_DIR

SECRET_PREFIX = "receipt-ed25519-"
"""Store secret names of generated keys: receipt-ed25519-0001, -0002, ..."""
PUBLIC_KEYS = "receipts/keys/"
"""Store prefix of the public JWKs of every key that has signed."""
JWK_MEMBERS = ("kty", "crv", "x", "kid", "alg", "use")
_NUMBER = re.compile(rf"^{SECRETS_DIR}/{SECRET_PREFIX}(\d+)\.key$")


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    jwk: dict[str, str]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        private = Ed25519PrivateKey.from_private_bytes(seed)
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private, public_jwk(raw))

    def sign(self, body: dict[str, Any]) -> dict[str, str]:
        """{"alg", "kid", "value"}: Ed25519 over the RFC 8785 canonical JSON of body."""
        return {"alg": ALG, "kid": self.kid, "value": b64url(self.private.sign(canonical(body)))}


class ReceiptKeys:
    """The key ring of one store. Cheap to make; reads the store on each call, so a
    rotation by any process is seen by the next signature of every process."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.settings, self.store = settings, store

    def _generated(self) -> list[int]:
        keys = self.store.backend.list_keys(f"{SECRETS_DIR}/{SECRET_PREFIX}")
        return sorted(int(m.group(1)) for k in keys if (m := _NUMBER.match(k)))

    @staticmethod
    def _name(number: int) -> str:
        return f"{SECRET_PREFIX}{number:04d}"

    def current(self) -> SigningKey:
        """The key that signs now (registered in the public key set)."""
        configured = self.settings.receipt_key
        if configured is not None:
            key = SigningKey.from_seed(bytes.fromhex(configured.get_secret_value()))
        else:
            numbers = self._generated()
            key = SigningKey.from_seed(self.store.secret(self._name(numbers[-1] if numbers
                                                                    else 1)))
        self._register(key)
        return key

    def rotate(self) -> SigningKey:
        """Make the next generated key the signing one; 409 when the key is configured."""
        if self.settings.receipt_key is not None:
            raise ConflictError("the receipt key is set by ZEROUNLEARN_RECEIPT_KEY: rotate it "
                                "by changing that setting", code="receipt_key_configured")
        self.current()  # the key being retired is registered (it may never have signed)
        numbers = self._generated()
        key = SigningKey.from_seed(self.store.secret(self._name((numbers or [0])[-1] + 1)))
        self._register(key)
        return key

    def _register(self, key: SigningKey) -> None:
        name = f"{PUBLIC_KEYS}{key.kid}.json"
        if self.store.backend.read(name) is None:
            doc = {**key.jwk, "created_at": utc_now()}
            self.store.backend.put_if_absent(name, json.dumps(doc, sort_keys=True).encode())

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """Every public key that has signed (RFC 7517 JWK Set): the current one first,
        then the retired ones, newest first."""
        current = self.current()
        retired = []
        for name in self.store.backend.list_keys(PUBLIC_KEYS):
            blob = self.store.backend.read(name)
            if blob is not None:
                retired.append(json.loads(blob.data))
        retired.sort(key=lambda doc: doc.get("created_at") or "", reverse=True)
        keys = [current.jwk] + [{k: doc[k] for k in JWK_MEMBERS} for doc in retired
                                if doc["kid"] != current.kid]
        return {"keys": keys}

    def sign(self, body: dict[str, Any]) -> dict[str, str]:
        return self.current().sign(body)
