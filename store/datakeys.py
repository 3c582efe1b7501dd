"""Per-request data keys and sealed request text: shredding by destroying a key.

Request text (forget and verify records, reference texts, generate prompts and answers)
is stored only sealed: AES-256-GCM under a data key of its own request, a random 96-bit
nonce per seal, and associated data that binds the ciphertext to the request and to the
place it belongs ("<request id>/<context>"), so a sealed value moved to another request
or argument does not open.

Data keys live apart from the ciphertext, under secrets/data-keys/{request id}.key
(locally 0700/0600, like every secret), each wrapped (envelope) with the installation's
master key secrets/data-key-master.key. Destroying a request's data key is the purge:
every copy of its ciphertext, wherever it was left (backups of requests/, S3 object
versions, Redis persistence files, file-system journals), can no longer be opened,
whether or not the master key survives. The master key alone opens nothing.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from store.backends.base import ObjectBackend
from store.errors import NotFound, StoreError

DATA_KEYS_DIR = "secrets/data-keys"
"""Where the wrapped data keys live (one object per request)."""
MASTER_KEY = "data-key-master"
"""Name of the store secret (store.secretfiles) that wraps every data key."""
SEALED = "A256GCM"
"""The `sealed` marker (and algorithm) of a sealed value: {"sealed", "nonce", "data"}."""
NONCE_BYTES = 12
KEY_BYTES = 32
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
GENERATE_PROMPT = "generate/prompt"
GENERATE_ANSWER = "generate/answer"
"""Contexts of a generate request's sealed prompt (API -> worker) and answer (back)."""


class KeyDestroyed(NotFound):
    """The data key of a request is gone (its text was purged): nothing can be opened."""


class SealBroken(StoreError, ValueError):
    """A sealed value does not open under its key (tampered, or moved elsewhere)."""


def is_sealed(value: Any) -> bool:
    """Whether `value` is a sealed value (as `seal` returns)."""
    return isinstance(value, dict) and value.get("sealed") == SEALED


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise SealBroken("a sealed value is malformed")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SealBroken("a sealed value is malformed") from None


def _aad(name: str, context: str) -> bytes:
    return f"zerounlearn/{name}/{context}".encode()


def seal(key: bytes, name: str, context: str, value: Any) -> dict[str, str]:
    """`value` (anything JSON-able) encrypted under `key`, bound to (name, context)."""
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    data = AESGCM(key).encrypt(nonce, plain, _aad(name, context))
    return {"sealed": SEALED, "nonce": _b64(nonce), "data": _b64(data)}


def unseal(key: bytes, name: str, context: str, sealed: Any) -> Any:
    """The value `seal` sealed; SealBroken when it does not open under (key, name, context)."""
    if not is_sealed(sealed):
        raise SealBroken("not a sealed value")
    try:
        plain = AESGCM(key).decrypt(_unb64(sealed.get("nonce")), _unb64(sealed.get("data")),
                                    _aad(name, context))
    except (InvalidTag, ValueError):
        raise SealBroken("a sealed value does not open under its key") from None
    return json.loads(plain.decode("utf-8"))


class DataKeys:
    """The data keys of requests, one per request id; created, read and destroyed."""

    def __init__(self, backend: ObjectBackend, master: Callable[[], bytes]) -> None:
        self.backend = backend
        self._master = master

    @staticmethod
    def _key(name: str) -> str:
        if not isinstance(name, str) or not KEY_NAME_RE.match(name):
            raise ValueError(f"invalid data key name {name!r}")
        return f"{DATA_KEYS_DIR}/{name}.key"

    def _wrap(self, name: str, key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = AESGCM(self._master()).encrypt(nonce, key, _aad(name, "data-key"))
        return json.dumps({"wrap": SEALED, "nonce": _b64(nonce), "key": _b64(wrapped)}).encode()

    def _unwrap(self, name: str, blob: bytes) -> bytes:
        try:
            doc = json.loads(blob)
            return AESGCM(self._master()).decrypt(
                _unb64(doc["nonce"]), _unb64(doc["key"]), _aad(name, "data-key"))
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise SealBroken(f"the data key of {name} does not open under the master key") \
                from None

    def create(self, name: str) -> bytes:
        """A new data key for request `name` (the existing one if it already has one)."""
        key = self._key(name)
        self.backend.put_if_absent(key, self._wrap(name, AESGCM.generate_key(KEY_BYTES * 8)))
        return self.get(name)

    def find(self, name: str) -> bytes | None:
        """The data key of request `name`; None once destroyed (or never made)."""
        blob = self.backend.read(self._key(name))
        return None if blob is None else self._unwrap(name, blob.data)

    def get(self, name: str) -> bytes:
        """The data key of request `name`; KeyDestroyed once it was destroyed."""
        key = self.find(name)
        if key is None:
            raise KeyDestroyed(f"the data key of request {name} is destroyed", kind="request")
        return key

    def destroy(self, name: str) -> None:
        """Shred the data key of request `name` (no error when it is already gone)."""
        self.backend.shred(self._key(name))

    def names(self) -> list[str]:
        """The request ids that still have a data key."""
        prefix = DATA_KEYS_DIR + "/"
        return [n[: -len(".key")] for n in self.backend.children(prefix) if n.endswith(".key")]

    def seal(self, name: str, context: str, value: Any) -> dict[str, str]:
        """Seal `value` under request `name`'s data key, made on first use: for the
        request's creator only (anyone else would make a new key after a purge)."""
        return seal(self.create(name), name, context, value)

    def unseal(self, name: str, context: str, sealed: Any) -> Any:
        """Open a value sealed under request `name`'s data key (KeyDestroyed when gone)."""
        return unseal(self.get(name), name, context, sealed)
