"""File primitives: atomic writes (bytes, JSON) and advisory locks (fcntl)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
"""Prefix of every temporary file or directory the store writes; never listed."""


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_atomic(path: Path, fill: Callable[[int], None], mode: int, replace: bool,
                  sync_dir: bool) -> bool:
    """Temp file beside `path` (created with `mode`), filled by fill(fd) and fsynced,
    then renamed over `path` (replace) or hard-linked to it (create-if-absent: the link
    fails when the name is taken, and False is returned); then the directory fsync."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.urandom(8).hex()}-{path.name}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return True


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o666, *,
                       replace: bool = True, sync_dir: bool = True) -> bool:
    """Write `data` to `path` so a reader sees the old or the new file, never a torn one,
    and the new one survives a crash once this returns (file and directory fsynced).

    The parent directory must exist. mode: of a new file, less the umask. With
    replace=False an existing `path` is left alone and False is returned (an atomic
    create-if-absent that needs no lock). sync_dir=False leaves the directory fsync to
    the caller (fsync_dir). Returns True when `path` now holds `data`.
    """
    return _write_atomic(path, lambda fd: _write_all(fd, data), mode, replace, sync_dir)


def copy_file_atomic(src: Path, path: Path, mode: int = 0o666,
                     chunk: int = 1 << 20) -> None:
    """Copy the file `src` to `path` as write_bytes_atomic writes bytes (big files:
    copied in chunks, never read whole into memory)."""

    def fill(fd: int) -> None:
        with open(src, "rb") as fin:
            while block := fin.read(chunk):
                _write_all(fd, block)

    _write_atomic(path, fill, mode, True, True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` so a reader sees the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    """Read a JSON file; FileNotFoundError when it is absent."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def copy_file_synced(src: Path, dst: Path, chunk: int = 1 << 20) -> tuple[int, str]:
    """Copy src to dst, fsync it, and return (bytes, sha256 hex) of what was written."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(chunk):
            fout.write(block)
            digest.update(block)
            size += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if needed) for the block.

    The lock lives in a sidecar file, not in the document itself: documents are
    replaced by rename, which would leave a lock on the old inode. flock locks belong
    to the open file description, so threads of one process exclude each other too.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
