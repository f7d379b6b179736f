"""The embedded store's job queue: accepting jobs (into the inbox, recorded in the
catalog by a background registrar), listing and reading them, claiming groups, the
outcome of each (fail, cancel, requeue, recover after a crash), purging old ones, their
payloads in the spool and the bytes still waiting."""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from pushbase.decode import RowError
from pushbase.errors import InsufficientStorage, PushbaseError, StoreUnavailable
from pushbase.jobs.model import (
    MAX_GROUP_JOBS,
    Job,
    JobError,
    JobPhase,
    JobStatus,
    mark_queued,
    mark_running,
    record_row_errors,
    take_group,
)
from pushbase.payload import Payload
from pushbase.priority import lower_this_thread
from pushbase.settings import Settings
from pushbase.storage import sql
from pushbase.storage.base import GroupRule
from pushbase.storage.duckdb.ddl import naive
from pushbase.storage.duckdb.inbox import Inbox
from pushbase.storage.spool import Spool
from pushbase.storage.sql import job_filter

log = logging.getLogger("pushbase.store")

REGISTER_COALESCE_SECONDS = 0.05


class QueuePart:
    """Jobs of `DuckDBStore`; uses its `_db`, `_cursor` and `_transaction`."""

    settings: Settings
    spool: Spool
    inbox: Inbox
    _db: duckdb.DuckDBPyConnection | None
    _jobs_lock: threading.Lock  # job state transitions: enqueue, claim, cancel
    _register_lock: threading.Lock
    _accept_lock: threading.Lock  # numbers jobs in acceptance order
    _phases: dict[str, tuple[JobPhase, int]]  # running jobs' progress
    _seq: int
    _wake_registrar: threading.Event
    _closing: threading.Event

    def job_counts(self) -> dict[JobStatus, int]:
        self._register()  # accepted jobs not yet recorded count too
        with self._cursor() as cur:
            rows = cur.execute("SELECT status, count(*) FROM _pb_jobs GROUP BY status").fetchall()
        return {status: 0 for status in JobStatus} | {JobStatus(s): n for s, n in rows}

    def incoming_path(self) -> Path:
        return self.spool.new_incoming()

    def enqueue(self, job: Job, payload: Payload | None, window_start: datetime) -> Job:
        # Not the jobs lock: claims hold that across DuckDB statements, which may wait for a
        # large commit. Acceptance touches only files and memory, so it never waits for them;
        # the lock only numbers jobs, and their files are made durable side by side.
        with self._accept_lock:
            first = None
            if job.idempotency_key is not None:
                first = self.inbox.first_with_key(job, window_start)
            if first is None:
                self._seq += 1
                job.seq = self._seq
                self.inbox.reserve(job)
        if first is not None:
            if self.inbox.written(first):
                return self.get_job(first.id) or first
            return self.enqueue(job, payload, window_start)  # the first one failed: be it
        self.inbox.accept(job, payload)
        self._wake_registrar.set()
        return job

    def _register(self) -> None:
        """Record accepted jobs in the catalog, in acceptance order, in one transaction."""
        with self._register_lock:
            jobs = self.inbox.pending()
            if not jobs or self._db is None:
                return
            # One Arrow-sourced statement: executemany binds row by row, holding the GIL.
            rows = pa.table(
                {
                    "id": [j.id for j in jobs],
                    "seq": pa.array([j.seq for j in jobs], pa.int64()),
                    "dataset_id": [j.dataset_id for j in jobs],
                    "status": [j.status.value for j in jobs],
                    "idempotency_key": pa.array([j.idempotency_key for j in jobs], pa.string()),
                    "created_at": pa.array([naive(j.created_at) for j in jobs], pa.timestamp("us")),
                    "bytes": pa.array([j.bytes for j in jobs], pa.int64()),
                    "doc": [j.model_dump_json() for j in jobs],
                }
            )
            with self._transaction() as cur:
                cur.register("_pb_accepted", rows)
                try:
                    cur.execute(
                        "INSERT INTO _pb_jobs SELECT * FROM _pb_accepted ON CONFLICT DO NOTHING"
                    )
                finally:
                    cur.unregister("_pb_accepted")
            self.inbox.registered(jobs)

    def _registrar_loop(self) -> None:
        lower_this_thread()
        failing = False
        while not self._closing.is_set():
            self._wake_registrar.wait(1.0)
            self._wake_registrar.clear()
            try:
                self._register()
                failing = False
            except StoreUnavailable as exc:  # a full disk, a reopening database: it waits
                if not failing:
                    log.warning("recording accepted jobs waits: %s (%s)", exc.message, exc.code)
                failing = True
                self._closing.wait(0.5)
            except Exception:
                log.exception("recording accepted jobs failed; retrying")
                self._closing.wait(0.5)
            # A burst of pushes is recorded in a few transactions, not one per push; claims
            # and job lists record what is pending themselves, so nothing waits for this.
            self._closing.wait(REGISTER_COALESCE_SECONDS)

    def get_job(self, job_id: str) -> Job | None:
        job = self.inbox.get(job_id)
        if job is None:
            with self._cursor() as cur:
                row = cur.execute("SELECT doc FROM _pb_jobs WHERE id = ?", [job_id]).fetchone()
            job = Job.model_validate_json(row[0]) if row else None
        if job is not None and job.id in self._phases:
            # Still this process's to finish: its write may have committed, but what comes
            # after (the catalog in memory taking columns the write added) has not, and a
            # client that sees the job end must see all of it.
            job.status, job.finished_at = JobStatus.running, None
            job.phase, job.progress = self._phases[job.id]
        return job

    def list_jobs(
        self,
        dataset_id: str | None,
        status: JobStatus | None,
        limit: int,
        datasets: list[str] | None,
    ) -> list[Job]:
        try:
            self._register()
            unrecorded: list[Job] = []
        except StoreUnavailable:  # the disk is full, say: the list still answers
            unrecorded = [
                job.model_copy(deep=True)
                for job in self.inbox.pending()
                if (dataset_id is None or job.dataset_id == dataset_id)
                and (status is None or job.status is status)
                and (datasets is None or job.dataset_id in datasets)
            ]
        where, params = job_filter(
            dataset_id,
            status and status.value,
            datasets,
            param="?",
            among="list_contains(?, dataset_id)",
        )
        with self._cursor() as cur:
            rows = cur.execute(
                f"SELECT doc FROM _pb_jobs{where} ORDER BY seq DESC LIMIT ?", [*params, limit]
            ).fetchall()
        jobs = [Job.model_validate_json(r[0]) for r in rows]
        if unrecorded:
            known = {job.id for job in jobs}
            jobs = [*jobs, *(job for job in unrecorded if job.id not in known)]
            jobs = sorted(jobs, key=lambda j: j.seq, reverse=True)[:limit]
        return jobs

    def claim_jobs(self, busy_datasets: set[str], joins: GroupRule) -> list[Job]:
        with contextlib.suppress(InsufficientStorage):  # jobs recorded before still run
            self._register()
        with self._jobs_lock, self._transaction() as cur:
            head = cur.execute(
                "SELECT dataset_id FROM _pb_jobs WHERE status = 'queued'"
                " AND NOT list_contains(?, dataset_id) ORDER BY seq LIMIT 1",
                [sorted(busy_datasets)],
            ).fetchall()
            if not head:
                return []
            candidates = cur.execute(
                "SELECT doc FROM _pb_jobs WHERE status = 'queued' AND dataset_id = ?"
                " ORDER BY seq LIMIT ?",
                [head[0][0], MAX_GROUP_JOBS],
            ).fetchall()
            group = take_group([Job.model_validate_json(r[0]) for r in candidates], joins)
            for job in group:
                mark_running(job)
            self._save_jobs(cur, group)
            return group

    @staticmethod
    def _save_job(cur: duckdb.DuckDBPyConnection, job: Job) -> None:
        QueuePart._save_jobs(cur, [job])

    @staticmethod
    def _save_jobs(cur: duckdb.DuckDBPyConnection, jobs: list[Job]) -> None:
        """One UPDATE for a whole group: a statement per job costs ~1 ms each."""
        if len(jobs) == 1:
            job = jobs[0]
            cur.execute(
                "UPDATE _pb_jobs SET status = ?, doc = ? WHERE id = ?",
                [job.status.value, job.model_dump_json(), job.id],
            )
            return
        saved = pa.table(
            {
                "id": [j.id for j in jobs],
                "status": [j.status.value for j in jobs],
                "doc": [j.model_dump_json() for j in jobs],
            }
        )
        cur.register("_pb_saved", saved)
        try:
            cur.execute(
                "UPDATE _pb_jobs SET status = s.status, doc = s.doc FROM _pb_saved s"
                " WHERE _pb_jobs.id = s.id"
            )
        finally:
            cur.unregister("_pb_saved")

    def payload_file(self, job: Job) -> Path | None:
        return self.spool.payload_file(job.id)

    def read_payload(self, job: Job) -> bytes:
        try:
            return self.spool.read(job)
        except FileNotFoundError as exc:
            raise PushbaseError("payload_missing", "the job's payload is gone", 500) from exc

    def set_phase(self, job_id: str, phase: JobPhase, progress: int) -> None:
        # Kept in memory: a running job belongs to this process, and after a crash it
        # starts again from `queued` anyway.
        self._phases[job_id] = (phase, progress)

    def cancel_job(self, job_id: str) -> Job | None:
        self._register()
        with self._jobs_lock:
            job = self.get_job(job_id)
            if job is None or job.status is not JobStatus.queued:
                return None
            job.status = JobStatus.cancelled
            job.finished_at = datetime.now(UTC)
            with self._cursor() as cur:
                self._save_job(cur, job)
        self._ended(job)
        return job

    def _ended(self, job: Job) -> None:
        """A job is finished (any way): its payload and in-memory traces go."""
        self.spool.discard(job.id)
        self._phases.pop(job.id, None)
        self.inbox.finished(job)

    def fail_job(self, job: Job, error: JobError, errors: list[RowError] | None = None) -> Job:
        job.status, job.phase, job.error = JobStatus.failed, None, error
        job.finished_at = datetime.now(UTC)
        if errors:
            record_row_errors(job, errors, self.settings)
        with self._cursor() as cur:
            self._save_job(cur, job)
        self._ended(job)
        return job

    def requeue(self, jobs: list[Job]) -> None:
        # Only jobs the catalog still has running: a write whose COMMIT raised may yet
        # have been recorded (DuckDB failed after writing its log), and must not run twice.
        with self._jobs_lock, self._transaction() as cur:
            found = cur.execute(
                "SELECT id, status FROM _pb_jobs WHERE list_contains(?, id)",
                [[job.id for job in jobs]],
            ).fetchall()
            statuses = {job_id: JobStatus(status) for job_id, status in found}
            waiting = [job for job in jobs if statuses.get(job.id) is JobStatus.running]
            for job in waiting:
                mark_queued(job)
            if waiting:
                self._save_jobs(cur, waiting)
        for job in jobs:
            self._phases.pop(job.id, None)
            status = statuses.get(job.id)
            if status is not None and status.finished and self.spool.payload_file(job.id):
                self._ended(job)  # finished after all: its payload goes

    def recover(self) -> int:
        with self._jobs_lock, self._cursor() as cur:
            rows = cur.execute("SELECT doc FROM _pb_jobs WHERE status = 'running'").fetchall()
            jobs = [Job.model_validate_json(doc) for (doc,) in rows]
            for job in jobs:
                mark_queued(job)
            if jobs:
                self._save_jobs(cur, jobs)
        return len(rows)

    def purge(self, before: datetime) -> int:
        self.inbox.forget_before(
            datetime.now(UTC) - timedelta(seconds=self.settings.idempotency_window_seconds)
        )
        with self._cursor() as cur:
            return cur.execute(sql.purge_jobs("?"), [naive(before)]).fetchone()[0]

    def queued_after(self, dataset_id: str, after_seq: int, limit: int) -> list[Job]:
        with self._cursor() as cur:
            rows = cur.execute(sql.queued_after("?"), [dataset_id, after_seq, limit]).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def release(self, job_id: str) -> None:
        pass  # one process: the runner's own bookkeeping orders the jobs

    def pending_bytes(self) -> int:
        return self.inbox.waiting_bytes

    def _drop_orphan_payloads(self) -> None:
        """Payload files whose job is finished or was never accepted."""
        with self._cursor() as cur:
            live = {
                r[0]
                for r in cur.execute(
                    "SELECT id FROM _pb_jobs WHERE status IN ('queued', 'running')"
                ).fetchall()
            }
        for job_id in self.spool.job_ids() - live:
            self.spool.discard(job_id)
