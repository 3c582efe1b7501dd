"""CallbackDispatcher: job-end callbacks delivered by a few threads of the API process,
off the reconciler.

The reconciler only hands over the job ids whose callback is due (`submit`); a slow or
hostile receiver then holds one of these threads for at most one attempt's deadline
(ZEROUNLEARN_CALLBACK_TIMEOUT_S, app.callback_http), never the reconciler's re-queuing,
purges or checkpoints. An attempt first claims the delivery in the store (its next
attempt moved past the deadline, one atomic update), so two API processes never
attempt the same callback at once; if this process dies mid-attempt, another retries it
once the claim lapses. Each attempt is audited (host and outcome, never the URL), and
the request's callback state says what happened (pending with the next attempt's time,
delivered, or gave_up past ZEROUNLEARN_CALLBACK_MAX_AGE_S).

The deadline covers the name's resolution too (app.callback_http.resolve_and_post); the
resolver is a constructor argument, so a test can hand in a slow one. HTTPS receivers
are checked against the system's CAs plus ZEROUNLEARN_CALLBACK_CA_FILE.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from app import callback_http, callbacks
from app.settings import Settings
from store import ArtifactStore, StoreError
from store.enums import CallbackState

logger = logging.getLogger(__name__)

ACTOR = "reconciler"
"""The audit trail's actor of delivery attempts (as before they moved off the pass)."""
CLAIM_MARGIN_S = 30.0
"""Seconds past an attempt's deadline before another process may retry a claimed one."""


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class CallbackDispatcher:
    """Due callbacks in, attempts made by `settings.callback_workers` daemon threads."""

    def __init__(self, store: ArtifactStore, settings: Settings,
                 on_done: Callable[[str], None] | None = None,
                 resolver: callback_http.Resolver = callback_http.resolve) -> None:
        self.store, self.settings = store, settings
        self.on_done = on_done  # told the job id once an attempt has been recorded
        self.resolver = resolver  # host name -> checked address, within the deadline
        # built once: a CA file that cannot be read fails the API's start, not each attempt
        self.tls = callback_http.tls_context(settings.callback_ca_file)
        self._work: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def busy(self, job_id: str) -> bool:
        """Is this job's callback waiting for, or in, an attempt here?"""
        with self._lock:
            return job_id in self._in_flight

    def submit(self, job_id: str) -> bool:
        """Queue one attempt of the job's due callback; False when one already is."""
        with self._lock:
            if self._stopped or job_id in self._in_flight:
                return False
            self._in_flight.add(job_id)
            if len(self._threads) < self.settings.callback_workers:
                thread = threading.Thread(target=self._loop, daemon=True,
                                          name=f"callbacks-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        self._work.put(job_id)
        return True

    def stop(self) -> None:
        """No new attempts; the threads end after the attempt they are in (each is
        bounded by the deadline; they are daemons and never hold the process)."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)

    def _loop(self) -> None:
        while (job_id := self._work.get()) is not None:
            try:
                self.attempt(job_id)
            except (StoreError, OSError) as exc:
                logger.warning("callback attempt for job %s failed: %s", job_id,
                               type(exc).__name__)
            except Exception as exc:  # a delivery thread must survive anything
                logger.error("callback attempt for job %s failed unexpectedly: %s", job_id,
                             type(exc).__name__)
            finally:
                with self._lock:
                    self._in_flight.discard(job_id)
                if self.on_done is not None:
                    self.on_done(job_id)

    def attempt(self, job_id: str) -> str | None:
        """One attempt, if the callback is still pending and due: its outcome
        ("delivered" or the failure), or None when there was nothing to attempt."""
        now = time.time()
        hold = self.settings.callback_timeout_s + CLAIM_MARGIN_S
        request = self.store.requests.claim_callback(job_id, now, hold)
        if request is None:
            return None
        cb = request["callback"]
        job = self.store.get_job(job_id)
        attempt = int(cb.get("attempts", 0)) + 1
        secret = callbacks.callback_secret(self.settings, self.store)
        body = callbacks.payload(self.store, self.settings, job)
        failure = self.deliver(cb["url"], secret, body, attempt)
        now = time.time()
        finished = _epoch(job.get("finished_at")) or now
        state = CallbackState.DELIVERED if failure is None else CallbackState.PENDING
        if failure is not None and now - finished >= self.settings.callback_max_age_s:
            state = CallbackState.GAVE_UP
        self.store.requests.update(job_id, callback={
            **cb, "state": state, "attempts": attempt, "last_error": failure,
            "next_attempt_at": now + callbacks.next_delay(self.settings, attempt),
        })
        self.store.audit.append(
            ACTOR, "callback.attempt", ids={"job": job_id, "model": job.get("model_id")},
            detail={"attempt": attempt, "host": urlsplit(cb["url"]).hostname,
                    "outcome": failure or CallbackState.DELIVERED, "state": state},
        )
        return failure or CallbackState.DELIVERED

    def deliver(self, url: str, secret: bytes, body: dict[str, Any], attempt: int) -> str | None:
        """One attempt (app.callbacks.deliver) with this dispatcher's resolver and CAs."""
        return callbacks.deliver(url, secret, body, attempt, self.settings.callback_timeout_s,
                                 resolver=self.resolver, tls=self.tls)
