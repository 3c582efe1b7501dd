"""What a worker publishes for the API's /metrics: its resident models, in Redis.

Every `PUBLISH_INTERVAL_S` a daemon thread writes the worker's resident model versions
to `RESIDENT_KEY_PREFIX + <worker name>` with a TTL of `RESIDENT_TTL_S`, so a worker
that dies stops being counted within the TTL; a clean stop deletes the key. The API
reads every such key at scrape time (several workers, several API processes: Redis is
the one place they all see).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RESIDENT_KEY_PREFIX = "zerounlearn:resident:"
"""Redis key prefix of the per-worker resident-model lists (JSON)."""
PUBLISH_INTERVAL_S = 5.0
"""Seconds between two publications."""
RESIDENT_TTL_S = 20
"""Seconds a publication lives: a dead worker drops out of /metrics after this."""


class ResidentPublisher:
    """Publishes `entries()` (e.g. ["m-1/v0"]) for worker `name` until stopped, with
    the queues it listens to (`queue`: the last of them, for older readers)."""

    def __init__(self, connection: Redis, name: str, entries: Callable[[], list[str]],
                 queue: str | list[str]) -> None:
        self.connection = connection
        self.key = RESIDENT_KEY_PREFIX + name
        self.entries = entries
        self.queues = [queue] if isinstance(queue, str) else list(queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resident-publisher",
                                        daemon=True)

    def publish(self) -> None:
        try:
            models = sorted(self.entries())
        except RuntimeError:  # the cache changed while we read it: next time
            return
        body = json.dumps({"queue": self.queues[-1], "queues": self.queues, "models": models})
        try:
            self.connection.set(self.key, body, ex=RESIDENT_TTL_S)
        except RedisError as exc:
            logger.warning("could not publish resident models: %s", type(exc).__name__)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.publish()
            self._stop.wait(PUBLISH_INTERVAL_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self.connection.delete(self.key)
        except RedisError:
            pass
