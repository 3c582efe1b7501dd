"""Big local blobs shared through the backend: statistics and exports.

The engine's StatsCache and the export writer work on local directories. With the
local backend those directories ARE the store, and nothing here does anything. With an
object store, `StatsSync` mirrors the flat stats/ directory: `pull` fetches the files
other workers computed (before the engine looks for them), `push` uploads the ones
computed here. A statistics file's name is a digest of everything that determines its
content, so a name present on both sides is the same file: no content comparison.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from store.backends.base import ObjectBackend
from store.backends.local import LocalBackend

logger = logging.getLogger(__name__)
STATS = "stats/"


def _same_place(backend: ObjectBackend, key_prefix: str, local_dir: Path) -> bool:
    return isinstance(backend, LocalBackend) and (
        (backend.root / key_prefix).resolve() == local_dir.resolve()
    )


class StatsSync:
    def __init__(self, backend: ObjectBackend, local_dir: Path) -> None:
        self.backend = backend
        self.local_dir = local_dir

    @property
    def enabled(self) -> bool:
        return not _same_place(self.backend, STATS, self.local_dir)

    def _local_names(self) -> set[str]:
        if not self.local_dir.is_dir():
            return set()
        return {p.name for p in self.local_dir.iterdir()
                if p.is_file() and not p.name.startswith(".")}

    def pull(self) -> list[str]:
        if not self.enabled:
            return []
        have = self._local_names()
        fetched = []
        for name in self.backend.children(STATS):
            if name.endswith("/") or name in have:
                continue
            self.backend.download_file(STATS + name, self.local_dir / name)
            fetched.append(name)
        if fetched:
            logger.info("fetched %d statistics file(s) from the shared store", len(fetched))
        return fetched

    def push(self) -> list[str]:
        if not self.enabled:
            return []
        remote: set[str] = set(self.backend.children(STATS))
        pushed = []
        for name in sorted(self._local_names() - remote):
            self.backend.upload_file(self.local_dir / name, STATS + name)
            pushed.append(name)
        if pushed:
            logger.info("shared %d statistics file(s) through the store", len(pushed))
        return pushed


def publish_export(backend: ObjectBackend, prefix: str, local_dir: Path, marker: str) -> str:
    """Upload a finished export directory under `prefix`, its marker last (its presence
    means the export is complete); skipped when the marker is already there."""
    if _same_place(backend, prefix, local_dir):
        return str(local_dir)
    if not backend.exists(f"{prefix}/{marker}"):
        files = sorted(Path(d) / f for d, _, names in os.walk(local_dir) for f in names)
        for path in sorted(files, key=lambda p: p.name == marker):  # the marker last
            backend.upload_file(path, f"{prefix}/{path.relative_to(local_dir).as_posix()}")
    return backend.location(prefix)
