"""The PostgreSQL store: catalog, jobs, payloads and dataset tables in one database.

Many `pushbase serve` and `pushbase worker` processes share it (DESIGN §6):

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

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg_pool import ConnectionPool, PoolTimeout

from pushbase.auth import ApiKey
from pushbase.decode import RowError
from pushbase.decode.coerce import ARROW_TYPES
from pushbase.errors import InsufficientStorage, PushbaseError, StoreUnavailable, not_found
from pushbase.jobs.model import (
    ATOMIC_ERROR,
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
from pushbase.schema import Column, ColumnType, Dataset
from pushbase.settings import Settings
from pushbase.storage.base import (
    DATASET_DROPPED,
    GroupRule,
    NotWritten,
    RowQuery,
    Store,
    merge_columns,
    refuse_newer_schema,
)
from pushbase.storage.compression import StoredPayload, pack, unpack
from pushbase.storage.copies import PayloadCopies
from pushbase.storage.gauge import QueueGauge
from pushbase.storage.recent import RecentDatasets
from pushbase.storage.spool import Spool
from pushbase.storage.sql import job_filter, quote
from pushbase.storage.writer import (
    AtomicViolation,
    KeyConflict,
    SqlWriter,
    Work,
    apply_optimistically,
    evolve,
    settle,
)

SQL_TYPES = {
    ColumnType.string: "text",
    ColumnType.integer: "bigint",
    ColumnType.number: "double precision",
    ColumnType.boolean: "boolean",
    ColumnType.date: "date",
    ColumnType.datetime: "timestamp",  # UTC, µs
    ColumnType.json: "jsonb",
}
MAX_IDENTIFIER_BYTES = 63
# A dataset's table is `ds_<id>` while that is this short (readable in psql), else
# `ds__<n>` from a sequence: an older release hashed long names into exactly 63 bytes, so a
# short name never meets one of those, and ids start with a letter or digit, so never `ds__`.
READABLE_ID_CHARS = 50
TABLE_NAME_TRIES = 10
QUEUE_MAX_AGE_SECONDS = 0.25  # how stale the backpressure figure may get under load
QUEUE_TRUST_SECONDS = 1.0  # older than this, it is measured again before use
RECENT_DATASET_SECONDS = 1.0  # how stale a dataset the push path uses may be (recent.py)
# Keyed tables leave a tenth of each page free for updates (HOT): spread upserts into 10M
# rows ran ~54k rows/s instead of ~40k. Tables made before get it on their new pages
# (schema version 4 sets it; nothing rewrites the pages they have).
KEYED_FILLFACTOR = 90


def stored_type(column_type: ColumnType) -> str:
    """A column's type in a table. Text compares bytewise (COLLATE "C"), as in DuckDB:
    every key lookup of a write compares keys, and comparing them through the database's
    locale took about a fifth of an upsert's CPU (upserts went from ~36k to ~52k rows/s)."""
    sql = SQL_TYPES[column_type]
    return f'{sql} COLLATE "C"' if column_type is ColumnType.string else sql


def column_name(name: str) -> str:
    """A column's identifier in its table (unquoted): the name itself within PostgreSQL's
    63 bytes; a longer one is cut and given a 128-bit hash after a control character.
    Column names hold no control characters (schema.py), so such an identifier equals no
    short name, and no other long one short of a SHA-256 collision."""
    raw = name.encode()
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    return raw[:30].decode("utf-8", "ignore") + "\x1f" + hashlib.sha256(raw).hexdigest()[:32]


def pg_ident(name: str) -> str:
    """A column's quoted identifier: the one mapping from column names to SQL."""
    return quote(column_name(name))


def legacy_name(name: str) -> str:
    """How releases before schema version 4 cut names past 63 bytes (tables `ds_<id>` and
    columns alike): 32 bits of hash, after a character a user name may hold, could collide."""
    raw = name.encode()
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    return raw[:54].decode("utf-8", "ignore") + "_" + hashlib.sha1(raw).hexdigest()[:8]


