"""Object backends of the store: a local directory (default) or S3-compatible storage.

`open_backend(store_url, data_dir)`: no URL (or "file://...") -> LocalBackend on
data_dir (today's layout, unchanged); "s3://bucket/prefix" -> S3Backend, with
ZEROUNLEARN_S3_ENDPOINT_URL for a non-AWS server (MinIO, moto) and the usual AWS_*
credentials from the environment; data_dir is then only a local cache of big blobs.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from store.backends.base import BackendError, Blob, ObjectBackend
from store.backends.local import LocalBackend

__all__ = ["BackendError", "Blob", "LocalBackend", "ObjectBackend", "open_backend"]


def open_backend(
    store_url: str | None, data_dir: Path | str, *, s3_endpoint_url: str | None = None
) -> ObjectBackend:
    """The backend a store URL names (see the module docstring)."""
    url = (store_url or "").strip()
    if not url:
        return LocalBackend(data_dir)
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return LocalBackend(urlsplit(url).path)
    if scheme == "s3":
        from store.backends.s3 import S3Backend  # boto3 only when S3 is used

        return S3Backend(url, endpoint_url=s3_endpoint_url)
    raise ValueError(f"ZEROUNLEARN_STORE_URL must be s3://bucket[/prefix] or file:///path "
                     f"(got scheme {scheme!r})")
