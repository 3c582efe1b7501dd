"""The S3-compatible backend (AWS S3, MinIO, moto...) through boto3.

Objects live under `s3://<bucket>/<prefix>/<key>`. Conditional writes are S3's own:
`put_if_absent` is PutObject with If-None-Match: *, `put_if_match` PutObject with
If-Match: <ETag>; the server refuses a lost race with 412 Precondition Failed (or
409 ConditionalRequestConflict while a competing conditional write is in flight, which
is retried). The store needs a server that implements both (AWS S3 since 2024, MinIO,
moto >= 5.0).

boto3 clients are thread-safe but must not cross a fork (RQ forks a work horse per
job): the client is made per process, on first use.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from store.backends.base import BackendError, Blob, ObjectBackend, check_key
from store.files import TMP_PREFIX

CONFLICT_RETRIES = 20


def parse_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of "s3://bucket/prefix" (prefix may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, (prefix + "/" if prefix else "")


class S3Backend(ObjectBackend):
    kind = "s3"

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url or None
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._options = dict(client_options or {})
        self._guard = threading.Lock()
        self._client: Any = None
        self._pid = -1

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.url}{where}"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    # ---------------------------------------------------------------- client
    @property
    def client(self) -> Any:
        with self._guard:
            if self._client is None or self._pid != os.getpid():
                import boto3
                from botocore.config import Config

                config = Config(retries={"max_attempts": 5, "mode": "standard"},
                                connect_timeout=5, read_timeout=60)
                options = {"region_name": self.region, **self._options}
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url, config=config, **options
                )
                self._pid = os.getpid()
            return self._client

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, first start of a dev stack)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with contextlib.suppress(ClientError):
                self.client.create_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------ primitives
    def read(self, key: str) -> Blob | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return Blob(response["Body"].read(), response["ETag"])
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise _error("read", key, exc) from None
        except BotoCoreError as exc:
            raise _error("read", key, exc) from None

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put(key, data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        return self._put(key, data, IfMatch=token)

    def _put(self, key: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(CONFLICT_RETRIES):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                       **condition)
                return True
            except ClientError as exc:
                code = _code(exc)
                if condition and code in ("PreconditionFailed", "412"):
                    return False
                if condition.get("IfMatch") and code in ("NoSuchKey", "404"):
                    return False  # deleted meanwhile: not the version we read
                if code == "ConditionalRequestConflict" and attempt + 1 < CONFLICT_RETRIES:
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise _error("write", key, exc) from None
            except BotoCoreError as exc:
                raise _error("write", key, exc) from None
        return False

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) not in ("NoSuchKey", "404"):
                raise _error("delete", key, exc) from None
        except BotoCoreError as exc:
            raise _error("delete", key, exc) from None

    def shred(self, key: str) -> None:
        """Delete every version of the object (and its delete markers), so that a
        versioned bucket keeps no copy; needs s3:ListBucketVersions and
        s3:DeleteObjectVersion. On an unversioned bucket this is `delete`."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if entry["Key"] == full:
                        self.client.delete_object(Bucket=self.bucket, Key=full,
                                                  VersionId=entry["VersionId"])
        except (ClientError, BotoCoreError) as exc:
            raise _error("shred", key, exc) from None
        self.delete(key)

    def list_keys(self, prefix: str) -> list[str]:
        keys = []
        for page in self._pages(prefix, delimiter=None):
            keys += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        return sorted(keys)

    def children(self, prefix: str) -> list[str]:
        out = []
        start = len(self.prefix) + len(prefix)
        for page in self._pages(prefix, delimiter="/"):
            out += [obj["Key"][start:] for obj in page.get("Contents", [])]
            out += [p["Prefix"][start:] for p in page.get("CommonPrefixes", [])]
        return sorted(name for name in out if name and not name.startswith("."))

    def _pages(self, prefix: str, delimiter: str | None) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        args = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**args)
        except ClientError as exc:
            raise _error("list", prefix, exc) from None
        except BotoCoreError as exc:
            raise _error("list", prefix, exc) from None

    def upload_file(self, path: Path, key: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except (ClientError, S3UploadFailedError) as exc:
            raise _error("upload", key, exc) from None
        except BotoCoreError as exc:
            raise _error("upload", key, exc) from None

    def download_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{os.urandom(8).hex()}-{path.name}")
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            os.replace(tmp, path)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(key) from None
            raise _error("download", key, exc) from None
        except BotoCoreError as exc:
            raise _error("download", key, exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _error(what: str, key: str, exc: Exception) -> BackendError:
    return BackendError(f"object store {what} of {key} failed: {_code(exc) or type(exc).__name__}")
