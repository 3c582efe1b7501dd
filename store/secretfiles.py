"""Server secrets kept as files under <root>/secrets/ (mode 0600), made on first use.

One random 32-byte value per name: the salt of record hashes, the receipt signing key,
the callback signing key. Created with O_EXCL, so two processes starting together agree
on one value; a configured value (environment) takes precedence where the caller has one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from store.files import fsync_dir

SECRET_BYTES = 32
SECRETS_DIR = "secrets"


def secret_path(root: Path, name: str) -> Path:
    return Path(root) / SECRETS_DIR / f"{name}.key"


def load_or_create_secret(root: Path, name: str) -> bytes:
    """The secret `name` under root, created (0600, hex text) when absent."""
    path = secret_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    try:
        os.write(fd, secrets.token_hex(SECRET_BYTES).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return _read(path)


def _read(path: Path) -> bytes:
    for _ in range(50):  # a concurrent creator may not have written yet
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
        import time

        time.sleep(0.01)
    raise OSError(f"secret file {path.name} is empty")
