"""Request ids, request metrics and the /metrics scrape (Prometheus text format).

Two sources, chosen so the numbers are right with several API and worker processes:

- HTTP requests are counted per process (`RequestMetrics`). One API process exposes its
  own; several (`python -m app --workers N`) share prometheus_client's multiprocess
  files, so a scrape of any of them adds up all (`metrics_registry`). Every label is
  bounded: route templates (one label for unmatched paths), known methods or "other",
  status codes 100-599.
- Everything about jobs, queues, workers and resident models comes from what all
  processes share. Job documents in the store (status, kind, and the per-phase
  `timings` the worker writes when a job ends) are tallied by `JobTally`
  (app.metrics_jobs), refreshed in the background every few seconds, so a scrape reads
  no job document; their HELP texts say how stale they may be. RQ in Redis (queue
  depth, live workers) and the keys workers publish with a TTL (`worker.metrics`) are
  read at scrape time. Scraping any API process gives the same answer (up to that
  staleness).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rq import Worker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics_jobs import JobTally
from app.queue import RESIDENT_KEY_PREFIX
from store import MODEL_STATUSES, ArtifactStore, StoreError
from store.logs import request_id_var

logger = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
UNMATCHED_ROUTE = "<unmatched>"
"""Route label of requests no route matched (keeps the label set small)."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
"""Method (status) label of any method not in KNOWN_METHODS (status outside 100-599)."""


def method_label(method: str) -> str:
    """A bounded method label: any string a client sends as a method is "other"."""
    return method if method in KNOWN_METHODS else OTHER


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


def metrics_registry(service: Collector) -> tuple[CollectorRegistry, RequestMetrics]:
    """The registry /metrics exposes, and this process's HTTP counters.

    With PROMETHEUS_MULTIPROC_DIR set (`python -m app --workers N` sets it) the counters
    live in files there and every scrape adds up all the API processes' counters, so
    any process answers for all. `service` (shared state) is collected once."""
    exposed = CollectorRegistry()
    # Not the settings object: prometheus_client decides from this very variable whether
    # its metrics write to the shared files, so this must read what the library reads.
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(exposed)
        request_metrics = RequestMetrics(CollectorRegistry())  # values: in the shared files
    else:
        request_metrics = RequestMetrics(exposed)
    exposed.register(service)
    return exposed, request_metrics


class RequestMetrics:
    """This process's HTTP counters, in a registry of their own (no module globals)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "zerounlearn_http_requests", "HTTP requests answered, by route template and status",
            ["method", "route", "status"], registry=registry,
        )
        self.duration = Histogram(
            "zerounlearn_http_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route"], registry=registry,
        )


class RequestContext:
    """ASGI middleware: a request id (X-Request-ID, kept when the caller sent a sane
    one) in the log context and the response, and the request counted by route."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        began = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = method_label(scope.get("method", "GET"))
            self.metrics.requests.labels(method, template, status_label(status)).inc()
            self.metrics.duration.labels(method, template).observe(time.perf_counter() - began)
            request_id_var.reset(token)


class ServiceCollector(Collector):
    """Jobs, queue, workers and resident models, read from the store and Redis."""

    def __init__(self, store: ArtifactStore, queue: Any, jobs: JobTally) -> None:
        self.store = store
        self.queue = queue  # app.queue.JobQueue
        self.jobs = jobs  # kept current in the background: a scrape reads no job

    def collect(self) -> Iterator[Metric]:
        yield from self.jobs.families()
        yield from self._models()
        yield from self._redis()

    def _models(self) -> Iterator[Metric]:
        try:
            models = self.store.list_models()
        except (StoreError, OSError):
            return
        counts = Tally(str(m.get("status")) for m in models)
        gauge = GaugeMetricFamily("zerounlearn_models", "Registered models by status",
                                  labels=["status"])
        for status in MODEL_STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge

    def _redis(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("zerounlearn_redis_up", "1 when Redis answered this scrape")
        try:
            depths = {q.name: len(q) for q in (self.queue.queue, self.queue.interactive)}
            workers = Worker.all(queue=self.queue.queue)
            resident = self._resident()
        except RedisError as exc:
            logger.warning("metrics: Redis unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        name = self.queue.name
        queue_depth = GaugeMetricFamily("zerounlearn_queue_depth", "Jobs waiting in the queue",
                                        labels=["queue"])
        for queue_name, depth in depths.items():  # edits, and interactive (app.queue)
            queue_depth.add_metric([queue_name], depth)
        yield queue_depth
        yield _gauge("zerounlearn_workers_alive", "Workers registered on the queue", "queue",
                     name, len(workers))
        family = GaugeMetricFamily(
            "zerounlearn_models_resident",
            "Workers holding a model version in memory", labels=["model", "version"],
        )
        for (model, version), count in sorted(resident.items()):
            family.add_metric([model, version], count)
        yield family

    def _resident(self) -> Tally[tuple[str, str]]:
        redis = self.queue.redis
        tally: Tally[tuple[str, str]] = Tally()
        for key in redis.scan_iter(match=RESIDENT_KEY_PREFIX + "*", count=100):
            raw = redis.get(key)
            try:
                entries = json.loads(raw)["models"] if raw else []
            except (ValueError, KeyError, TypeError):
                continue
            for entry in entries:
                model, _, version = str(entry).partition("/")
                tally[(model, version)] += 1
        return tally


def _gauge(name: str, doc: str, label: str, value: str, number: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=[label])
    gauge.add_metric([value], number)
    return gauge
