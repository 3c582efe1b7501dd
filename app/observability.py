"""Request ids, request metrics and the /metrics scrape (Prometheus text format).

Two sources, chosen so the numbers are right with several API and worker processes:

- HTTP requests are counted in THIS process (`RequestMetrics`, a per-app registry):
  each API process exposes its own, as Prometheus expects (one target per process).
- Everything about jobs, queues, workers and resident models is read at scrape time
  from what all processes share: job documents in the store (status, kind, and the
  per-phase `timings` the worker writes when a job ends), RQ in Redis (queue depth,
  live workers) and the keys workers publish with a TTL (`worker.metrics`). Scraping
  any API process gives the same answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rq import Worker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.queue import RESIDENT_KEY_PREFIX
from store import JOB_KINDS, JOB_STATUSES, ArtifactStore, StoreError
from store.logs import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
"""Seconds: job and phase durations span a tiny model on CPU to SmolLM2 preparation."""
UNMATCHED_ROUTE = "<unmatched>"
"""Route label of requests no route matched (keeps the label set small)."""


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
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.duration.labels(method, template).observe(time.perf_counter() - began)
            request_id_var.reset(token)


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
        finish = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((finish - begin).total_seconds(), 0.0)


class _Histograms:
    """Cumulative-bucket histograms built from observed values, keyed by label tuples."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.values.setdefault(labels, []).append(value)

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, values in sorted(self.values.items()):
            buckets = [(str(float(b)), float(sum(v <= b for v in values))) for b in JOB_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            family.add_metric(list(labels), buckets, sum_value=float(sum(values)))
        return family


class ServiceCollector(Collector):
    """Jobs, queue, workers and resident models, read from the store and Redis."""

    def __init__(self, store: ArtifactStore, queue: Any) -> None:
        self.store = store
        self.queue = queue  # app.queue.JobQueue

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._models()
        yield from self._redis()

    def _jobs(self) -> Iterator[Metric]:
        try:
            jobs = self.store.list_jobs()
        except (StoreError, OSError) as exc:
            logger.warning("metrics: cannot list jobs (%s)", type(exc).__name__)
            return
        counts = Tally((str(j.get("kind")), str(j.get("status"))) for j in jobs)
        gauge = GaugeMetricFamily("zerounlearn_jobs", "Jobs in the store by kind and status",
                                  labels=["kind", "status"])
        for kind in JOB_KINDS:
            for status in JOB_STATUSES:
                gauge.add_metric([kind, status], counts.get((kind, status), 0))
        yield gauge
        total, phases = _Histograms(), _Histograms()
        for job in jobs:
            seconds = _seconds(job.get("started_at"), job.get("finished_at"))
            if seconds is not None and job.get("status") in ("succeeded", "failed"):
                total.observe((str(job.get("kind")), str(job.get("status"))), seconds)
            for phase, spent in (job.get("timings") or {}).items():
                if isinstance(spent, int | float):
                    phases.observe((str(job.get("kind")), str(phase)), float(spent))
        yield total.family("zerounlearn_job_duration_seconds",
                           "Run time of ended jobs (started to finished)", ["kind", "status"])
        yield phases.family("zerounlearn_job_phase_duration_seconds",
                            "Time ended jobs spent in each phase", ["kind", "phase"])

    def _models(self) -> Iterator[Metric]:
        try:
            models = self.store.list_models()
        except (StoreError, OSError):
            return
        counts = Tally(str(m.get("status")) for m in models)
        gauge = GaugeMetricFamily("zerounlearn_models", "Registered models by status",
                                  labels=["status"])
        for status in ("preparing", "ready", "failed"):
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge

    def _redis(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("zerounlearn_redis_up", "1 when Redis answered this scrape")
        try:
            depth = len(self.queue.queue)
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
        yield _gauge("zerounlearn_queue_depth", "Jobs waiting in the queue", "queue", name, depth)
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
