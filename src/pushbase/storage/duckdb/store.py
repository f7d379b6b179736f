"""The embedded store: one DuckDB file plus a payload spool under PUSHBASE_DATA_DIR.
`DuckDBStore` holds the shared state and the connection's life cycle (open and migrate,
reopen after a fatal engine error, idle checkpoints, close) and the write that ties the
parts together; datasets and keys are in `catalog.py`, jobs in `queue.py`, reads in
`rows.py`, the SQL of a write in `writer.py`."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import duckdb

from pushbase.auth import ApiKey
from pushbase.errors import StoreUnavailable
from pushbase.jobs.model import ATOMIC_ERROR, Job, JobPhase
from pushbase.priority import call_in_background_thread
from pushbase.schema import Dataset
from pushbase.settings import MIB, Settings
from pushbase.storage.base import DATASET_DROPPED, NotWritten, Store
from pushbase.storage.duckdb.catalog import CatalogPart
from pushbase.storage.duckdb.ddl import naive
from pushbase.storage.duckdb.inbox import Inbox
from pushbase.storage.duckdb.memory import (
    MemoryLimit,
    default_ceiling_mb,
    engine_failure,
    needs_reopening,
)
from pushbase.storage.duckdb.migrations import migrate
from pushbase.storage.duckdb.queue import QueuePart
from pushbase.storage.duckdb.rows import RowsPart
from pushbase.storage.duckdb.writer import DuckDBWriter
from pushbase.storage.spool import Spool
from pushbase.storage.writer import AtomicViolation, Work, apply_optimistically, evolve, settle

log = logging.getLogger("pushbase.store")

REOPEN_PAUSE_SECONDS = 1.0  # between tries to reopen a failed database
CHECKPOINT_PAUSE_SECONDS = (30.0, 900.0)  # after a failed idle checkpoint: first, longest


class DuckDBStore(CatalogPart, QueuePart, RowsPart, Store):
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
            migrate(cur, self.memory)
            self._load_catalog(cur)
            recorded = {r[0] for r in cur.execute("SELECT id FROM _pb_jobs").fetchall()}
            self._seq = cur.execute("SELECT coalesce(max(seq), 0) FROM _pb_jobs").fetchone()[0]
            window = datetime.now(UTC) - timedelta(seconds=self.settings.idempotency_window_seconds)
            for (doc,) in cur.execute(
                "SELECT doc FROM _pb_jobs WHERE idempotency_key IS NOT NULL AND created_at >= ?"
                " ORDER BY seq",
                [naive(window)],
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
