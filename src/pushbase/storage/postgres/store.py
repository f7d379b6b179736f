"""The PostgreSQL store: catalog, jobs, payloads and dataset tables in one database,
shared by many `pushbase serve` and `pushbase worker` processes (DESIGN §6).
`PostgresStore` holds the shared state, the pool's life cycle (open and migrate, close)
and the write that ties the parts together; datasets and keys are in `catalog.py`, jobs
in `queue.py`, reads in `rows.py`, the SQL of a write in `writer.py`."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from pushbase.errors import InsufficientStorage, PushbaseError, StoreUnavailable
from pushbase.jobs.model import ATOMIC_ERROR, Job
from pushbase.schema import Dataset
from pushbase.settings import Settings
from pushbase.storage.base import NotWritten, Store
from pushbase.storage.postgres.catalog import CatalogPart
from pushbase.storage.postgres.copies import PayloadCopies
from pushbase.storage.postgres.gauge import QueueGauge
from pushbase.storage.postgres.migrations import migrate
from pushbase.storage.postgres.queue import QueuePart
from pushbase.storage.postgres.recent import RecentDatasets
from pushbase.storage.postgres.rows import RowsPart
from pushbase.storage.postgres.writer import PostgresWriter
from pushbase.storage.spool import Spool
from pushbase.storage.sql import quote
from pushbase.storage.writer import AtomicViolation, Work, apply_optimistically, evolve, settle

QUEUE_MAX_AGE_SECONDS = 0.25  # how stale the backpressure figure may get under load
QUEUE_TRUST_SECONDS = 1.0  # older than this, it is measured again before use
RECENT_DATASET_SECONDS = 1.0  # how stale a dataset the push path uses may be (recent.py)


class PostgresStore(CatalogPart, QueuePart, RowsPart, Store):
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
            migrate(conn)
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
