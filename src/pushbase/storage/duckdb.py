"""The embedded store: one DuckDB file plus a payload spool under PUSHBASE_DATA_DIR."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pushbase.auth import ApiKey
from pushbase.decode import RowError
from pushbase.errors import PushbaseError
from pushbase.jobs.model import (
    ATOMIC_ERROR,
    MAX_GROUP_JOBS,
    Job,
    JobError,
    JobPhase,
    JobStatus,
    mark_running,
    take_group,
)
from pushbase.schema import Column, ColumnType, Dataset
from pushbase.settings import Settings
from pushbase.storage.base import GroupRule, RowQuery, Store
from pushbase.storage.spool import Spool
from pushbase.storage.sql import quote, table_name
from pushbase.storage.writer import AtomicViolation, SqlWriter, Work, settle

SQL_TYPES = {
    ColumnType.string: "VARCHAR",
    ColumnType.integer: "BIGINT",
    ColumnType.number: "DOUBLE",
    ColumnType.boolean: "BOOLEAN",
    ColumnType.date: "DATE",
    ColumnType.datetime: "TIMESTAMP",  # UTC, µs
    ColumnType.json: "VARCHAR",  # JSON text; the catalog knows it is json
}

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE _pb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        "CREATE TABLE _pb_datasets (id VARCHAR PRIMARY KEY, doc VARCHAR NOT NULL)",
        "CREATE TABLE _pb_keys (id VARCHAR PRIMARY KEY, key_hash VARCHAR NOT NULL,"
        " doc VARCHAR NOT NULL, revoked BOOLEAN NOT NULL DEFAULT false)",
        "CREATE SEQUENCE _pb_job_seq",
        "CREATE TABLE _pb_jobs (id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL,"
        " dataset_id VARCHAR NOT NULL, status VARCHAR NOT NULL, idempotency_key VARCHAR,"
        " created_at TIMESTAMP NOT NULL, bytes BIGINT NOT NULL, doc VARCHAR NOT NULL)",
    ],
]


def column_ddl(column: Column) -> str:
    ddl = f"{quote(column.name)} {SQL_TYPES[column.type]}"
    return ddl if column.nullable else f"{ddl} NOT NULL"


def _naive(stamp: datetime) -> datetime:
    return stamp.astimezone(UTC).replace(tzinfo=None)


class DuckDBStore(Store):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self._db: duckdb.DuckDBPyConnection | None = None
        self._jobs_lock = threading.Lock()  # job state transitions: enqueue, claim, cancel

    # life cycle -------------------------------------------------------
    def open(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool.prepare()
        self._db = duckdb.connect(str(self.settings.duckdb_path))
        # Checkpoints rewrite the keyed tables and their indexes: not after every group.
        self._db.execute(f"SET checkpoint_threshold = '{self.settings.duckdb_checkpoint_mb}MB'")
        with self._cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS _pb_version (version INTEGER)")
            row = cur.execute("SELECT max(version) FROM _pb_version").fetchone()
            current = row[0] or 0
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                cur.execute("BEGIN")
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO _pb_version VALUES (?)", [version])
                cur.execute("COMMIT")
        self._drop_orphan_payloads()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def ping(self) -> bool:
        try:
            with self._cursor() as cur:
                cur.execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._db is None:
            raise PushbaseError("store_closed", "the store is not open", 503)
        cur = self._db.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._cursor() as cur:
            cur.execute("BEGIN")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    # datasets ---------------------------------------------------------
    def create_dataset(self, dataset: Dataset) -> None:
        columns = ", ".join(column_ddl(c) for c in dataset.columns)
        if dataset.unique_key:
            columns += f", PRIMARY KEY ({', '.join(quote(k) for k in dataset.unique_key)})"
        try:
            with self._transaction() as cur:
                if cur.execute("SELECT 1 FROM _pb_datasets WHERE id = ?", [dataset.id]).fetchone():
                    raise PushbaseError(
                        "dataset_exists", f"dataset {dataset.id!r} already exists", 409
                    )
                cur.execute(f"CREATE TABLE {table_name(dataset.id)} ({columns})")
                cur.execute(
                    "INSERT INTO _pb_datasets VALUES (?, ?)",
                    [dataset.id, self._dataset_doc(dataset)],
                )
        except duckdb.ConstraintException as exc:
            raise PushbaseError(
                "dataset_exists", f"dataset {dataset.id!r} already exists", 409
            ) from exc
        except duckdb.CatalogException as exc:
            raise PushbaseError(
                "dataset_exists", f"dataset {dataset.id!r} already exists", 409
            ) from exc

    @staticmethod
    def _dataset_doc(dataset: Dataset) -> str:
        return dataset.model_dump_json(exclude={"row_count"})

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        with self._cursor() as cur:
            row = cur.execute("SELECT doc FROM _pb_datasets WHERE id = ?", [dataset_id]).fetchone()
        return Dataset.model_validate_json(row[0]) if row else None

    def list_datasets(self) -> list[Dataset]:
        with self._cursor() as cur:
            rows = cur.execute("SELECT doc FROM _pb_datasets ORDER BY id").fetchall()
        return [Dataset.model_validate_json(r[0]) for r in rows]

    def update_dataset(self, dataset: Dataset, add_columns: list[Column]) -> None:
        with self._transaction() as cur:
            self._update_dataset(cur, dataset, add_columns)

    def _update_dataset(
        self, cur: duckdb.DuckDBPyConnection, dataset: Dataset, add_columns: list[Column]
    ) -> None:
        for column in add_columns:
            # New columns are nullable in storage: existing rows have no value for them.
            cur.execute(
                f"ALTER TABLE {table_name(dataset.id)} ADD COLUMN"
                f" {quote(column.name)} {SQL_TYPES[column.type]}"
            )
        cur.execute(
            "UPDATE _pb_datasets SET doc = ? WHERE id = ?", [self._dataset_doc(dataset), dataset.id]
        )

    def drop_dataset(self, dataset_id: str) -> bool:
        with self._transaction() as cur:
            found = cur.execute("DELETE FROM _pb_datasets WHERE id = ?", [dataset_id]).fetchone()[0]
            if found:
                cur.execute(f"DROP TABLE IF EXISTS {table_name(dataset_id)}")
        return bool(found)

    def row_count(self, dataset_id: str) -> int:
        with self._cursor() as cur:
            return cur.execute(f"SELECT count(*) FROM {table_name(dataset_id)}").fetchone()[0]

    # rows -------------------------------------------------------------
    def read_rows(self, dataset: Dataset, query: RowQuery) -> tuple[pa.Table, int]:
        where, params = self._where(query.filters)
        order = ", ".join(f"{quote(c)} {'DESC' if desc else 'ASC'}" for c, desc in query.order_by)
        if not order:
            order = ", ".join(quote(k) for k in dataset.unique_key) or "rowid"
        columns = ", ".join(quote(c.name) for c in dataset.columns)
        table = table_name(dataset.id)
        with self._cursor() as cur:
            total = cur.execute(f"SELECT count(*) FROM {table}{where}", params).fetchall()[0][0]
            page = cur.sql(
                f"SELECT {columns} FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                params=[*params, query.limit, query.offset],
            ).to_arrow_table()
        return page, total

    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        if not filters:
            return "", []
        clauses = [
            f"{quote(name)} IS NULL" if value is None else f"{quote(name)} = ?"
            for name, value in filters.items()
        ]
        return " WHERE " + " AND ".join(clauses), [v for v in filters.values() if v is not None]

    def export_batches(self, dataset: Dataset) -> Iterator[pa.RecordBatch]:
        columns = ", ".join(quote(c.name) for c in dataset.columns)
        order = ", ".join(quote(k) for k in dataset.unique_key) or "rowid"
        with self._cursor() as cur:
            reader = cur.sql(
                f"SELECT {columns} FROM {table_name(dataset.id)} ORDER BY {order}"
            ).to_arrow_reader(50_000)
            yield from reader

    # keys -------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO _pb_keys (id, key_hash, doc) VALUES (?, ?, ?)",
                [key.id, key.key_hash, key.model_dump_json()],
            )

    def find_key(self, key_hash: str) -> ApiKey | None:
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT doc, key_hash FROM _pb_keys WHERE key_hash = ? AND NOT revoked", [key_hash]
            ).fetchone()
        if not row:
            return None
        key = ApiKey.model_validate_json(row[0])
        key.key_hash = row[1]
        return key

    def list_keys(self) -> list[ApiKey]:
        with self._cursor() as cur:
            rows = cur.execute("SELECT doc FROM _pb_keys WHERE NOT revoked ORDER BY id").fetchall()
        return [ApiKey.model_validate_json(r[0]) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._cursor() as cur:
            return bool(
                cur.execute(
                    "UPDATE _pb_keys SET revoked = true WHERE id = ? AND NOT revoked", [key_id]
                ).fetchone()[0]
            )

    # jobs -------------------------------------------------------------
    def incoming_path(self) -> Path:
        return self.spool.new_incoming()

    def enqueue(self, job: Job, payload: Path | None, window_start: datetime) -> Job:
        with self._jobs_lock:
            if job.idempotency_key is not None:
                first = self._idempotent_match(job, window_start)
                if first is not None:
                    if payload is not None:
                        payload.unlink(missing_ok=True)
                    return first
            if payload is not None:
                self.spool.keep(payload, job.id)
            try:
                with self._cursor() as cur:
                    job.seq = cur.execute("SELECT nextval('_pb_job_seq')").fetchone()[0]
                    cur.execute(
                        "INSERT INTO _pb_jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            job.id, job.seq, job.dataset_id, job.status.value, job.idempotency_key,
                            _naive(job.created_at), job.bytes, job.model_dump_json(),
                        ],
                    )  # fmt: skip
            except BaseException:
                self.spool.discard(job.id)
                raise
        return job

    def _idempotent_match(self, job: Job, window_start: datetime) -> Job | None:
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT doc FROM _pb_jobs WHERE dataset_id = ? AND idempotency_key = ?"
                " AND created_at >= ? ORDER BY seq LIMIT 1",
                [job.dataset_id, job.idempotency_key, _naive(window_start)],
            ).fetchone()
        if not row:
            return None
        first = Job.model_validate_json(row[0])
        if first.payload_hash != job.payload_hash:
            raise PushbaseError(
                "idempotency_conflict",
                "this Idempotency-Key was used with a different payload",
                409,
                {"job_id": first.id},
            )
        return first

    def get_job(self, job_id: str) -> Job | None:
        with self._cursor() as cur:
            row = cur.execute("SELECT doc FROM _pb_jobs WHERE id = ?", [job_id]).fetchone()
        return Job.model_validate_json(row[0]) if row else None

    def list_jobs(
        self,
        dataset_id: str | None,
        status: JobStatus | None,
        limit: int,
        datasets: list[str] | None,
    ) -> list[Job]:
        clauses, params = [], []
        if dataset_id is not None:
            clauses.append("dataset_id = ?")
            params.append(dataset_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if datasets is not None:
            clauses.append("list_contains(?, dataset_id)")
            params.append(datasets)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._cursor() as cur:
            rows = cur.execute(
                f"SELECT doc FROM _pb_jobs{where} ORDER BY seq DESC LIMIT ?", [*params, limit]
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def claim_jobs(self, busy_datasets: set[str], joins: GroupRule) -> list[Job]:
        with self._jobs_lock, self._cursor() as cur:
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
                self._save_job(cur, job)
            return group

    @staticmethod
    def _save_job(cur: duckdb.DuckDBPyConnection, job: Job) -> None:
        cur.execute(
            "UPDATE _pb_jobs SET status = ?, doc = ? WHERE id = ?",
            [job.status.value, job.model_dump_json(), job.id],
        )

    def read_payload(self, job: Job) -> bytes:
        try:
            return self.spool.read(job.id)
        except FileNotFoundError as exc:
            raise PushbaseError("payload_missing", "the job's payload is gone", 500) from exc

    def set_phase(self, job_id: str, phase: JobPhase, progress: int) -> None:
        job = self.get_job(job_id)
        if job is None:
            return
        job.phase, job.progress = phase, progress
        with self._cursor() as cur:
            self._save_job(cur, job)

    def cancel_job(self, job_id: str) -> Job | None:
        with self._jobs_lock:
            job = self.get_job(job_id)
            if job is None or job.status is not JobStatus.queued:
                return None
            job.status = JobStatus.cancelled
            job.finished_at = datetime.now(UTC)
            with self._cursor() as cur:
                self._save_job(cur, job)
        self.spool.discard(job_id)
        return job

    def fail_job(self, job: Job, error: JobError, errors: list[RowError] | None = None) -> Job:
        job.status, job.phase, job.error = JobStatus.failed, None, error
        job.finished_at = datetime.now(UTC)
        if errors:
            job.errors = [e.to_dict() for e in errors[: self.settings.max_row_errors]]
            job.errors_total = len(errors)
            job.stats.failed = len({e.row for e in errors})
        with self._cursor() as cur:
            self._save_job(cur, job)
        self.spool.discard(job.id)
        return job

    def recover(self) -> int:
        with self._jobs_lock, self._cursor() as cur:
            rows = cur.execute("SELECT doc FROM _pb_jobs WHERE status = 'running'").fetchall()
            for (doc,) in rows:
                job = Job.model_validate_json(doc)
                job.status, job.phase, job.progress, job.started_at = (
                    JobStatus.queued,
                    None,
                    0,
                    None,
                )
                self._save_job(cur, job)
        return len(rows)

    def purge(self, before: datetime) -> int:
        with self._cursor() as cur:
            return cur.execute(
                "DELETE FROM _pb_jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
                " AND created_at < ?",
                [_naive(before)],
            ).fetchone()[0]

    def queued_after(self, dataset_id: str, after_seq: int, limit: int) -> list[Job]:
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT doc FROM _pb_jobs WHERE dataset_id = ? AND status = 'queued'"
                " AND seq > ? ORDER BY seq LIMIT ?",
                [dataset_id, after_seq, limit],
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def release(self, job_id: str) -> None:
        pass  # one process: the runner's own bookkeeping orders the jobs

    def pending_bytes(self) -> int:
        with self._cursor() as cur:
            return cur.execute(
                "SELECT coalesce(sum(bytes), 0) FROM _pb_jobs WHERE status IN ('queued', 'running')"
            ).fetchone()[0]

    def _drop_orphan_payloads(self) -> None:
        """Payload files whose job is finished or was never committed."""
        with self._cursor() as cur:
            live = {
                r[0]
                for r in cur.execute(
                    "SELECT id FROM _pb_jobs WHERE status IN ('queued', 'running')"
                ).fetchall()
            }
        for job_id in self.spool.job_ids() - live:
            self.spool.discard(job_id)

    # the write --------------------------------------------------------
    def apply(self, dataset: Dataset, works: list[Work]) -> list[Job]:
        try:
            with self._transaction() as cur:
                new_columns = [c for w in works if w.batch for c in w.batch.new_columns]
                if new_columns:
                    dataset.columns.extend(new_columns)
                    dataset.updated_at = datetime.now(UTC)
                    self._update_dataset(cur, dataset, new_columns)
                writer = DuckDBWriter(cur, dataset, works)
                jobs = settle(writer, works[0].job.method, self.settings.max_row_errors)
                for job in jobs:
                    self._save_job(cur, job)
        except AtomicViolation as violation:
            return [self.fail_job(violation.job, ATOMIC_ERROR, violation.errors)]
        for job in jobs:
            self.spool.discard(job.id)
        return jobs


class DuckDBWriter(SqlWriter):
    def __init__(self, cur: duckdb.DuckDBPyConnection, dataset: Dataset, works: list[Work]):
        super().__init__(dataset, works, table_name(dataset.id))
        self.cur = cur

    def ident(self, column: str) -> str:
        return quote(column)

    def sql_type(self, column: Column) -> str:
        return SQL_TYPES[column.type]

    def execute(self, sql: str) -> None:
        self.cur.execute(sql)

    def dml(self, sql: str) -> int:
        return int(self.cur.execute(sql).fetchall()[0][0])

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.cur.execute(sql).fetchall()

    def stage(self, staged: pa.Table) -> None:
        source = f"src_{self.tag}"
        self.cur.register(source, staged)
        try:
            self.cur.execute(f"CREATE TEMP TABLE {self.stg} AS SELECT * FROM {source}")
        finally:
            self.cur.unregister(source)

    def last_value(self, value: str, mask: str | None) -> str:
        # A struct keeps an explicit null that a bare arg_max would skip.
        where = f" FILTER (WHERE {mask})" if mask else ""
        return f"(arg_max({{'v': {value}}}, o){where}).v"

    def write_merged(self, columns: str, any_existing: bool) -> None:
        # Delete-then-insert: DuckDB's ON CONFLICT costs a full pass per statement (DESIGN §7).
        if any_existing:
            match = " AND ".join(f"t.{quote(k)} = m.{quote(k)}" for k in self.dataset.unique_key)
            self.execute(
                f"DELETE FROM {self.table} t USING {self.mrg} m WHERE m._existed AND {match}"
            )
        self.execute(
            f"INSERT INTO {self.table} ({columns}) SELECT {columns} FROM {self.mrg} WHERE NOT _bad"
        )
