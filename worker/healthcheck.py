"""`python -m worker.healthcheck`: exit 0 when a worker of this host is registered in RQ.

For container health checks (docker-compose): a worker names itself
"<hostname>-<pid>-<random>" and keeps its RQ registration alive with heartbeats, so a
registered name with this host's prefix means the worker process is up and reaches
Redis. Cheap: imports redis and rq only, never torch.
"""

from __future__ import annotations

import socket
import sys

from redis import Redis
from redis.exceptions import RedisError
from rq.worker import Worker

from worker.settings import SettingsError, WorkerSettings


def worker_alive(connection: Redis, hostname: str) -> bool:
    prefix = f"{hostname}-"
    return any(w.name.startswith(prefix) for w in Worker.all(connection=connection))


def main() -> int:
    try:
        settings = WorkerSettings.from_env()
        connection = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        alive = worker_alive(connection, socket.gethostname())
    except (SettingsError, RedisError) as exc:
        sys.stderr.write(f"unhealthy: {type(exc).__name__}: {exc}\n")
        return 1
    if not alive:
        sys.stderr.write("unhealthy: no worker of this host is registered\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
