"""`python -m worker`: one long-lived RQ worker on the queues of its device class.

It is an RQ SimpleWorker: jobs run in this process, without a fork per job, so loaded
models (and CUDA state) stay resident between jobs in the process's ModelCache. Run one
per GPU. It takes jobs from the interactive queue first, then from the edits queue
(ZEROUNLEARN_WORKER_QUEUES=interactive: only the former, so it is free for short calls
while other workers edit; app.queue). SIGTERM / Ctrl-C stop it after the current job
(warm); a second signal more than a second later stops it at once (cold), and the
running job is marked failed with code "worker_stopped".

Settings come from the environment (worker.settings); REDIS_URL is required here.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker

from store.enums import JobKind, ModelStatus
from store.logs import start_logging
from worker.settings import SettingsError, WorkerSettings

logger = logging.getLogger("worker")

_ARGUMENT_ATTRS = ("arguments", "kwargs", "args_repr")


class _DropJobArguments(logging.Filter):
    """RQ attaches a failed job's arguments to its log record as `extra`; they hold
    forget-request text, so they are removed before any handler or formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr in _ARGUMENT_ATTRS:
            if attr in record.__dict__:
                delattr(record, attr)
        return True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    parser.add_argument("--name", default=None, help="worker name (default: host-pid-random)")
    return parser.parse_args(argv)


def _setup_torch(settings: WorkerSettings) -> None:
    # progress bars of weight loading would interleave with the log lines (variables of
    # huggingface_hub and tokenizers, which read them themselves)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.set_num_threads(settings.torch_threads)
    if settings.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(
                f"ZEROUNLEARN_DEVICE={settings.device} but torch sees no CUDA device "
                f"(torch {torch.__version__}); install the CUDA build or use cpu"
            )
        index = int(settings.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SettingsError(
                f"ZEROUNLEARN_DEVICE={settings.device}: only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # handler filters see propagated records: RQ's job arguments are dropped there
    settings = start_logging("worker", WorkerSettings.from_env, filters=[_DropJobArguments()])
    if settings is None:
        return 2
    try:
        _setup_torch(settings)
    except SettingsError as exc:
        logger.error("%s", exc)
        return 2

    # imported after torch is configured: the engine imports torch and transformers
    from worker.context import WorkerContext, set_context
    from worker.jobs import recover_orphaned_jobs
    from worker.metrics import ResidentPublisher

    connection = Redis.from_url(settings.redis_url)
    try:
        connection.ping()
    except RedisError as exc:
        logger.error("cannot reach Redis at REDIS_URL (%s): %s", _safe_url(settings), exc)
        return 3

    name = args.name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    context = WorkerContext.from_settings(settings, name=name)
    set_context(context)
    context.store.root.mkdir(parents=True, exist_ok=True)

    def prepare_failed(job: dict, error: dict) -> None:
        if job.get("kind") == JobKind.PREPARE:
            context.store.update_model(job["model_id"], status=ModelStatus.FAILED, error=error)

    recovered = recover_orphaned_jobs(
        context.store, connection, me=name, on_failure=prepare_failed
    )
    if recovered:
        logger.warning("marked %d job(s) of dead workers as failed", len(recovered))

    queues = [Queue(q, connection=connection) for q in settings.listen_queues]
    worker = SimpleWorker(queues, connection=connection, name=name, log_job_description=False)
    logger.info(
        "worker %s on queues %s (device %s, %d torch thread(s), store %s, statistics %d "
        "tokens)", name, ", ".join(settings.listen_queues), settings.device,
        settings.torch_threads, settings.data_dir, settings.stats_samples,
    )
    # its own client: RQ's connection is blocked in BLPOP while the worker waits
    publisher = ResidentPublisher(
        Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5),
        name,
        lambda: [f"{k.model_id}/{k.version}" for k in context.models.keys()],
        settings.listen_queues,
    )
    publisher.start()
    try:
        worker.work(
            burst=args.burst, max_jobs=args.max_jobs, logging_level=settings.log_level
        )
    finally:
        publisher.stop()
    logger.info("worker %s stopped", name)
    return 0


def _safe_url(settings: WorkerSettings) -> str:
    """REDIS_URL without its password, for messages."""
    url = settings.redis_url
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


if __name__ == "__main__":
    sys.exit(main())
