"""The embedded store: one DuckDB file plus a payload spool under PUSHBASE_DATA_DIR."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pushbase.auth import ApiKey
from pushbase.decode import RowError
from pushbase.errors import InsufficientStorage, PushbaseError, StoreUnavailable, not_found
from pushbase.jobs.model import (
    ATOMIC_ERROR,
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
from pushbase.priority import call_in_background_thread, lower_this_thread
from pushbase.schema import Column, ColumnType, Dataset
from pushbase.settings import MIB, Settings
from pushbase.storage.base import (
    DATASET_DROPPED,
    GroupRule,
    NotWritten,
    RowQuery,
    Store,
    merge_columns,
    refuse_newer_schema,
)
from pushbase.storage.duckdb_memory import (
    MemoryLimit,
    default_ceiling_mb,
    engine_failure,
    needs_reopening,
)
from pushbase.storage.inbox import Inbox
from pushbase.storage.spool import Spool
from pushbase.storage.sql import job_filter, quote, table_name
from pushbase.storage.writer import (
    AtomicViolation,
    KeyConflict,
    SqlWriter,
    Work,
    apply_optimistically,
    evolve,
    settle,
)

log = logging.getLogger("pushbase.store")

SQL_TYPES = {
    ColumnType.string: "VARCHAR",
    ColumnType.integer: "BIGINT",
    ColumnType.number: "DOUBLE",
    ColumnType.boolean: "BOOLEAN",
    ColumnType.date: "DATE",
    ColumnType.datetime: "TIMESTAMP",  # UTC, µs
    ColumnType.json: "VARCHAR",  # JSON text; the catalog knows it is json
}

MIGRATIONS: list[list[str] | Callable[[duckdb.DuckDBPyConnection], None]] = [
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
    # Functions run their own transactions; the version is recorded once they are done.
    lambda cur: _rebuild_keyed_tables(cur),  # 2: no primary-key index (defined below)
]


REGISTER_COALESCE_SECONDS = 0.05
REOPEN_PAUSE_SECONDS = 1.0  # between tries to reopen a failed database
CHECKPOINT_PAUSE_SECONDS = (30.0, 900.0)  # after a failed idle checkpoint: first, longest


def _busy(dataset_id: str) -> PushbaseError:
    return PushbaseError(
        "dataset_busy", f"dataset {dataset_id!r} is being written or changed; try again", 409
    )


def column_ddl(column: Column) -> str:
    ddl = f"{quote(column.name)} {SQL_TYPES[column.type]}"
    return ddl if column.nullable else f"{ddl} NOT NULL"


# Keyed tables have no primary key (an ART index costs ~105 MB of RAM per 1M keys and
# makes a spread upsert cost what the table costs, DESIGN §7): uniqueness comes from the
# writes, one group at a time per dataset (one process, the runner's busy datasets).
# Stored rows are found by this hidden column, the hash of the key: a join on one
# integer column reads ~5x less than on the key columns, then rows are fetched by rowid
# and compared on the key itself. 32 bits: half the bytes of DuckDB's 64-bit hash (~40 MB
# less per 10M rows) for a few hundred false candidates per 150k-row write at 10M rows,
# which the comparison on the key drops. No dataset column can be named so: column
# names may not hold control characters (schema.py).
KEY_HASH = "_pb_key_hash\x1f"
KEY_HASH_TYPE = "UINTEGER"


def hash_of(values: list[tuple[str, ColumnType]]) -> str:
    """The SQL of the key hash of (expression, type) pairs; cast to the stored types, so
    a staged value hashes as the stored one."""
    parts = [f"CAST({value} AS {SQL_TYPES[kind]})" for value, kind in values]
    return f"(hash({', '.join(parts)}) >> 32)::{KEY_HASH_TYPE}"


def key_hash(dataset: Dataset, columns: dict[str, str]) -> str:
    """The key hash of a row whose key columns are the expressions `columns[key]`."""
    types = {c.name: c.type for c in dataset.columns}
    return hash_of([(columns[k], types[k]) for k in dataset.unique_key])


# The key hash of a value of each key type, and of a composite key: a DuckDB (or a
# pushbase) that hashes otherwise must rehash the stored keys before its first write
# (`DuckDBStore._check_hash`), or it would miss them and store a key twice.
_SAMPLES = [
    ("'pushbase'", ColumnType.string),
    ("-7", ColumnType.integer),
    ("1.5", ColumnType.number),
    ("true", ColumnType.boolean),
    ("DATE '2024-02-29'", ColumnType.date),
    ("TIMESTAMP '2024-02-29 12:34:56.789012'", ColumnType.datetime),
]
HASH_FINGERPRINT = (
    f"SELECT concat_ws(',', {', '.join(hash_of([s]) for s in _SAMPLES)}, {hash_of(_SAMPLES)})"
)


def _rebuild_keyed_tables(cur: duckdb.DuckDBPyConnection) -> None:
    """Schema 2: keyed tables of earlier releases, with a PRIMARY KEY, become tables
    without an index and with the key hash; one transaction per table, every row kept.
    A table that has the hash already (a migration cut short) is left as it is."""
    for (doc,) in cur.execute("SELECT doc FROM _pb_datasets ORDER BY id").fetchall():
        dataset = Dataset.model_validate_json(doc)
        name = f"ds_{dataset.id}"
        stored = cur.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns()"
            " WHERE database_name = current_database() AND schema_name = 'main'"
            " AND table_name = ? ORDER BY column_index",
            [name],
        ).fetchall()
        names = [column for column, _, _ in stored]
        if not dataset.unique_key or not stored or KEY_HASH in names:
            continue
        # The stored types and nullability, not the catalog's: a column added later is
        # nullable in storage whatever its document says.
        ddl = [
            f"{quote(column)} {kind}{'' if nullable else ' NOT NULL'}"
            for column, kind, nullable in stored
        ]
        new = quote(f"_pb_rebuild_{dataset.id}")
        listed = ", ".join(quote(column) for column in names)
        cur.execute("BEGIN")
        ddl.append(f"{quote(KEY_HASH)} {KEY_HASH_TYPE} NOT NULL")
        cur.execute(f"CREATE TABLE {new} ({', '.join(ddl)})")
        hashed = key_hash(dataset, {k: quote(k) for k in dataset.unique_key})
        cur.execute(f"INSERT INTO {new} SELECT {listed}, {hashed} FROM {quote(name)}")
        cur.execute(f"DROP TABLE {quote(name)}")
        cur.execute(f"ALTER TABLE {new} RENAME TO {quote(name)}")
        cur.execute("COMMIT")
        log.info("dataset %r: table rebuilt without its primary-key index", dataset.id)
    cur.execute(f"INSERT OR REPLACE INTO _pb_meta VALUES ('key_hash', ({HASH_FINGERPRINT}))")


def _naive(stamp: datetime) -> datetime:
    return stamp.astimezone(UTC).replace(tzinfo=None)


class DuckDBStore(Store):
    """One process owns the file, so the catalog (datasets, keys) is also kept in memory
    and the request path never waits for DuckDB: see `inbox.py` for accepted jobs."""

    memory_catalog = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self.inbox = Inbox(self.spool)
        self._db: duckdb.DuckDBPyConnection | None = None
        self.memory = MemoryLimit(
            settings.duckdb_memory_mb, settings.duckdb_memory_max_mb or default_ceiling_mb()
        )
        self._jobs_lock = threading.Lock()  # job state transitions: enqueue, claim, cancel
        self._register_lock = threading.Lock()
        self._accept_lock = threading.Lock()  # numbers jobs in acceptance order
        self._datasets: dict[str, Dataset] = {}
        # Dataset changes are rare and short: one lock orders them with `_datasets`.
        self._catalog_lock = threading.RLock()
        self._keys: dict[str, ApiKey] = {}  # by hash
        self._phases: dict[str, tuple[JobPhase, int]] = {}  # running jobs' progress
        self._seq = 0
        self._registrar = threading.Thread(target=self._registrar_loop, daemon=True)
        self._wake_registrar = threading.Event()
        self._closing = threading.Event()
        self._reopen_lock = threading.RLock()  # swapping `_db` after a fatal error
        self._down = False  # the database failed and is not open again yet
        self._reopen_at = 0.0  # monotonic time of the next try while down
        self._checkpoint_at = 0.0  # no idle checkpoint before (after one failed)
        self._checkpoint_pause = 0.0

    # life cycle -------------------------------------------------------
    def open(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool.prepare()
        self._db = self._connect()
        with self._cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS _pb_version (version INTEGER)")
            row = cur.execute("SELECT max(version) FROM _pb_version").fetchone()
            current = row[0] or 0
            refuse_newer_schema(current, len(MIGRATIONS))
            if current < len(MIGRATIONS):  # old key indexes are loaded to be dropped
                self.memory.before_write(cur, refuse=False)
            for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
                if callable(step):
                    step(cur)
                cur.execute("BEGIN")
                for statement in step if isinstance(step, list) else []:
                    cur.execute(statement)
                cur.execute("INSERT INTO _pb_version VALUES (?)", [version])
                cur.execute("COMMIT")
            self._check_hash(cur)
            self._load_catalog(cur)
            recorded = {r[0] for r in cur.execute("SELECT id FROM _pb_jobs").fetchall()}
            self._seq = cur.execute("SELECT coalesce(max(seq), 0) FROM _pb_jobs").fetchone()[0]
            window = datetime.now(UTC) - timedelta(seconds=self.settings.idempotency_window_seconds)
            for (doc,) in cur.execute(
                "SELECT doc FROM _pb_jobs WHERE idempotency_key IS NOT NULL AND created_at >= ?"
                " ORDER BY seq",
                [_naive(window)],
            ).fetchall():
                self.inbox.remember(Job.model_validate_json(doc))
            self.inbox.waiting_bytes = cur.execute(
                "SELECT coalesce(sum(bytes), 0) FROM _pb_jobs WHERE status IN ('queued', 'running')"
            ).fetchone()[0]
        for job in self.inbox.recover(recorded):  # accepted, then a crash before recording
            self._seq = max(self._seq, job.seq)
            self.inbox.remember(job)
            self.inbox.waiting_bytes += job.bytes
        self._register()
        self._drop_orphan_payloads()
        self._registrar.start()

    def _check_hash(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Keyed rows are found by DuckDB's hash of their key: if this DuckDB hashes
        otherwise than the one that stored them, every stored hash is computed again
        (one transaction per table; the new fingerprint is saved once all are done)."""
        ((fingerprint,),) = cur.execute(HASH_FINGERPRINT).fetchall()
        row = cur.execute("SELECT value FROM _pb_meta WHERE key = 'key_hash'").fetchone()
        if row is not None and row[0] == fingerprint:
            return
        if row is not None:
            log.warning("this DuckDB hashes keys differently: rehashing every keyed table")
            for (doc,) in cur.execute("SELECT doc FROM _pb_datasets").fetchall():
                dataset = Dataset.model_validate_json(doc)
                if dataset.unique_key:
                    hashed = key_hash(dataset, {k: quote(k) for k in dataset.unique_key})
                    cur.execute(f"UPDATE {table_name(dataset.id)} SET {quote(KEY_HASH)} = {hashed}")
        cur.execute("INSERT OR REPLACE INTO _pb_meta VALUES ('key_hash', ?)", [fingerprint])

    def _connect(self) -> duckdb.DuckDBPyConnection:
        path = str(self.settings.duckdb_path)
        # DuckDB's worker threads start here and keep the priority of the opening thread.
        db = call_in_background_thread(lambda: duckdb.connect(path))
        try:
            # Checkpoints rewrite the keyed tables and their indexes: not after every group.
            db.execute(f"SET checkpoint_threshold = '{self.settings.duckdb_checkpoint_mb}MB'")
            # One core is left to decoding and requests: on two cores a write with one thread
            # takes as long as with two (~0.25 s per 150k rows) and leaves the decoder its core.
            db.execute(f"SET threads = {self.settings.duckdb_threads}")
            # DuckDB would otherwise take most of the machine's memory for its buffers.
            self.memory.open(db)
        except BaseException:
            db.close()
            raise
        return db

    def _load_catalog(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Datasets and keys into memory, as the file has them (replacing what was there)."""
        datasets = {}
        for (doc,) in cur.execute("SELECT doc FROM _pb_datasets").fetchall():
            dataset = Dataset.model_validate_json(doc)
            datasets[dataset.id] = dataset
        keys = {}
        for doc, key_hash in cur.execute(
            "SELECT doc, key_hash FROM _pb_keys WHERE NOT revoked"
        ).fetchall():
            key = ApiKey.model_validate_json(doc)
            key.key_hash = key_hash
            keys[key_hash] = key
        self._datasets, self._keys = datasets, keys

    def _reopen(self, broken: duckdb.DuckDBPyConnection | None, cause: BaseException) -> None:
        """DuckDB invalidated its database (a fatal error: a checkpoint that met a full disk
        or too little memory), and every later statement would fail until a restart. Close
        it and connect again, without a restart: committed work is in the file and its log
        (DuckDB replays it); accepted jobs not yet recorded are still in the inbox and the
        registrar records them; jobs that were running are requeued by their workers, whose
        writes failed. On failure the store stays down and the next statement tries again."""
        with self._reopen_lock:
            if self._db is not broken or self._closing.is_set():
                return  # another thread reopened it already, or the store is closing
            if broken is None and time.monotonic() < self._reopen_at:
                return
            self._down = True
            self._db = None
            if broken is not None:
                log.error("DuckDB failed and invalidated the database; reopening it: %s", cause)
                with contextlib.suppress(duckdb.Error):
                    broken.close()
            try:
                db = self._connect()
                try:
                    with contextlib.closing(db.cursor()) as cur:
                        self._load_catalog(cur)
                except BaseException:
                    db.close()
                    raise
            except Exception:
                log.exception("reopening the database failed; trying again in a moment")
                self._reopen_at = time.monotonic() + REOPEN_PAUSE_SECONDS
                return
            self._db, self._down = db, False
            log.warning("DuckDB reopened: the store serves again")
        self._wake_registrar.set()

    def close(self) -> None:
        self._closing.set()
        self._wake_registrar.set()
        if self._registrar.is_alive():
            self._registrar.join(10)
        with self._reopen_lock:
            if self._db is not None:
                with contextlib.suppress(StoreUnavailable):  # recorded on the next start
                    self._register()
                self._db.close()
                self._db = None

    def prepare_to_run(self) -> None:
        pass  # one process accepts and runs every job; its spool serves both

    def idle(self) -> None:
        # DuckDB checkpoints on the commit that takes its log past `checkpoint_threshold`,
        # and that commit waits for the rewrite (1.6 s seen with 1.5M keyed rows): a
        # moment when no job runs is a better time for it.
        limit = self.settings.duckdb_idle_checkpoint_mb * MIB
        wal = self.settings.duckdb_path.with_name(self.settings.duckdb_path.name + ".wal")
        if time.monotonic() < self._checkpoint_at:
            return
        with contextlib.suppress(FileNotFoundError):
            if limit and wal.stat().st_size >= limit:
                try:
                    with self._cursor() as cur:
                        cur.execute("CHECKPOINT")
                except StoreUnavailable:
                    # Short of disk or memory: DuckDB invalidated the database, which was
                    # reopened. Trying again at every idle moment would do the same.
                    self._checkpoint_pause = (
                        min(CHECKPOINT_PAUSE_SECONDS[1], 2 * self._checkpoint_pause)
                        or CHECKPOINT_PAUSE_SECONDS[0]
                    )
                    self._checkpoint_at = time.monotonic() + self._checkpoint_pause
                    raise
                self._checkpoint_pause = 0.0

    def ping(self) -> bool:
        for _ in range(2):  # a failed database is reopened by the first try
            try:
                with self._cursor() as cur:
                    cur.execute("SELECT 1").fetchone()
                return True
            except Exception:
                if self._down or self._closing.is_set():
                    return False
        return False

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor whose engine failures that may pass (memory, disk, I/O, a fatal error
        that needs the database reopened) come out as `StoreUnavailable`: 503/507 to a
        request, back to the queue for a job. Other DuckDB errors pass through."""
        db = self._db
        if db is None and self._down:
            self._reopen(None, RuntimeError("still down"))
            db = self._db
        if db is None:
            if self._down:
                raise StoreUnavailable(
                    "store_unavailable", "the embedded store is reopening; try again", 5
                )
            raise StoreUnavailable("store_closed", "the store is not open")
        cur = None
        try:
            cur = db.cursor()
            yield cur
        except duckdb.Error as exc:
            if needs_reopening(exc):
                self._reopen(db, exc)
            unavailable = engine_failure(exc)
            if unavailable is None:
                raise
            raise unavailable from exc
        finally:
            if cur is not None:
                with contextlib.suppress(duckdb.Error):
                    cur.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._cursor() as cur:
            cur.execute("BEGIN")
            try:
                yield cur
            except BaseException:
                # A failed COMMIT or a fatal error left no transaction to roll back: the
                # error that got here is the one to report.
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    # datasets ---------------------------------------------------------
    # A change to a dataset updates the file, then `_datasets`; `_catalog_lock` makes the
    # two one step for create, PATCH and drop, so concurrent changes (a PATCH racing a drop)
    # leave memory as the file is. A write that adds columns reloads the document after
    # its commit, under the same lock. DuckDB refuses conflicting transactions rather than
    # waiting: a PATCH or drop that meets a write's uncommitted change answers 409
    # `dataset_busy`; a write that meets a committed PATCH or drop runs again or fails.
    def create_dataset(self, dataset: Dataset) -> None:
        columns = ", ".join(column_ddl(c) for c in dataset.columns)
        if dataset.unique_key:  # no index: see KEY_HASH
            columns += f", {quote(KEY_HASH)} {KEY_HASH_TYPE} NOT NULL"
        with self._catalog_lock:
            try:
                with self._transaction() as cur:
                    if cur.execute(
                        "SELECT 1 FROM _pb_datasets WHERE id = ?", [dataset.id]
                    ).fetchone():
                        raise PushbaseError(
                            "dataset_exists", f"dataset {dataset.id!r} already exists", 409
                        )
                    cur.execute(f"CREATE TABLE {table_name(dataset.id)} ({columns})")
                    cur.execute(
                        "INSERT INTO _pb_datasets VALUES (?, ?)",
                        [dataset.id, self._dataset_doc(dataset)],
                    )
            except (duckdb.ConstraintException, duckdb.CatalogException) as exc:
                # DuckDB compares table names case-insensitively: `ds_A` is `ds_a`.
                other = [i for i in self._datasets if i.casefold() == dataset.id.casefold()]
                detail = f" (dataset {other[0]!r} differs only in case)" if other else ""
                raise PushbaseError(
                    "dataset_exists", f"dataset {dataset.id!r} already exists{detail}", 409
                ) from exc
            self._datasets[dataset.id] = dataset.model_copy(deep=True)

    @staticmethod
    def _dataset_doc(dataset: Dataset) -> str:
        return dataset.model_dump_json(exclude={"row_count"})

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        dataset = self._datasets.get(dataset_id)
        return dataset.model_copy(deep=True) if dataset else None  # callers may change theirs

    def list_datasets(self) -> list[Dataset]:
        datasets = dict(self._datasets)  # a drop may remove one meanwhile
        return [datasets[i].model_copy(deep=True) for i in sorted(datasets)]

    def update_dataset(self, dataset: Dataset, add_columns: list[Column]) -> None:
        with self._catalog_lock:
            try:
                with self._transaction() as cur:
                    saved = self._update_dataset(cur, dataset, add_columns)
            except duckdb.TransactionException as exc:
                raise _busy(dataset.id) from exc
            if saved is None:
                self._datasets.pop(dataset.id, None)
                raise not_found("dataset", dataset.id)  # dropped since it was read
            self._datasets[dataset.id] = saved.model_copy(deep=True)
        dataset.columns = saved.columns  # with any column a write added meanwhile

    def _update_dataset(
        self,
        cur: duckdb.DuckDBPyConnection,
        dataset: Dataset,
        add_columns: list[Column],
        known: set[str] | None = None,
    ) -> Dataset | None:
        """Add columns and save the document (not `_datasets`: the caller does, after the
        commit): the document saved, or None when the dataset is gone. A PATCH also sets
        name, description and policy; a write (`known`: see `merge_columns`) only adds."""
        row = cur.execute("SELECT doc FROM _pb_datasets WHERE id = ?", [dataset.id]).fetchone()
        if row is None:
            return None
        stored = Dataset.model_validate_json(row[0])
        columns = merge_columns(stored, add_columns, known)
        saved = (stored if known is not None else dataset).model_copy(
            update={"columns": columns, "updated_at": dataset.updated_at}
        )
        cur.execute(
            "UPDATE _pb_datasets SET doc = ? WHERE id = ?", [self._dataset_doc(saved), dataset.id]
        )
        for column in add_columns:
            # New columns are nullable in storage: existing rows have no value for them.
            cur.execute(
                f"ALTER TABLE {table_name(dataset.id)} ADD COLUMN"
                f" {quote(column.name)} {SQL_TYPES[column.type]}"
            )
        return saved

    def drop_dataset(self, dataset_id: str) -> bool:
        with self._catalog_lock:
            try:
                with self._transaction() as cur:
                    found = cur.execute(
                        "DELETE FROM _pb_datasets WHERE id = ?", [dataset_id]
                    ).fetchone()[0]
                    if found:
                        cur.execute(f"DROP TABLE IF EXISTS {table_name(dataset_id)}")
            except duckdb.TransactionException as exc:
                raise _busy(dataset_id) from exc
            self._datasets.pop(dataset_id, None)
        return bool(found)

    def row_count(self, dataset_id: str) -> int:
        try:
            with self._cursor() as cur:
                return cur.execute(f"SELECT count(*) FROM {table_name(dataset_id)}").fetchone()[0]
        except duckdb.CatalogException:
            return 0  # no table (dropped meanwhile): one dataset never fails a whole list

    # rows -------------------------------------------------------------
    def read_rows(self, dataset: Dataset, query: RowQuery) -> tuple[pa.Table, int]:
        where, params = self._where(query.filters)
        order = ", ".join(f"{quote(c)} {'DESC' if desc else 'ASC'}" for c, desc in query.order_by)
        if not order:
            order = ", ".join(quote(k) for k in dataset.unique_key) or "rowid"
        columns = ", ".join(quote(c.name) for c in dataset.columns)
        table = table_name(dataset.id)
        with self._cursor() as cur, self._gone_as_not_found(dataset.id):
            total = cur.execute(f"SELECT count(*) FROM {table}{where}", params).fetchall()[0][0]
            page = cur.sql(
                f"SELECT {columns} FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                params=[*params, query.limit, query.offset],
            ).to_arrow_table()
        return page, total

    @contextlib.contextmanager
    def _gone_as_not_found(self, dataset_id: str) -> Iterator[None]:
        """A read that meets the table dropped under it: the dataset is gone, 404."""
        try:
            yield
        except duckdb.CatalogException as exc:
            if self._exists(dataset_id):  # a table lost before this release: drop it
                log.warning("dataset %r has no table: %s", dataset_id, exc)
            raise not_found("dataset", dataset_id) from exc

    def _committed(self, saved: Dataset) -> None:
        """After a write that added columns committed `saved`: memory takes the document
        the file now has (a PATCH may have saved a later one), or `saved` if it cannot be
        read (a stale copy would make every later push add the same columns again)."""
        with self._catalog_lock:
            try:
                with self._cursor() as cur:
                    row = cur.execute(
                        "SELECT doc FROM _pb_datasets WHERE id = ?", [saved.id]
                    ).fetchone()
            except StoreUnavailable:
                row = (self._dataset_doc(saved),)
            if row:
                self._datasets[saved.id] = Dataset.model_validate_json(row[0])

    def _exists(self, dataset_id: str) -> bool:
        """Whether the dataset exists once a change in progress (a drop) is done."""
        with self._catalog_lock:
            return dataset_id in self._datasets

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
        with self._cursor() as cur, self._gone_as_not_found(dataset.id):
            reader = cur.sql(
                f"SELECT {columns} FROM {table_name(dataset.id)} ORDER BY {order}"
            ).to_arrow_reader(50_000)
            yield from reader

    def job_counts(self) -> dict[JobStatus, int]:
        self._register()  # accepted jobs not yet recorded count too
        with self._cursor() as cur:
            rows = cur.execute("SELECT status, count(*) FROM _pb_jobs GROUP BY status").fetchall()
        return {status: 0 for status in JobStatus} | {JobStatus(s): n for s, n in rows}

    # keys -------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO _pb_keys (id, key_hash, doc) VALUES (?, ?, ?)",
                [key.id, key.key_hash, key.model_dump_json()],
            )
        self._keys[key.key_hash] = key.model_copy()

    def find_key(self, key_hash: str) -> ApiKey | None:
        key = self._keys.get(key_hash)
        return key.model_copy() if key else None

    def list_keys(self) -> list[ApiKey]:
        return sorted((k.model_copy() for k in self._keys.values()), key=lambda k: k.id)

    def revoke_key(self, key_id: str) -> bool:
        with self._cursor() as cur:
            found = cur.execute(
                "UPDATE _pb_keys SET revoked = true WHERE id = ? AND NOT revoked", [key_id]
            ).fetchone()[0]
        for key_hash in [h for h, k in self._keys.items() if k.id == key_id]:
            del self._keys[key_hash]
        return bool(found)

    # jobs -------------------------------------------------------------
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
                    "created_at": pa.array(
                        [_naive(j.created_at) for j in jobs], pa.timestamp("us")
                    ),
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
        DuckDBStore._save_jobs(cur, [job])

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

    # the write --------------------------------------------------------
    def apply(self, dataset: Dataset, works: list[Work]) -> list[Job]:
        return apply_optimistically(
            works, lambda optimistic: self._apply(dataset, works, optimistic)
        )

    def _apply(self, dataset: Dataset, works: list[Work], optimistic: bool) -> list[Job]:
        try:
            with self._transaction() as cur:
                self.memory.before_write(cur)
                known = {c.name for c in dataset.columns}
                new_columns = evolve(dataset, works)
                if new_columns:
                    saved = self._update_dataset(cur, dataset, new_columns, known)
                    if saved is None:
                        raise NotWritten(DATASET_DROPPED)
                writer = DuckDBWriter(cur, dataset, works, optimistic and not new_columns)
                jobs = settle(writer, works[0].job.method, self.settings)
                self._save_jobs(cur, jobs)
        except AtomicViolation as violation:
            return [self.fail_job(violation.job, ATOMIC_ERROR, violation.errors)]
        except NotWritten as refused:
            return [self.fail_job(work.job, refused.error) for work in works]
        except (duckdb.TransactionException, duckdb.CatalogException) as exc:
            if not self._exists(dataset.id):  # dropped under the write
                return [self.fail_job(work.job, DATASET_DROPPED) for work in works]
            if isinstance(exc, duckdb.TransactionException):
                # A PATCH changed the table or its document meanwhile: nothing was written.
                raise StoreUnavailable(
                    "dataset_changed", "the dataset changed during the write; it runs again"
                ) from exc
            raise
        if new_columns:
            self._committed(saved)
        for job in jobs:
            self._ended(job)
        return jobs


