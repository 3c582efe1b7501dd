"""`python -m store.bucket_init`: create the bucket of ZEROUNLEARN_STORE_URL if it is missing.

The one-shot `store-init` service of docker-compose.yml runs it before any API or
worker starts. It reads the settings every service reads (ZEROUNLEARN_STORE_URL,
ZEROUNLEARN_S3_ENDPOINT_URL, the AWS_* credentials), creates the bucket when absent,
then checks that the bucket answers with these credentials. Exit codes: 0 ready,
1 the bucket cannot be reached or created (the reason on stderr), 2 bad settings.
Nothing happens for a local store (ZEROUNLEARN_STORE_URL unset or file://).
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

from store.backends.s3 import S3Backend
from store.settings import BlobSettings, SettingsError

ATTEMPTS = 10
"""Tries before giving up: the object store may still be starting."""
RETRY_S = 2.0
"""Seconds between tries."""


def ensure_bucket(backend: S3Backend, attempts: int = ATTEMPTS, retry_s: float = RETRY_S) -> None:
    """Create the backend's bucket when absent; raise the last error if it never answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(1, attempts + 1):
        try:
            backend.ensure_bucket()
            backend.client.head_bucket(Bucket=backend.bucket)
            return
        except (BotoCoreError, ClientError):
            if attempt == attempts:
                raise
            time.sleep(retry_s)


def main() -> int:
    try:
        settings = BlobSettings.load()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    url = settings.store_url
    if not url or urlsplit(url).scheme == "file":
        sys.stdout.write("local store: no bucket to create\n")
        return 0
    try:
        backend = S3Backend(url, endpoint_url=settings.s3_endpoint_url)
    except ValueError as exc:
        sys.stderr.write(f"ZEROUNLEARN_STORE_URL: {exc}\n")
        return 2
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ensure_bucket(backend)
    except (BotoCoreError, ClientError) as exc:
        sys.stderr.write(f"bucket {backend.bucket!r} not ready: {type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.write(f"bucket {backend.bucket!r} ready at {backend.describe()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
