"""JobIndex: what listing jobs needs to know of each job (creation time, model, kind,
status), kept in the API process, so a page of GET /v1/jobs reads the documents of
that page only.

Jobs are JSON documents in the store; their names are random ids, so neither the
creation order nor a filter can be had from the listing alone. The index is brought up
to date at each listing the way the job metrics are (app.metrics_jobs): one listing of
the job documents with a change stamp each (one directory scan, or the S3 listing) and
a read of only the documents that are new or whose stamp changed. A job that reached a
terminal status never changes those fields again, so the history is read once per
process. On a backend without stamps, jobs that have not ended are read again at each
listing. (With metadata in SQL this becomes an indexed query.)
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from store import ArtifactStore
from store.documents import TERMINAL_JOB_STATUSES
from store.errors import CorruptDocument, NotFound


@dataclass(frozen=True)
class JobEntry:
    """One job as the index knows it."""

    id: str
    created_at: str
    model_id: str
    kind: str
    status: str

    @property
    def sort_key(self) -> list[Any]:
        """Oldest first; the id breaks ties."""
        return [self.created_at, self.id]

    @classmethod
    def of(cls, job: dict[str, Any]) -> JobEntry:
        return cls(str(job["id"]), str(job.get("created_at") or ""),
                   str(job.get("model_id")), str(job.get("kind")), str(job.get("status")))


class JobIndex:
    """Job entries by id, refreshed from the store's listing (module docstring)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._entries: dict[str, tuple[str | None, JobEntry]] = {}  # id -> (stamp, entry)
        self._lock = threading.Lock()
        self.last_read = 0  # documents the last refresh read (for tests)

    def refresh(self) -> list[JobEntry]:
        """Every job's entry, up to date as of now."""
        with self._lock:
            stamps = self.store.job_stamps()
            for job_id in [j for j in self._entries if j not in stamps]:
                del self._entries[job_id]
            read = 0
            for job_id, stamp in stamps.items():
                known = self._entries.get(job_id)
                if known is not None and (known[1].status in TERMINAL_JOB_STATUSES
                                          or (stamp is not None and stamp == known[0])):
                    continue
                with contextlib.suppress(NotFound, CorruptDocument):
                    entry = JobEntry.of(self.store.get_job(job_id))
                    read += 1
                    self._entries[job_id] = (stamp, entry)
            self.last_read = read
            return [entry for _, entry in self._entries.values()]