def _adopt_tables(conn: psycopg.Connection) -> None:
    """Schema version 4: the catalog names each dataset's table. Tables made before keep
    the name their id gave them; their columns past 63 bytes take `column_name`'s form."""
    for dataset_id, doc in conn.execute("SELECT id, doc FROM _pb_datasets").fetchall():
        table = legacy_name(f"ds_{dataset_id}")
        conn.execute("UPDATE _pb_datasets SET tbl = %s WHERE id = %s", [table, dataset_id])
        present = {
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped",
                [quote(table)],
            ).fetchall()
        }  # empty when the table is missing: nothing to rename
        for column in orjson.loads(doc)["columns"]:
            old, new = legacy_name(column["name"]), column_name(column["name"])
            if old != new and old in present:
                conn.execute(
                    f"ALTER TABLE {quote(table)} RENAME COLUMN {quote(old)} TO {quote(new)}"
                )


def _leave_room_for_updates(conn: psycopg.Connection) -> None:
    """Schema version 4: keyed tables made before take `KEYED_FILLFACTOR` for new pages."""
    for table, doc in conn.execute("SELECT tbl, doc FROM _pb_datasets").fetchall():
        exists = conn.execute("SELECT to_regclass(%s)", [quote(table)]).fetchone()[0]
        if orjson.loads(doc).get("unique_key") and exists is not None:
            conn.execute(f"ALTER TABLE {quote(table)} SET (fillfactor = {KEYED_FILLFACTOR})")


Migration = list[str | Callable[[psycopg.Connection], None]]

MIGRATIONS: list[Migration] = [
    [
        "CREATE TABLE _pb_datasets (id text PRIMARY KEY, doc text NOT NULL)",
        "CREATE TABLE _pb_keys (id text PRIMARY KEY, key_hash text NOT NULL UNIQUE,"
        " doc text NOT NULL, revoked boolean NOT NULL DEFAULT false)",
        "CREATE TABLE _pb_jobs (id text PRIMARY KEY, seq bigserial NOT NULL,"
        " dataset_id text NOT NULL, status text NOT NULL, idempotency_key text,"
        " created_at timestamptz NOT NULL, bytes bigint NOT NULL, doc text NOT NULL)",
        "CREATE INDEX _pb_jobs_pending ON _pb_jobs (dataset_id, seq)"
        " WHERE status IN ('queued', 'running')",
        "CREATE INDEX _pb_jobs_seq ON _pb_jobs (seq)",
        "CREATE UNIQUE INDEX _pb_jobs_idempotency ON _pb_jobs (dataset_id, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE TABLE _pb_payloads (job_id text PRIMARY KEY, data bytea NOT NULL)",
    ],
    [
        # An acknowledgement waits for this row: lz4 compresses a 1 MB body ~3x faster than
        # the default pglz (and leaves less WAL than no compression). Without lz4 support,
        # payloads are stored uncompressed.
        "DO $$ BEGIN"
        " ALTER TABLE _pb_payloads ALTER COLUMN data SET COMPRESSION lz4;"
        " EXCEPTION WHEN OTHERS THEN"
        " ALTER TABLE _pb_payloads ALTER COLUMN data SET STORAGE EXTERNAL;"
        " END $$",
    ],
    [
        # Payloads arrive compressed by the process that accepted them (compression.py).
        "ALTER TABLE _pb_payloads ADD COLUMN codec text",
        "ALTER TABLE _pb_payloads ALTER COLUMN data SET STORAGE EXTERNAL",
    ],
    [
        # A dataset's table name is the catalog's, never derived again from its id: a
        # derived name could be another dataset's (issue 20, item 5).
        "ALTER TABLE _pb_datasets ADD COLUMN tbl text UNIQUE",
        "CREATE SEQUENCE _pb_table_seq",
        _adopt_tables,
        "ALTER TABLE _pb_datasets ALTER COLUMN tbl SET NOT NULL",
        _leave_room_for_updates,
    ],
]


def _param_safe(sql: str) -> str:
    """Identifiers may hold `%`; with parameters psycopg reads `%%` as a literal `%`."""
    return sql.replace("%", "%%")


