"""Real storage backends that count document reads: a test proves a pass or a scrape
reads only what it must (no mock: the reads still go to a real directory or S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.backends.base import Blob, ObjectBackend
from store.backends.local import LocalBackend
from store.backends.s3 import S3Backend
from tests.support.moto_s3 import CREDENTIALS, new_bucket


class CountingReads(ObjectBackend):
    """Counts reads of keys under `counted` (mixed into a real backend)."""

    counted: tuple[str, ...] = ("requests/", "jobs/")
    reads = 0

    def read(self, key: str) -> Blob | None:
        if key.startswith(self.counted):
            self.reads += 1
        return super().read(key)  # type: ignore[safe-super]


class CountingLocal(CountingReads, LocalBackend):
    pass


class CountingS3(CountingReads, S3Backend):
    pass


def counting_backend(kind: str, data_dir: Path, request: Any,
                     counted: tuple[str, ...] = ("requests/", "jobs/")) -> CountingReads:
    """A counting "local" backend under data_dir, or "s3" on the module's moto server
    (the s3_endpoint fixture, through pytest's `request`) in a new bucket."""
    backend: CountingReads
    if kind == "local":
        backend = CountingLocal(data_dir)
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        backend = CountingS3(new_bucket(endpoint), endpoint_url=endpoint,
                             client_options=CREDENTIALS)
    backend.counted = counted
    return backend
