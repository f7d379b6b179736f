"""The PostgreSQL store's job queue, shared by every process (DESIGN §6): enqueue (job
row and payload in one statement, idempotency keys), claims, outcomes (fail, cancel,
requeue), purge, payloads, and the bytes waiting.

- A job is claimed by a worker that first takes a session-level advisory lock on
  its dataset, then the dataset's oldest pending job (`FOR UPDATE SKIP LOCKED`).
  The lock is held until the job is finished, so one dataset's jobs run one at a
  time, in `seq` order, across every process.
- A worker that dies loses its connection, PostgreSQL drops its lock and rolls back
  its open transaction; the job is still `running` and is the dataset's oldest
  pending job, so the next worker to lock the dataset runs it again. The write and
  the job's outcome commit together, so it is applied exactly once.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from pushbase.decode import RowError
from pushbase.errors import PushbaseError
from pushbase.jobs.model import (
    MAX_GROUP_JOBS,
    Job,
    JobError,
    JobPhase,
    JobStatus,
    idempotency_conflict,
    mark_queued,
    mark_running,
    record_row_errors,
    take_group,
)
from pushbase.payload import Payload
from pushbase.settings import Settings
from pushbase.storage import sql
from pushbase.storage.base import GroupRule
from pushbase.storage.postgres.compression import StoredPayload, pack, unpack
from pushbase.storage.postgres.copies import PayloadCopies
from pushbase.storage.postgres.gauge import QueueGauge
from pushbase.storage.spool import Spool
from pushbase.storage.sql import job_filter


class QueuePart:
    """Jobs of `PostgresStore`; uses its `pool`, `_conn` and `_lock_key`."""

    settings: Settings
    spool: Spool
    copies: PayloadCopies
    queue: QueueGauge
    pool: ConnectionPool | None
    _keep_copies: bool
    _claims: dict[str, psycopg.Connection]  # job id → connection holding its lock
    _claims_lock: threading.Lock

    def job_counts(self) -> dict[JobStatus, int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT status, count(*) FROM _pb_jobs GROUP BY status").fetchall()
        return {status: 0 for status in JobStatus} | {JobStatus(s): n for s, n in rows}

    def incoming_path(self) -> Path:
        return self.spool.new_incoming()

    def enqueue(self, job: Job, payload: Payload | None, window_start: datetime) -> Job:
        stored = pack(payload) if payload is not None else None  # durable once committed
        try:
            with self.copies.keeping(job.id, payload if self._keep_copies else None):
                recorded = self._record(job, stored, window_start)
        except BaseException:
            self.copies.drop(job.id)
            raise
        if recorded.id != job.id:  # an earlier push with the same idempotency key
            self.copies.drop(job.id)
        else:
            self.queue.added(job.bytes)
        return recorded

    def _record(self, job: Job, stored: StoredPayload | None, window_start: datetime) -> Job:
        with self._conn() as conn:
            if job.idempotency_key is None:
                job.seq = self._insert_job(conn, job, stored)
                return job
            with conn.transaction():
                first = self._idempotent_match(conn, job, window_start)
                if first is not None:
                    return first
                job.seq = self._insert_job(conn, job, stored)
        return job

    @staticmethod
    def _insert_job(conn: psycopg.Connection, job: Job, stored: StoredPayload | None) -> int:
        """Record the job and its payload; its `seq`. One statement, so an acknowledgement
        waits for one round trip to a busy server, not five (BEGIN, …, COMMIT). The
        sequence number is drawn in the statement, so the stored document gets it there."""
        payload = (
            ", p AS (INSERT INTO _pb_payloads (job_id, data, codec) SELECT id, %s, %s FROM j)"
            if stored is not None
            else ""
        )
        return conn.execute(
            "WITH s AS (SELECT nextval(pg_get_serial_sequence('_pb_jobs', 'seq')) AS seq),"
            " j AS (INSERT INTO _pb_jobs SELECT %s, s.seq, %s, %s, %s, %s, %s,"
            " jsonb_set(%s::jsonb, '{seq}', to_jsonb(s.seq))::text FROM s RETURNING id, seq)"
            f"{payload} SELECT seq FROM j",
            [
                job.id, job.dataset_id, job.status.value, job.idempotency_key,
                job.created_at, job.bytes, job.model_dump_json(),
                *(stored or ()),
            ],
        ).fetchone()[0]  # fmt: skip

    def _idempotent_match(
        self, conn: psycopg.Connection, job: Job, window_start: datetime
    ) -> Job | None:
        # Concurrent pushes with one key queue up here; the unique index is the backstop.
        key = self._lock_key(f"idempotency:{job.dataset_id}:{job.idempotency_key}")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])
        row = conn.execute(
            "SELECT doc, created_at FROM _pb_jobs WHERE dataset_id = %s AND idempotency_key = %s",
            [job.dataset_id, job.idempotency_key],
        ).fetchone()
        if not row:
            return None
        first = Job.model_validate_json(row[0])
        if row[1] < window_start:  # expired: the key is free again
            conn.execute("UPDATE _pb_jobs SET idempotency_key = NULL WHERE id = %s", [first.id])
            return None
        if first.payload_hash != job.payload_hash:
            raise idempotency_conflict(first)
        return first

    def get_job(self, job_id: str) -> Job | None:
        with self._conn() as conn:
            row = conn.execute("SELECT doc FROM _pb_jobs WHERE id = %s", [job_id]).fetchone()
        return Job.model_validate_json(row[0]) if row else None

    def list_jobs(
        self,
        dataset_id: str | None,
        status: JobStatus | None,
        limit: int,
        datasets: list[str] | None,
    ) -> list[Job]:
        where, params = job_filter(
            dataset_id, status and status.value, datasets, param="%s", among="dataset_id = ANY(%s)"
        )
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT doc FROM _pb_jobs{where} ORDER BY seq DESC LIMIT %s", [*params, limit]
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def claim_jobs(self, busy_datasets: set[str], joins: GroupRule) -> list[Job]:
        assert self.pool is not None
        conn = self.pool.getconn()
        try:
            heads = conn.execute(
                "SELECT dataset_id FROM (SELECT DISTINCT ON (dataset_id) dataset_id, seq"
                " FROM _pb_jobs WHERE status IN ('queued', 'running') ORDER BY dataset_id, seq) h"
                " ORDER BY seq LIMIT 100"
            ).fetchall()
            for (dataset_id,) in heads:
                if dataset_id in busy_datasets:
                    continue
                group = self._claim_dataset(conn, dataset_id, joins)
                if group:
                    with self._claims_lock:
                        for job in group:
                            self._claims[job.id] = conn
                    return group
        except BaseException:
            self._give_back(conn)
            raise
        self.pool.putconn(conn)
        return []

    def _claim_dataset(
        self, conn: psycopg.Connection, dataset_id: str, joins: GroupRule
    ) -> list[Job]:
        """Lock the dataset for this connection and take its oldest pending jobs."""
        lock = self._lock_key(f"dataset:{dataset_id}")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", [lock]).fetchone()[0]:
            return []  # another worker is on this dataset
        with conn.transaction():
            head = conn.execute(
                "SELECT doc, seq = (SELECT min(seq) FROM _pb_jobs WHERE dataset_id = %s"
                "   AND status IN ('queued', 'running')) FROM _pb_jobs"
                " WHERE dataset_id = %s AND status IN ('queued', 'running')"
                " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                [dataset_id, dataset_id],
            ).fetchone()
            # Not the head (a cancel holds it right now): leave the dataset for later.
            if head is not None and head[1]:
                first = Job.model_validate_json(head[0])
                # Pending, not only queued: a dead worker's group left several jobs running.
                following = conn.execute(
                    "SELECT doc FROM _pb_jobs WHERE dataset_id = %s"
                    " AND status IN ('queued', 'running') AND seq > %s"
                    " ORDER BY seq LIMIT %s FOR UPDATE",
                    [dataset_id, first.seq, MAX_GROUP_JOBS - 1],
                ).fetchall()
                candidates = [first, *(Job.model_validate_json(r[0]) for r in following)]
                group = take_group(candidates, joins)
                for job in group:
                    mark_running(job)
                    self._save_job(conn, job)
                return group
        conn.execute("SELECT pg_advisory_unlock(%s)", [lock])
        return []

    def queued_after(self, dataset_id: str, after_seq: int, limit: int) -> list[Job]:
        with self._conn() as conn:
            rows = conn.execute(sql.queued_after("%s"), [dataset_id, after_seq, limit]).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def release(self, job_id: str) -> None:
        """Give the claim's connection (and its dataset lock) back once no job holds it."""
        with self._claims_lock:
            conn = self._claims.pop(job_id, None)
            still_used = conn is not None and any(c is conn for c in self._claims.values())
        if conn is not None and not still_used:
            self._give_back(conn)

    def _give_back(self, conn: psycopg.Connection) -> None:
        assert self.pool is not None
        try:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            pass  # a broken connection: the pool discards it and PostgreSQL drops its locks
        self.pool.putconn(conn)

    @staticmethod
    def _save_job(conn: psycopg.Connection, job: Job) -> None:
        conn.execute(
            "UPDATE _pb_jobs SET status = %s, doc = %s WHERE id = %s",
            [job.status.value, job.model_dump_json(), job.id],
        )

    def prepare_to_run(self) -> None:
        self._keep_copies = True

    def payload_file(self, job: Job) -> Path | None:
        return self.copies.path(job)

    def read_payload(self, job: Job) -> bytes:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT data, codec FROM _pb_payloads WHERE job_id = %s", [job.id]
            ).fetchone()
        if row is None:
            raise PushbaseError("payload_missing", "the job's payload is gone", 500)
        return unpack(bytes(row[0]), row[1], job.bytes)

    def set_phase(self, job_id: str, phase: JobPhase, progress: int) -> None:
        job = self.get_job(job_id)
        if job is None:
            return
        job.phase, job.progress = phase, progress
        with self._conn() as conn:
            self._save_job(conn, job)

    def cancel_job(self, job_id: str) -> Job | None:
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "SELECT doc FROM _pb_jobs WHERE id = %s AND status = 'queued' FOR UPDATE",
                [job_id],
            ).fetchone()
            if row is None:
                return None
            job = Job.model_validate_json(row[0])
            job.status, job.finished_at = JobStatus.cancelled, datetime.now(UTC)
            self._save_job(conn, job)
            conn.execute("DELETE FROM _pb_payloads WHERE job_id = %s", [job_id])
        self.copies.drop(job_id)
        self.queue.removed(job.bytes)
        return job

    def _finish(self, conn: psycopg.Connection, job: Job) -> None:
        self._save_job(conn, job)
        conn.execute("DELETE FROM _pb_payloads WHERE job_id = %s", [job.id])
        self.copies.drop(job.id)  # if the transaction fails, the job runs again from the row

    def fail_job(self, job: Job, error: JobError, errors: list[RowError] | None = None) -> Job:
        job.status, job.phase, job.error = JobStatus.failed, None, error
        job.finished_at = datetime.now(UTC)
        if errors:
            record_row_errors(job, errors, self.settings)
        with self._conn() as conn, conn.transaction():
            self._finish(conn, job)
        self.queue.removed(job.bytes)
        return job

    def requeue(self, jobs: list[Job]) -> None:
        # Shown as queued again; a claim also takes jobs left `running` once their
        # dataset lock is free, so this is for readers, not for correctness. Only jobs
        # still running: after a COMMIT whose answer was lost, a job may have ended.
        for job in jobs:
            mark_queued(job)
        with self._conn() as conn, conn.transaction():
            for job in jobs:
                conn.execute(
                    "UPDATE _pb_jobs SET status = %s, doc = %s WHERE id = %s"
                    " AND status = 'running'",
                    [job.status.value, job.model_dump_json(), job.id],
                )

    def recover(self) -> int:
        return 0  # a dead worker's job is retried as soon as its dataset lock is free

    def purge(self, before: datetime) -> int:
        with self._conn() as conn, conn.transaction():
            return conn.execute(sql.purge_jobs("%s"), [before]).rowcount

    def pending_bytes(self) -> int:
        return self.queue.value()

    def known_pending_bytes(self) -> int | None:
        return self.queue.known()

    def _measure_pending_bytes(self) -> int:
        with self._conn() as conn:
            return conn.execute(
                "SELECT coalesce(sum(bytes), 0) FROM _pb_jobs WHERE status IN ('queued', 'running')"
            ).fetchone()[0]

    def idle(self) -> None:
        # Copies of jobs another process ran are never dropped by this one's workers.
        kept = self.copies.job_ids()
        if not kept:
            return
        with self._conn() as conn:
            live = conn.execute(
                "SELECT id FROM _pb_jobs WHERE id = ANY(%s) AND status IN ('queued', 'running')",
                [list(kept)],
            ).fetchall()
        for job_id in kept - {r[0] for r in live}:
            self.copies.drop(job_id)
