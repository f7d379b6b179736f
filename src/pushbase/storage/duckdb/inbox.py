"""Accepted jobs that the embedded catalog has not recorded yet.

An acknowledgement must not wait for DuckDB: a large write holds its commit and
checkpoint locks for long stretches. So the embedded store accepts a job by
making one file durable in the spool — the payload with the job document, see
`spool.py` — and records the job in its catalog a moment later (`registered`).
After a crash, spool files whose job the catalog lacks are recorded on start. In
memory it keeps what the request path asks: the pending jobs themselves, the
idempotency keys of the last 24 hours, and the bytes waiting to be applied.

Files are written side by side: a push never waits for another push's fsync, which
under a heavy write can take tens of milliseconds each. A job is numbered first
(`reserve`), then made durable (`accept`); it becomes pending only once every job
numbered before it is durable or given up, so the catalog still learns jobs in
acceptance order.
"""

from __future__ import annotations

import threading
from datetime import datetime

from pushbase.jobs.model import Job, idempotency_conflict
from pushbase.payload import Payload
from pushbase.storage.spool import Spool


class Inbox:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._pending: dict[str, Job] = {}
        self._writing: dict[str, tuple[Job, threading.Event]] = {}  # reserved, not yet durable
        self._idempotency: dict[tuple[str, str], Job] = {}  # (dataset, key) → first job
        self._lock = threading.Lock()
        self.waiting_bytes = 0  # payload bytes of jobs not finished

    def recover(self, recorded: set[str]) -> list[Job]:
        """Jobs accepted before a crash whose catalog rows are missing, oldest first."""
        jobs = [job for job in self.spool.jobs() if job.id not in recorded]
        for job in jobs:
            self._pending[job.id] = job
        return sorted(jobs, key=lambda j: j.seq)

    def remember(self, job: Job) -> None:
        """Index a job's idempotency key (on start, for jobs of the last window)."""
        if job.idempotency_key is not None:
            self._idempotency.setdefault((job.dataset_id, job.idempotency_key), job)

    def first_with_key(self, job: Job, window_start: datetime) -> Job | None:
        """The job first accepted with this job's idempotency key, or a 409 on another payload."""
        assert job.idempotency_key is not None
        first = self._idempotency.get((job.dataset_id, job.idempotency_key))
        if first is None or first.created_at < window_start:
            return None
        if first.payload_hash != job.payload_hash:
            raise idempotency_conflict(first)
        return first

    def reserve(self, job: Job) -> None:
        """Claim the job's number and idempotency key (under the store's accept lock)."""
        with self._lock:
            self._writing[job.id] = (job, threading.Event())
            if job.idempotency_key is not None:
                self._idempotency[(job.dataset_id, job.idempotency_key)] = job

    def accept(self, job: Job, payload: Payload | None) -> None:
        """Make a reserved job durable with its payload (blocking), then pending; on
        failure the job is given up and its idempotency key freed."""
        try:
            self.spool.keep(job, payload)
        except BaseException:
            with self._lock:
                _, written = self._writing.pop(job.id)
                key = (job.dataset_id, job.idempotency_key)
                if self._idempotency.get(key) is job:
                    del self._idempotency[key]
            written.set()
            raise
        with self._lock:
            _, written = self._writing.pop(job.id)
            self._pending[job.id] = job
            self.waiting_bytes += job.bytes
        written.set()

    def written(self, first: Job) -> bool:
        """Whether the first job with an idempotency key was made durable, waiting while
        its file is being written (False: it was given up, the key is free again)."""
        with self._lock:
            entry = self._writing.get(first.id)
        if entry is not None:
            entry[1].wait()
        with self._lock:
            return self._idempotency.get((first.dataset_id, first.idempotency_key)) is first

    def pending(self) -> list[Job]:
        """Pending jobs in acceptance order, up to the first one still being written."""
        with self._lock:
            jobs = sorted(self._pending.values(), key=lambda j: j.seq)
            if self._writing:
                first_unwritten = min(job.seq for job, _ in self._writing.values())
                jobs = [job for job in jobs if job.seq < first_unwritten]
            return jobs

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._pending.get(job_id)
        return job.model_copy(deep=True) if job else None

    def registered(self, jobs: list[Job]) -> None:
        """The catalog has these jobs now (their files stay until they finish)."""
        with self._lock:
            for job in jobs:
                self._pending.pop(job.id, None)

    def finished(self, job: Job) -> None:
        with self._lock:
            self.waiting_bytes = max(0, self.waiting_bytes - job.bytes)

    def forget_before(self, cutoff: datetime) -> None:
        with self._lock:
            for key in [k for k, j in self._idempotency.items() if j.created_at < cutoff]:
                del self._idempotency[key]