def _check_identifiers(columns: list[Column]) -> None:
    """Two columns never share an identifier (only a SHA-256 collision could make them)."""
    seen: dict[str, str] = {}
    for column in columns:
        other = seen.setdefault(column_name(column.name), column.name)
        if other != column.name:
            raise PushbaseError(
                "duplicate_column",
                f"column {column.name!r} clashes with {other!r} in storage",
                400,
                {"column": column.name},
            )


@contextlib.contextmanager
def _gone_as_not_found(dataset_id: str) -> Iterator[None]:
    """A read that meets the table dropped under it: the dataset is gone, 404."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise not_found("dataset", dataset_id) from exc


class PostgresStore(Store):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schema = settings.database_schema
        self.spool = Spool(settings.data_dir / "incoming-pg")  # request bodies before commit
        self.copies = PayloadCopies(settings.data_dir / "incoming-pg" / "copies")
        self._keep_copies = False  # only where workers run, or no one would read or drop them
        self.pool: ConnectionPool | None = None
        self._claims: dict[str, psycopg.Connection] = {}  # job id → connection holding its lock
        self._claims_lock = threading.Lock()
        self.queue = QueueGauge(
            self._measure_pending_bytes, QUEUE_MAX_AGE_SECONDS, QUEUE_TRUST_SECONDS
        )
        self.recent = RecentDatasets(RECENT_DATASET_SECONDS)

    # life cycle -------------------------------------------------------
    def open(self) -> None:
        self.spool.prepare()
        self.copies.prepare()
        url = self.settings.database_url
        assert url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
        self.pool = ConnectionPool(
            url,
            min_size=2,
            max_size=self.settings.pool_size,
            # The name shows in pg_stat_activity (and lets the tests find these sessions).
            kwargs={"autocommit": True, "application_name": "pushbase"},
            configure=self._configure,
            open=True,
            name="pushbase",
        )
        self.pool.wait(timeout=30)
        with self._conn() as conn, conn.transaction():
            # One process migrates at a time.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_key("migrate")])
            conn.execute("CREATE TABLE IF NOT EXISTS _pb_version (version integer NOT NULL)")
            current = conn.execute("SELECT max(version) FROM _pb_version").fetchone()[0] or 0
            refuse_newer_schema(current, len(MIGRATIONS))
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements:
                    if isinstance(statement, str):
                        conn.execute(statement)
                    else:
                        statement(conn)
                conn.execute("INSERT INTO _pb_version VALUES (%s)", [version])
        self.queue.refresh()

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(f"SET search_path TO {quote(self.schema)}")
        conn.execute("SET TIME ZONE 'UTC'")

    def close(self) -> None:
        with self._claims_lock:
            claims = list(self._claims)
        for job_id in claims:
            self.release(job_id)
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.copies.close()
        self.queue.close()

    def ping(self) -> bool:
        try:
            with self._conn() as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        if self.pool is None:
            raise StoreUnavailable("store_closed", "the store is not open")
        with _unavailable_when_down(), self.pool.connection() as conn:
            yield conn

    def _lock_key(self, name: str) -> int:
        """A 64-bit advisory lock key, distinct per schema so stores never collide."""
        digest = hashlib.sha256(f"pushbase:{self.schema}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    # datasets ---------------------------------------------------------
    # Lock order, so that PATCH, drop and writes of one dataset never deadlock: the catalog
    # row first (drop: DELETE; PATCH and a write that adds columns: FOR NO KEY UPDATE; other
    # writes: FOR KEY SHARE, which a PATCH does not wait for), then the table.
    def create_dataset(self, dataset: Dataset) -> None:
        _check_identifiers(dataset.columns)
        columns = ", ".join(self._column_ddl(c) for c in dataset.columns)
        options = ""
        if dataset.unique_key:
            columns += f", PRIMARY KEY ({', '.join(pg_ident(k) for k in dataset.unique_key)})"
            # Room on every page for updated rows: an update that changes no key (ours
            # never do) and finds room on its page is HOT, with no index entry to add.
            options = f" WITH (fillfactor = {KEYED_FILLFACTOR})"
        try:
            with self._conn() as conn, conn.transaction():
                table = self._create_table(conn, dataset.id, columns, options)
                conn.execute(
                    "INSERT INTO _pb_datasets (id, doc, tbl) VALUES (%s, %s, %s)",
                    [dataset.id, dataset.model_dump_json(exclude={"row_count"}), table],
                )
        except psycopg.errors.UniqueViolation as exc:
            raise PushbaseError(
                "dataset_exists", f"dataset {dataset.id!r} already exists", 409
            ) from exc
        self.recent.changed(dataset.id)

    @staticmethod
    def _create_table(
        conn: psycopg.Connection, dataset_id: str, columns: str, options: str = ""
    ) -> str:
        """Create the dataset's table under a name no relation has; never drop one: a
        table this dataset's catalog row does not name belongs to something else."""
        for attempt in range(TABLE_NAME_TRIES):
            if attempt == 0 and len(dataset_id) <= READABLE_ID_CHARS:
                table = f"ds_{dataset_id}"
            else:
                number = conn.execute("SELECT nextval('_pb_table_seq')").fetchone()[0]
                table = f"ds__{number}"
            try:
                with conn.transaction():  # a savepoint: a taken name leaves the rest intact
                    conn.execute(f"CREATE TABLE {quote(table)} ({columns}){options}")
                return table
            except psycopg.errors.DuplicateTable:
                continue  # a stray table (or an index) holds the name: take the next one
        raise PushbaseError("internal_error", "no free table name for the dataset", 500)

    @staticmethod
    def _table(conn: psycopg.Connection, dataset_id: str, lock: str = "") -> str | None:
        """The dataset's table (quoted) as the catalog names it; None once it is dropped."""
        row = conn.execute(
            f"SELECT tbl FROM _pb_datasets WHERE id = %s{lock}", [dataset_id]
        ).fetchone()
        return quote(row[0]) if row else None

    def _lock_for_write(
        self, conn: psycopg.Connection, dataset: Dataset, known: set[str], new: list[Column]
    ) -> str:
        """The table a write goes to, its catalog row locked until the write commits (a
        drop waits for it), and the columns it adds saved. `known` is what it decoded by."""
        if new:
            updated = self._update_dataset(conn, dataset, new, known=known)
            table = None if updated is None else updated[1]
        else:
            table = self._table(conn, dataset.id, " FOR KEY SHARE")
        if table is None:
            raise NotWritten(DATASET_DROPPED)
        return table

    @staticmethod
    def _column_ddl(column: Column) -> str:
        ddl = f"{pg_ident(column.name)} {stored_type(column.type)}"
        return ddl if column.nullable else f"{ddl} NOT NULL"

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        read_at = time.monotonic()
        with self._conn() as conn:
            row = conn.execute(
                "SELECT doc FROM _pb_datasets WHERE id = %s", [dataset_id]
            ).fetchone()
        if not row:
            return None
        self.recent.seen(Dataset.model_validate_json(row[0]), read_at)  # a copy of its own
        return Dataset.model_validate_json(row[0])

    def recent_dataset(self, dataset_id: str) -> Dataset | None:
        return self.recent.get(dataset_id)

    def list_datasets(self) -> list[Dataset]:
        with self._conn() as conn:
            rows = conn.execute("SELECT doc FROM _pb_datasets ORDER BY id").fetchall()
        return [Dataset.model_validate_json(r[0]) for r in rows]

    def update_dataset(self, dataset: Dataset, add_columns: list[Column]) -> None:
        try:
            with self._conn() as conn, conn.transaction():
                updated = self._update_dataset(conn, dataset, add_columns)
        finally:
            self.recent.changed(dataset.id)
        if updated is None:
            raise not_found("dataset", dataset.id)  # dropped since it was read
        dataset.columns = updated[0].columns  # with any column a concurrent change added

    def _update_dataset(
        self,
        conn: psycopg.Connection,
        dataset: Dataset,
        add_columns: list[Column],
        known: set[str] | None = None,
    ) -> tuple[Dataset, str] | None:
        """Add columns and save the document under the catalog row's lock: the document
        saved and the table (quoted), or None when the dataset is gone. A PATCH also sets
        name, description and policy; a write (`known`: see `merge_columns`) only adds."""
        row = conn.execute(
            "SELECT doc, tbl FROM _pb_datasets WHERE id = %s FOR NO KEY UPDATE", [dataset.id]
        ).fetchone()
        if row is None:
            return None
        stored = Dataset.model_validate_json(row[0])
        columns = merge_columns(stored, add_columns, known)
        _check_identifiers(columns)
        for column in add_columns:
            conn.execute(
                f"ALTER TABLE {quote(row[1])} ADD COLUMN"
                f" {pg_ident(column.name)} {stored_type(column.type)}"
            )
        saved = (stored if known is not None else dataset).model_copy(
            update={"columns": columns, "updated_at": dataset.updated_at}
        )
        conn.execute(
            "UPDATE _pb_datasets SET doc = %s WHERE id = %s",
            [saved.model_dump_json(exclude={"row_count"}), dataset.id],
        )
        return saved, quote(row[1])

    def drop_dataset(self, dataset_id: str) -> bool:
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "DELETE FROM _pb_datasets WHERE id = %s RETURNING tbl", [dataset_id]
            ).fetchone()
            if row:  # only the table the catalog names (IF EXISTS: one lost before is fine)
                conn.execute(f"DROP TABLE IF EXISTS {quote(row[0])}")
        self.recent.changed(dataset_id)
        return row is not None

    def row_count(self, dataset_id: str) -> int:
        """0 for a dataset dropped meanwhile: one dataset never fails a whole list."""
        with self._conn() as conn:
            table = self._table(conn, dataset_id)
            if table is None:
                return 0
            try:
                return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except psycopg.errors.UndefinedTable:
                return 0  # dropped between the two statements, or lost before this release

    # rows -------------------------------------------------------------
    def _select_list(self, dataset: Dataset) -> str:
        return ", ".join(
            f"{pg_ident(c.name)}::text" if c.type is ColumnType.json else pg_ident(c.name)
            for c in dataset.columns
        )

    def _default_order(self, dataset: Dataset) -> str:
        return ", ".join(pg_ident(k) for k in dataset.unique_key) or "ctid"

    @staticmethod
    def _to_arrow(dataset: Dataset, rows: list[tuple[Any, ...]]) -> pa.Table:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in dataset.columns]
        arrays = {}
        for column, values in zip(dataset.columns, columns, strict=True):
            if column.type is ColumnType.json:  # jsonb prints with spaces: back to compact JSON
                values = tuple(
                    v if v is None else orjson.dumps(orjson.loads(v)).decode() for v in values
                )
            arrays[column.name] = pa.array(list(values), ARROW_TYPES[column.type])
        return pa.table(arrays)

    def read_rows(self, dataset: Dataset, query: RowQuery) -> tuple[pa.Table, int]:
        # Every piece of SQL text that holds an identifier goes through `_param_safe`.
        clauses = [
            _param_safe(f"{pg_ident(name)} IS NULL" if value is None else f"{pg_ident(name)} = ")
            + ("" if value is None else "%s")
            for name, value in query.filters.items()
        ]
        params = [v for v in query.filters.values() if v is not None]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = ", ".join(
            f"{pg_ident(c)} {'DESC' if desc else 'ASC'}" for c, desc in query.order_by
        ) or self._default_order(dataset)
        select = self._select_list(dataset)
        with self._conn() as conn, _gone_as_not_found(dataset.id):
            table = self._table(conn, dataset.id)
            if table is None:
                raise not_found("dataset", dataset.id)
            total = conn.execute(
                _param_safe(f"SELECT count(*) FROM {table}") + where, params
            ).fetchone()[0]
            rows = conn.execute(
                _param_safe(f"SELECT {select} FROM {table}") + where
                + _param_safe(f" ORDER BY {order}") + " LIMIT %s OFFSET %s",
                [*params, query.limit, query.offset],
            ).fetchall()  # fmt: skip
        return self._to_arrow(dataset, rows), total

    def export_batches(self, dataset: Dataset) -> Iterator[pa.RecordBatch]:
        with self._conn() as conn, conn.transaction(), _gone_as_not_found(dataset.id):
            table = self._table(conn, dataset.id, " FOR KEY SHARE")  # not dropped mid-export
            if table is None:
                raise not_found("dataset", dataset.id)
            sql = (
                f"SELECT {self._select_list(dataset)} FROM {table}"
                f" ORDER BY {self._default_order(dataset)}"
            )
            with conn.cursor(name="export") as cur:
                cur.execute(sql)
                while rows := cur.fetchmany(50_000):
                    yield from self._to_arrow(dataset, rows).to_batches()

    def job_counts(self) -> dict[JobStatus, int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT status, count(*) FROM _pb_jobs GROUP BY status").fetchall()
        return {status: 0 for status in JobStatus} | {JobStatus(s): n for s, n in rows}

    # keys -------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO _pb_keys (id, key_hash, doc) VALUES (%s, %s, %s)",
                [key.id, key.key_hash, key.model_dump_json()],
            )

    def find_key(self, key_hash: str) -> ApiKey | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT doc, key_hash FROM _pb_keys WHERE key_hash = %s AND NOT revoked",
                [key_hash],
            ).fetchone()
        if not row:
            return None
        key = ApiKey.model_validate_json(row[0])
        key.key_hash = row[1]
        return key

    def list_keys(self) -> list[ApiKey]:
        with self._conn() as conn:
            rows = conn.execute("SELECT doc FROM _pb_keys WHERE NOT revoked ORDER BY id").fetchall()
        return [ApiKey.model_validate_json(r[0]) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._conn() as conn:
            return bool(
                conn.execute(
                    "UPDATE _pb_keys SET revoked = true WHERE id = %s AND NOT revoked", [key_id]
                ).rowcount
            )

    # jobs -------------------------------------------------------------
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
            rows = conn.execute(
                "SELECT doc FROM _pb_jobs WHERE dataset_id = %s AND status = 'queued'"
                " AND seq > %s ORDER BY seq LIMIT %s",
                [dataset_id, after_seq, limit],
            ).fetchall()
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
            return conn.execute(
                "DELETE FROM _pb_jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
                " AND created_at < %s",
                [before],
            ).rowcount

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

    # the write --------------------------------------------------------
    def apply(self, dataset: Dataset, works: list[Work]) -> list[Job]:
        with self._claims_lock:
            conn = self._claims.get(works[0].job.id)
        if conn is None:
            raise PushbaseError("not_claimed", f"job {works[0].job.id} is not claimed here", 500)
        with _unavailable_when_down():
            return apply_optimistically(
                works, lambda optimistic: self._apply(conn, dataset, works, optimistic)
            )

    def _apply(
        self, conn: psycopg.Connection, dataset: Dataset, works: list[Work], optimistic: bool
    ) -> list[Job]:
        try:
            with conn.transaction():
                known = {c.name for c in dataset.columns}
                new_columns = evolve(dataset, works)
                table = self._lock_for_write(conn, dataset, known, new_columns)
                writer = PostgresWriter(conn, dataset, works, table, optimistic and not new_columns)
                jobs = settle(writer, works[0].job.method, self.settings)
                for job in jobs:
                    self._finish(conn, job)
        except AtomicViolation as violation:
            return [self.fail_job(violation.job, ATOMIC_ERROR, violation.errors)]
        except NotWritten as refused:
            return [self.fail_job(work.job, refused.error) for work in works]
        if new_columns:
            self.recent.changed(dataset.id)
        self.queue.removed(sum(job.bytes for job in jobs))
        return jobs


@contextlib.contextmanager
def _unavailable_when_down() -> Iterator[None]:
    """A lost connection, a server short of resources or no free connection may pass:
    503 to a request, and a job's write goes back to the queue."""
    try:
        yield
    except psycopg.errors.DiskFull as exc:
        raise InsufficientStorage("PostgreSQL's disk is full; retry later") from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise StoreUnavailable("store_unavailable", f"PostgreSQL: {exc}".strip()) from exc


class PostgresWriter(SqlWriter):
    def __init__(
        self,
        conn: psycopg.Connection,
        dataset: Dataset,
        works: list[Work],
        table: str,
        optimistic: bool = False,
    ) -> None:
        super().__init__(dataset, works, table, optimistic)
        self.conn = conn
        self._repeated: bool | None = None
        self._direct = False  # staged rows may be written as they are (see stage)
        self._per_job: dict[int, int] = {}  # staged rows of each job

    def prepare(self, staged: pa.Table) -> pa.Table:
        """PostgreSQL text cannot hold NUL: such rows fail alone instead of failing the job."""
        bad = None
        for name in staged.column_names:
            column = staged.column(name)
            if pa.types.is_string(column.type):
                has_nul = pc.fill_null(pc.match_substring(column, "\x00"), False)
                bad = has_nul if bad is None else pc.or_(bad, has_nul)
        if bad is None or not pc.any(bad).as_py():
            return staged
        failed = staged.filter(bad)
        message = "text may not contain the NUL character"
        self.rejected = [
            (j, RowError(row, None, "invalid_value", message))
            for j, row in zip(failed.column("j").to_pylist(), failed.column("r").to_pylist(),
                              strict=True)
        ]  # fmt: skip
        return staged.filter(pc.invert(bad))

    def ident(self, column: str) -> str:
        return pg_ident(column)

    def sql_type(self, column: Column) -> str:
        return SQL_TYPES[column.type]

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def dml(self, sql: str) -> int:
        return self.conn.execute(sql).rowcount

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql).fetchall()

    def stage(self, staged: pa.Table) -> None:
        types = []
        columns = {c.name: c for c in self.dataset.columns}
        by_position = {f"c{p}": columns[name] for name, p in self.positions.items()}
        for name in staged.column_names:
            if name in by_position:
                types.append(f"{name} {stored_type(by_position[name].type)}")
            elif name in ("j", "r", "o"):
                types.append(f"{name} bigint")
            else:
                types.append(f"{name} boolean")
        # JIT compiled each of these large statements for ~0.2 s and won nothing back.
        self.conn.execute("SET LOCAL jit = off")
        keys = self.dataset.unique_key
        if keys and all(k in self.positions for k in keys):
            # Rows in key order meet the index in order: each of its pages is visited once.
            named = [f"c{self.positions[k]}" for k in keys]
            staged = staged.sort_by([(name, "ascending") for name in named])
            # Here, not in the server: the database's one core per write is the bottleneck.
            # Not for floats: PostgreSQL has -0 = 0 and NaN = NaN, Arrow's grouping may not.
            if not any(pa.types.is_floating(staged.column(n).type) for n in named):
                self._repeated = staged.group_by(named).aggregate([]).num_rows < staged.num_rows
        required = [c.name for c in self.dataset.columns if not c.nullable and c.name not in keys]
        # Every row carries every field it writes and no required value is missing: a row
        # with a new key inserts as it is, one with a stored key replaces all it carries.
        self._direct = not self.masked and all(
            n in self.positions and staged.column(f"c{self.positions[n]}").null_count == 0
            for n in required
        )
        counts = pc.value_counts(staged.column("j")).to_pylist()
        self._per_job = {c["values"]: c["counts"] for c in counts}
        self.conn.execute(f"CREATE TEMP TABLE {self.stg} ({', '.join(types)}) ON COMMIT DROP")
        self._copy(staged, self.stg)

    def _repeated_keys(self) -> bool:
        if self._repeated is None:  # asked by more than one step; the staged rows stay put
            self._repeated = super()._repeated_keys()
        return self._repeated

    def _index_joins(self, on: bool) -> None:
        """Joins with the table probe its key index (`on=False` undoes it). Left to itself
        the planner hashes the whole table for 100k+ staged rows: a cost that grows with
        the table, ~6 s per 150k rows at 10M rows, instead of ~1 s."""
        value = "off" if on else "on"
        self.execute(
            f"SELECT set_config('enable_hashjoin', '{value}', true),"
            f" set_config('enable_mergejoin', '{value}', true)"
        )

    def stored_rows(self, columns: Iterable[str] = ()) -> str:
        """The stored rows of the staged keys, found one key at a time through the index
        (a lateral subquery the planner cannot turn into a hash join of the whole table)."""
        keys = self.dataset.unique_key
        wanted = ", ".join(self.ident(n) for n in dict.fromkeys([*keys, *columns]))
        staged = ", ".join(f"c{self.positions[k]}" for k in keys)
        match = " AND ".join(f"x.{self.ident(k)} = k.c{self.positions[k]}" for k in keys)
        return (
            f"(SELECT x.* FROM (SELECT DISTINCT {staged} FROM {self.stg}) k CROSS JOIN LATERAL"
            f" (SELECT {wanted} FROM {self.table} x WHERE {match} OFFSET 0) x)"
        )

    def delete_stored(self, keys: str) -> None:
        self._index_joins(True)
        super().delete_stored(keys)
        self._index_joins(False)

    def _merge(self, against_stored: bool) -> None:
        """Upsert without folding or joining when no key repeats and rows are whole
        (`_direct`): one `INSERT ... ON CONFLICT DO UPDATE` writes them, and tells which
        rows it inserted (a new row has no xmax; an updated one carries our lock's)."""
        if not (against_stored and self._direct) or self._repeated_keys():
            super()._merge(against_stored)
            return
        keys = self.dataset.unique_key
        target, source = self._staged_columns()
        updates = ", ".join(
            f"{self.ident(n)} = EXCLUDED.{self.ident(n)}" for n in self.positions if n not in keys
        )
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        returned = ", ".join(f"t.{self.ident(k)} AS k{i}" for i, k in enumerate(keys))
        back = " AND ".join(f"w.k{i} = s.c{self.positions[k]}" for i, k in enumerate(keys))
        conflict = ", ".join(self.ident(k) for k in keys)
        inserted = dict(
            self.fetch(
                f"WITH w AS (INSERT INTO {self.table} AS t ({target}) SELECT {source}"
                f" FROM {self.stg} ON CONFLICT ({conflict}) {action}"
                f" RETURNING {returned}, t.xmax = 0 AS _new)"
                f" SELECT s.j, count(*) FROM w JOIN {self.stg} s ON {back} WHERE w._new"
                " GROUP BY s.j"
            )
        )
        for j, count in self._per_job.items():
            self.stats[j].inserted = int(inserted.get(j, 0))
            self.stats[j].updated = count - self.stats[j].inserted

    def _delete(self) -> None:
        """Without repeated keys, each staged row deletes its key's row or finds none."""
        if self._repeated_keys():
            super()._delete()
            return
        self._index_joins(True)
        deleted = dict(
            self.fetch(
                f"WITH d AS (DELETE FROM {self.table} t USING {self.stg} s"
                f" WHERE {self._join('t', 's')} RETURNING s.j) SELECT j, count(*) FROM d GROUP BY j"
            )
        )
        self._index_joins(False)
        for j, count in self._per_job.items():
            self.stats[j].deleted = int(deleted.get(j, 0))
            self.stats[j].not_found = count - self.stats[j].deleted

    def insert_rows(self, staged: pa.Table, target: list[str]) -> None:
        columns = ", ".join(self.ident(name) for name in target)
        try:
            self._copy(staged, f"{self.table} ({columns})")
        except psycopg.errors.UniqueViolation as exc:
            raise KeyConflict from exc

    def _copy(self, rows: pa.Table, into: str) -> None:
        buffer = io.BytesIO()
        # Every valid value quoted: an unquoted empty field is NULL, "" the empty string.
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
        pacsv.write_csv(rows, buffer, write_options=options)
        with self.conn.cursor().copy(f"COPY {into} FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())

    def last_value(self, value: str, mask: str | None) -> str:
        where = f" FILTER (WHERE {mask})" if mask else ""
        return f"(array_agg({value} ORDER BY o DESC){where})[1]"
