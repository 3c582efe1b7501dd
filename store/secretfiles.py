"""Server secrets kept under secrets/ (owner-only files locally), made on first use.

One random 32-byte value per name: the salt of record hashes, the receipt signing key,
the callback signing key. Created with put_if_absent, so two processes (or machines)
starting together agree on one value; a configured value (environment) takes precedence
where the caller has one.
"""

from __future__ import annotations

import secrets

from store.backends.base import ObjectBackend

SECRET_BYTES = 32
SECRETS_DIR = "secrets"


def secret_key(name: str) -> str:
    return f"{SECRETS_DIR}/{name}.key"


def load_or_create_secret(backend: ObjectBackend, name: str) -> bytes:
    """The secret `name`, created (hex text) when absent."""
    key = secret_key(name)
    blob = backend.read(key)
    if blob is None:
        backend.put_if_absent(key, secrets.token_hex(SECRET_BYTES).encode())
        blob = backend.read(key)
    if blob is None or not blob.data.strip():
        raise OSError(f"secret {name} could not be stored")
    return bytes.fromhex(blob.data.decode().strip())
