"""The per-model edit lock: one worker at a time builds a version of a model.

A forget job holds it from reading the model's head (the active version it builds on)
until the new version is published and activated, so two workers never build on the
same head and the head always carries every deletion (no lost deletion).

It is a Redis lock (redis-py `Lock`, key `zerounlearn:model-edit-lock:<model_id>`)
with a short timeout that a background thread keeps renewing while the job runs: a
worker killed with SIGKILL leaves a lock that expires within LOCK_TIMEOUT_S, and a
restarted worker of the same host frees the locks of its dead predecessors at once
(`release_locks_of`). The lock's token names its holder ("<worker>|<random>").
Without Redis (a task called directly, e.g. in a unit test) there is nothing to share
and the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator

from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from worker.errors import WorkerError

logger = logging.getLogger(__name__)

LOCK_PREFIX = "zerounlearn:model-edit-lock:"
LOCK_TIMEOUT_S = 60.0
"""Expiry of a lock whose holder stopped renewing it (a dead worker)."""
RENEW_EVERY_S = LOCK_TIMEOUT_S / 4

_RELEASE_IF_HOLDER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class EditLockLost(WorkerError):
    """The edit lock expired or was taken while the job ran; nothing was activated."""

    code = "edit_lock_lost"


class EditLock:
    """A held edit lock (or, without Redis, a stand-in that is always held)."""

    def __init__(self, lock: Lock | None, waited_s: float) -> None:
        self._lock = lock
        self.waited_s = waited_s

    def check(self) -> None:
        """EditLockLost unless this worker still holds the lock (call before activating)."""
        if self._lock is None:
            return
        try:
            owned = self._lock.owned()
        except RedisError as exc:
            raise EditLockLost(
                f"could not check the model's edit lock ({type(exc).__name__})"
            ) from None
        if not owned:
            raise EditLockLost(
                "the model's edit lock expired while the job ran; nothing was published"
            )


def lock_key(model_id: str) -> str:
    return f"{LOCK_PREFIX}{model_id}"


@contextlib.contextmanager
def model_edit_lock(redis: Redis | None, model_id: str, holder: str | None) -> Iterator[EditLock]:
    """Hold model `model_id`'s edit lock for the block (waits while another holds it)."""
    if redis is None:
        yield EditLock(None, 0.0)
        return
    lock = Lock(redis, lock_key(model_id), timeout=LOCK_TIMEOUT_S, sleep=0.05,
                thread_local=False)  # renewed from another thread
    began = time.monotonic()
    lock.acquire(blocking=True, token=f"{holder or 'unnamed'}|{uuid.uuid4().hex}")
    waited = time.monotonic() - began
    if waited > 1.0:
        logger.info("waited %.1f s for the edit lock of model %s", waited, model_id)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lock, stop, model_id), name=f"edit-lock-{model_id}", daemon=True
    )
    renewer.start()
    try:
        yield EditLock(lock, waited)
    finally:
        stop.set()
        renewer.join(timeout=5)
        with contextlib.suppress(LockError, RedisError):
            lock.release()


def _renew(lock: Lock, stop: threading.Event, model_id: str) -> None:
    while not stop.wait(RENEW_EVERY_S):
        try:
            lock.reacquire()
        except (LockError, RedisError) as exc:
            logger.warning("could not renew the edit lock of model %s: %s", model_id,
                           type(exc).__name__)
            return


def release_locks_of(redis: Redis, holders: Iterable[str]) -> list[str]:
    """Delete the edit locks held by these (dead) workers; returns the model ids."""
    names = set(holders)
    if not names:
        return []
    release = redis.register_script(_RELEASE_IF_HOLDER)
    freed = []
    for key in redis.scan_iter(match=f"{LOCK_PREFIX}*", count=100):
        token = redis.get(key)
        if token is None:
            continue
        text = token.decode() if isinstance(token, bytes) else str(token)
        if text.partition("|")[0] in names and release(keys=[key], args=[token]):
            name = key.decode() if isinstance(key, bytes) else str(key)
            freed.append(name[len(LOCK_PREFIX):])
    return freed
