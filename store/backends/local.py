"""The local-directory backend: one file per object under a root directory.

Writes are temp file + fsync + os.replace (+ directory fsync): store.files
write_bytes_atomic. `put_if_absent` publishes the temp file with a hard link, which fails
when the name is taken (no lock needed); `put_if_match` and `update` hold an flock on a
per-key sidecar file (`<dir>/.locks/<name>.lock`), which serialises writers of one key
across threads and processes of this machine. The token of an object is the sha256 of
its bytes. Directories under the private prefixes
(request text, retain banks, secrets, the audit trail) are 0700 and their files 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from store.backends.base import Blob, ObjectBackend, check_key
from store.files import (
    TMP_PREFIX,
    copy_file_atomic,
    fsync_dir,
    locked,
    write_bytes_atomic,
)

PRIVATE_PREFIXES = ("requests", "secrets", "audit", "idempotency", "retain")
"""Top-level directories readable by the owner only."""


def token_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalBackend(ObjectBackend):
    kind = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def location(self, key: str) -> str:
        return str(self.path(key))

    # ---------------------------------------------------------------- paths
    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _lock_path(self, path: Path) -> Path:
        return path.parent / ".locks" / f"{path.name}.lock"

    def _private(self, key: str) -> bool:
        return key.split("/", 1)[0] in PRIVATE_PREFIXES

    def _mkdir(self, key: str, path: Path) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
        if self._private(key):  # every time: another process may have made it first
            os.chmod(self.root / key.split("/", 1)[0], 0o700)

    @contextlib.contextmanager
    def key_lock(self, key: str) -> Iterator[Path]:
        """Hold the key's flock; yields the object's path."""
        path = self.path(key)
        self._mkdir(key, path)
        lock = self._lock_path(path)
        if self._private(key) and not lock.parent.is_dir():
            lock.parent.mkdir(mode=0o700, exist_ok=True)
        with locked(lock):
            yield path

    # ----------------------------------------------------------- primitives
    def read(self, key: str) -> Blob | None:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:  # NotADirectoryError etc.: the store is broken
            return None
        return Blob(data, token_of(data))

    def _mode(self, key: str) -> int:
        return 0o600 if self._private(key) else 0o644

    def _write(self, key: str, path: Path, data: bytes) -> None:
        self._mkdir(key, path)
        write_bytes_atomic(path, data, self._mode(key))

    def _create(self, key: str, path: Path, data: bytes) -> bool:
        """Write a new object; False (nothing written) when the key is taken."""
        self._mkdir(key, path)
        return write_bytes_atomic(path, data, self._mode(key), replace=False)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, self.path(key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        # No key lock: the hard link that publishes the file fails when the name is
        # taken, so of racing creators exactly one wins, and no sidecar lock file is
        # made per new object (a job, a model: once each). `update` creates the same way.
        path = self.path(key)
        if path.exists():
            return False
        return self._create(key, path, data)

    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        with self.key_lock(key) as path:
            current = self.read(key)
            if current is None or current.token != token:
                return False
            self._write(key, path, data)
            return True

    def update(
        self, key: str, change: Callable[[bytes | None], bytes | None]
    ) -> bytes | None:
        # one locked read-modify-write; a retry only when put_if_absent (no lock) created
        # the object between the read and the write
        with self.key_lock(key) as path:
            while True:
                current = self.read(key)
                new = change(current.data if current else None)
                if new is None:
                    return None
                if current is not None:
                    self._write(key, path, new)
                    return new
                if self._create(key, path, new):
                    return new

    def delete(self, key: str) -> None:
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)

    def shred(self, key: str) -> None:
        """Overwrite the file with zeros in place (fsynced), then unlink it. On an
        in-place file system that reaches the old blocks; on a copy-on-write one (btrfs,
        ZFS) or behind an SSD's remapping it may not, hence: keep the data directory on
        an encrypted volume."""
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"\0" * os.fstat(fd).st_size)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.delete(key)

    def move(self, key: str, new_key: str) -> None:
        """Rename an object (atomic on one file system), under the old key's lock."""
        with self.key_lock(key) as src:
            dst = self.path(new_key)
            self._mkdir(new_key, dst)
            os.replace(src, dst)
            fsync_dir(dst.parent)
        with contextlib.suppress(FileNotFoundError):
            self._lock_path(src).unlink()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        start = base if prefix.endswith("/") or not prefix else base.parent
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def children(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            return []
        out = [e.name + ("/" if e.is_dir() else "") for e in entries
               if not e.name.startswith(".")]
        return sorted(out)

    def upload_file(self, path: Path, key: str) -> None:
        dst = self.path(key)
        self._mkdir(key, dst)
        copy_file_atomic(path, dst, self._mode(key))

    def download_file(self, key: str, path: Path) -> None:
        src = self.path(key)
        if not src.is_file():
            raise FileNotFoundError(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{os.urandom(8).hex()}-{path.name}")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
