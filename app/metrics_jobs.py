"""JobTally: the job metrics (counts by kind and status, run and phase durations) kept
up to date in the background, so a /metrics scrape reads no job document.

A scrape used to read every job document ever stored: time proportional to the whole
history, on the API process (GIL) that answers requests. Now a thread refreshes the
tally every `refresh_s` seconds, and a scrape only turns its running totals into metric
families (a few hundred numbers, whatever the history).

A refresh reads every job's change stamp (`ArtifactStore.job_stamps`: one query of the
jobs table's id, updated_at and status, no document) and reads only the documents that
are new or whose stamp changed. A document that reached a terminal status never
changes again (no transition leaves one), so the history is read once per process;
a job still queued or running is read again when its stamp changes, and at the latest
after `recheck_s` (a safety net, spread with jitter so a backlog is not read at once).

Staleness: the figures describe the store as of the last refresh, which started at
most `refresh_s` + the time of one refresh ago (refreshes are spaced further apart only
when one takes over MAX_DUTY of that: a history of hundreds of thousands of jobs). The
job families are left out of a scrape once the last good refresh is older than
`max_age_s` (refreshes failing, or not done yet at start-up): no figures rather than
old ones. `zerounlearn_job_metrics_age_seconds` says how old they are.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from store import JOB_KINDS, JOB_STATUSES, TERMINAL_JOB_STATUSES, ArtifactStore, StoreError
from store.enums import JobStatus
from store.errors import CorruptDocument, NotFound

logger = logging.getLogger(__name__)

JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
"""Seconds: job and phase durations span a tiny model on CPU to SmolLM2 preparation."""
REFRESH_S = 5.0
RECHECK_S = 300.0
MAX_AGE_S = 60.0
MAX_DUTY = 0.05
"""Most of the process's time the refresh thread may take (a refresh of T seconds is
followed by a wait of at least T / MAX_DUTY)."""


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
        finish = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((finish - begin).total_seconds(), 0.0)


@dataclass(frozen=True)
class Contribution:
    """What one job document adds to the tally."""

    kind: str
    status: str
    duration: float | None  # started -> finished, for succeeded and failed jobs
    phases: tuple[tuple[str, float], ...]  # (phase, seconds) from its `timings`

    @classmethod
    def of(cls, job: dict[str, Any]) -> Contribution:
        kind, status = str(job.get("kind")), str(job.get("status"))
        duration = None
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            duration = _seconds(job.get("started_at"), job.get("finished_at"))
        timings = job.get("timings") or {}
        phases = tuple((str(phase), float(spent)) for phase, spent in
                       (timings.items() if isinstance(timings, dict) else ())
                       if isinstance(spent, int | float) and not isinstance(spent, bool))
        return cls(kind, status, duration, phases)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


class Buckets:
    """Running cumulative-bucket histograms keyed by label tuples (add and remove)."""

    def __init__(self) -> None:
        # labels -> [count per bucket (le), +Inf count, sum]
        self.rows: dict[tuple[str, ...], list[float]] = {}

    def add(self, labels: tuple[str, ...], value: float, sign: int = 1) -> None:
        row = self.rows.setdefault(labels, [0.0] * (len(JOB_BUCKETS) + 2))
        for i, bound in enumerate(JOB_BUCKETS):
            if value <= bound:
                row[i] += sign
        row[-2] += sign
        row[-1] += sign * value
        if row[-2] <= 0:
            del self.rows[labels]

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, row in sorted(self.rows.items()):
            buckets = [(str(float(b)), row[i]) for i, b in enumerate(JOB_BUCKETS)]
            buckets.append(("+Inf", row[-2]))
            family.add_metric(list(labels), buckets, sum_value=row[-1])
        return family


@dataclass
class Seen:
    """A job as this tally last read it."""

    stamp: str | None
    contribution: Contribution
    recheck_at: float  # monotonic; +inf once terminal


@dataclass
class RefreshStats:
    jobs: int = 0
    read: int = 0  # documents read by the last refresh
    seconds: float = 0.0


@dataclass
class Totals:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    durations: Buckets = field(default_factory=Buckets)
    phases: Buckets = field(default_factory=Buckets)

    def apply(self, c: Contribution, sign: int) -> None:
        self.counts[(c.kind, c.status)] += sign
        if c.duration is not None:
            self.durations.add((c.kind, c.status), c.duration, sign)
        for phase, spent in c.phases:
            self.phases.add((c.kind, phase), spent, sign)


class JobTally:
    """Job metrics kept current by a background thread (module docstring)."""

    def __init__(self, store: ArtifactStore, refresh_s: float = REFRESH_S,
                 recheck_s: float = RECHECK_S, max_age_s: float = MAX_AGE_S) -> None:
        self.store = store
        self.refresh_s, self.recheck_s, self.max_age_s = refresh_s, recheck_s, max_age_s
        self.seen: dict[str, Seen] = {}  # only the refreshing thread touches it
        self.totals = Totals()  # read by scrapes, changed by refreshes: under _lock
        self.refreshed_at: float | None = None  # monotonic start of the last good refresh
        self.last = RefreshStats()
        self.rng = random.Random()
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # in every job family's HELP: how stale the figures may be
        self.note = (f"from the store, refreshed in the background every {refresh_s:g} s "
                     f"or more: typically under {refresh_s:g} s stale, never shown more than "
                     f"{max_age_s:g} s stale (zerounlearn_job_metrics_age_seconds)")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="job-tally", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except (StoreError, OSError) as exc:
                logger.warning("job metrics refresh failed: %s", type(exc).__name__)
            except Exception as exc:  # the loop must survive anything
                logger.error("job metrics refresh failed unexpectedly: %s",
                             type(exc).__name__)
            # a huge history (the listing grows with it) never takes over MAX_DUTY of the
            # process: wait longer instead; max_age_s still bounds what a scrape shows
            self._stop.wait(max(self.refresh_s, self.last.seconds / MAX_DUTY))

    # ------------------------------------------------------------- refresh
    def refresh(self) -> RefreshStats:
        """List the jobs, read the new and changed ones, update the totals."""
        with self._refreshing:
            began, now = time.perf_counter(), time.monotonic()
            stamps = self.store.job_stamps()
            # (before, after) contributions; applied even when a read fails half-way, so
            # the totals always match `seen`
            changes: list[tuple[Contribution | None, Contribution | None]] = []
            read = 0
            try:
                for job_id in [j for j in self.seen if j not in stamps]:  # deleted
                    changes.append((self.seen.pop(job_id).contribution, None))
                for job_id, stamp in stamps.items():
                    old = self.seen.get(job_id)
                    if old is not None and old.recheck_at > now and (
                            old.contribution.terminal
                            or (stamp is not None and stamp == old.stamp)):
                        continue
                    try:
                        job = self.store.get_job(job_id)
                    except (NotFound, CorruptDocument):  # deleted since; not countable
                        continue
                    read += 1
                    new = Contribution.of(job)
                    recheck = (now + self.recheck_s * self.rng.uniform(0.5, 1.0)
                               if not new.terminal else float("inf"))
                    self.seen[job_id] = Seen(stamp, new, recheck)
                    if old is None or old.contribution != new:
                        changes.append((old.contribution if old else None, new))
            finally:
                with self._lock:
                    for before, after in changes:
                        if before is not None:
                            self.totals.apply(before, -1)
                        if after is not None:
                            self.totals.apply(after, +1)
            with self._lock:
                self.refreshed_at = now
                self.last = RefreshStats(len(stamps), read, time.perf_counter() - began)
            return self.last

    # --------------------------------------------------------------- scrape
    def families(self) -> Iterator[Metric]:
        """The job metric families from the running totals: no store access."""
        with self._lock:
            age = None if self.refreshed_at is None else time.monotonic() - self.refreshed_at
            fresh = age is not None and age <= self.max_age_s
            if fresh:
                counts = dict(self.totals.counts)
                durations = self.totals.durations.family(
                    "zerounlearn_job_duration_seconds",
                    f"Run time of ended jobs, started to finished; {self.note}",
                    ["kind", "status"])
                phases = self.totals.phases.family(
                    "zerounlearn_job_phase_duration_seconds",
                    f"Time ended jobs spent in each phase; {self.note}", ["kind", "phase"])
        if age is not None:
            gauge = GaugeMetricFamily(
                "zerounlearn_job_metrics_age_seconds",
                "Seconds since the job metrics were last refreshed from the store "
                f"(every {self.refresh_s:g} s; left out past {self.max_age_s:g} s)")
            gauge.add_metric([], age)
            yield gauge
        if not fresh:
            return
        jobs = GaugeMetricFamily("zerounlearn_jobs",
                                 f"Jobs by kind and status; {self.note}",
                                 labels=["kind", "status"])
        for kind in JOB_KINDS:
            for status in JOB_STATUSES:
                jobs.add_metric([kind, status], counts.get((kind, status), 0))
        yield jobs
        yield durations
        yield phases