class DuckDBWriter(SqlWriter):
    def __init__(
        self,
        cur: duckdb.DuckDBPyConnection,
        dataset: Dataset,
        works: list[Work],
        optimistic: bool = False,
    ) -> None:
        super().__init__(dataset, works, table_name(dataset.id), optimistic)
        self.cur = cur
        self.found: str | None = None  # the temporary table of stored rows, once gathered

    # Keys without an index (see KEY_HASH): the stored rows of the staged keys are
    # gathered once per write, by a join on the key hash alone (the table's other columns
    # are not read), then fetched by rowid; joins on the key itself then run between
    # temporary tables the size of the batch, and stored rows are deleted by rowid.
    def stored_rows(self, columns: Iterable[str] = ()) -> str:
        if self.found is None:
            keys = self.dataset.unique_key
            names = [*keys, *(c for c in columns if c not in keys)]
            staged_hash = key_hash(self.dataset, {k: f"s.c{self.positions[k]}" for k in keys})
            candidates = f"cnd_{self.tag}"
            self.execute(
                f"CREATE TEMP TABLE {candidates} AS SELECT t.rowid AS _rid FROM {self.table} t"
                f" SEMI JOIN {self.stg} s ON t.{quote(KEY_HASH)} = {staged_hash}"
            )
            self.found = f"fnd_{self.tag}"
            self.execute(
                f"CREATE TEMP TABLE {self.found} AS SELECT rowid AS _rid,"
                f" {', '.join(quote(n) for n in names)} FROM {self.table}"
                f" WHERE rowid IN (SELECT _rid FROM {candidates})"
            )
        return self.found

    def delete_stored(self, keys: str) -> None:
        self._delete_found(keys, {k: f"c{self.positions[k]}" for k in self.dataset.unique_key})

    def _delete_found(self, keys: str, names: dict[str, str]) -> None:
        """Delete the gathered rows whose key is in `keys` (key columns `names[key]`)."""
        on = " AND ".join(f"f.{quote(k)} = s.{names[k]}" for k in self.dataset.unique_key)
        self.execute(
            f"DELETE FROM {self.table} WHERE rowid IN"
            f" (SELECT f._rid FROM {self.stored_rows()} f SEMI JOIN {keys} s ON {on})"
        )

    def _write_merged(self, any_existing: bool) -> None:
        """Stored rows of the merged keys out, the merged rows in: the merged rows hold
        every final value, and nothing here reads more than the batch's rows."""
        merged_as = self._merged_names()
        if any_existing:
            self._delete_found(f"(SELECT * FROM {self.mrg} WHERE _existed)", merged_as)
        columns = ", ".join(self.ident(c.name) for c in self.dataset.columns)
        hashed = key_hash(self.dataset, merged_as)
        self.execute(
            f"INSERT INTO {self.table} ({columns}, {quote(KEY_HASH)})"
            f" SELECT {', '.join(merged_as.values())}, {hashed} FROM {self.mrg} WHERE NOT _bad"
        )

    def _staged_columns(self) -> tuple[str, str]:
        target, source = super()._staged_columns()
        if not self.dataset.unique_key:
            return target, source
        hashed = key_hash(self.dataset, {k: f"c{self.positions[k]}" for k in self.positions})
        return f"{target}, {quote(KEY_HASH)}", f"{source}, {hashed}"

    def _insert_unchecked(self, staged: pa.Table) -> None:
        """Optimistic insert: with no index to refuse a stored or repeated key, look for
        them first (the key hash only: cheap), and write the careful way if there are."""
        if self.dataset.unique_key and self._may_conflict(staged):
            self.stage(staged)
            try:
                self._insert()
            finally:
                self.unstage()
            return
        super()._insert_unchecked(staged)

    def _may_conflict(self, staged: pa.Table) -> bool:
        """Whether a key repeats in the batch or is stored. Stored keys are compared on
        the key itself: the rows whose hash matches (a few hundred false ones per 150k
        keys at 10M rows) are fetched by rowid first."""
        keys = [f"c{self.positions[k]}" for k in self.dataset.unique_key]
        hashed = key_hash(self.dataset, {k: f"s.c{self.positions[k]}" for k in self.positions})
        candidates = f"cnd_{self.tag}"
        with self._registered(staged.select(keys)) as source:
            ((repeated,),) = self.fetch(
                f"SELECT EXISTS (SELECT 1 FROM {source} GROUP BY {', '.join(keys)}"
                " HAVING count(*) > 1)"
            )
            if repeated:
                return True
            self.execute(
                f"CREATE TEMP TABLE {candidates} AS SELECT t.rowid AS _rid FROM {self.table} t"
                f" SEMI JOIN {source} s ON t.{quote(KEY_HASH)} = {hashed}"
            )
            try:
                ((stored,),) = self.fetch(
                    f"SELECT EXISTS (SELECT 1 FROM (SELECT"
                    f" {', '.join(quote(k) for k in self.dataset.unique_key)} FROM {self.table}"
                    f" WHERE rowid IN (SELECT _rid FROM {candidates})) f"
                    f" SEMI JOIN {source} s ON {self._join('f', 's')})"
                )
            finally:
                self.execute(f"DROP TABLE {candidates}")
        return bool(stored)

    def unstage(self) -> None:
        super().unstage()
        self.execute(f"DROP TABLE IF EXISTS cnd_{self.tag}")
        self.execute(f"DROP TABLE IF EXISTS fnd_{self.tag}")
        self.found = None

    def ident(self, column: str) -> str:
        return quote(column)

    def sql_type(self, column: Column) -> str:
        return SQL_TYPES[column.type]

    def execute(self, sql: str) -> None:
        try:
            self.cur.execute(sql)
        except duckdb.ConstraintException as exc:
            if self.optimistic:
                raise KeyConflict from exc
            raise

    def dml(self, sql: str) -> int:
        return int(self.cur.execute(sql).fetchall()[0][0])

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.cur.execute(sql).fetchall()

    def stage(self, staged: pa.Table) -> None:
        with self._registered(staged) as source:
            self.cur.execute(f"CREATE TEMP TABLE {self.stg} AS SELECT * FROM {source}")

    def insert_rows(self, staged: pa.Table, target: list[str]) -> None:
        # One plain INSERT reads the rows once: DuckDB scans the Arrow table where it is.
        columns = ", ".join(self.ident(name) for name in target)
        select = "*"
        if self.dataset.unique_key:
            columns += f", {quote(KEY_HASH)}"
            select += ", " + key_hash(
                self.dataset, {k: f"c{self.positions[k]}" for k in self.positions}
            )
        with self._registered(staged) as source:
            self.execute(f"INSERT INTO {self.table} ({columns}) SELECT {select} FROM {source}")

    @contextlib.contextmanager
    def _registered(self, table: pa.Table) -> Iterator[str]:
        source = f"src_{self.tag}"
        self.cur.register(source, table)
        try:
            yield source
        finally:
            # After a KeyConflict the transaction is aborted; its rollback drops the view.
            with contextlib.suppress(duckdb.TransactionException):
                self.cur.unregister(source)

    def last_value(self, value: str, mask: str | None) -> str:
        # A struct keeps an explicit null that a bare arg_max would skip.
        where = f" FILTER (WHERE {mask})" if mask else ""
        return f"(arg_max({{'v': {value}}}, o){where}).v"
