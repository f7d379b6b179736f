"""DuckDB's memory limit, kept above the indexes it must hold (embedded store), and
which of DuckDB's errors may pass (memory, disk, a database to reopen).

DuckDB holds every primary-key index (ART) in memory, counts it against its memory
limit and cannot evict it: a dataset of 10M two-part string keys held about 1 GB of
index. Dataset tables have no index since schema 2 (see `ddl.KEY_HASH`): only the
catalog's small ones are left, so the limit stays at its floor however large the
datasets grow, and their data is paged like any table's. An index still counts when
a store of an earlier release is opened, until its migration drops it.

Before each write the limit is raised to the indexes plus a working reserve, and
when that would pass the ceiling the write is refused before it starts
(`store_out_of_memory`): its jobs wait in the queue, nothing is lost or harmed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import duckdb

from pushbase.errors import InsufficientStorage, StoreUnavailable
from pushbase.settings import MIB

log = logging.getLogger("pushbase.store")

# What a write needs beyond the indexes: the staged, gathered and merged rows of a
# 32 MiB group and DuckDB's buffers meanwhile.
WRITE_RESERVE_MB = 128
# The limit moves in steps of this much, not on every write.
STEP_MB = 32

INDEX_BYTES = (
    "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
)

# DuckDB reports running out of memory as OutOfMemoryException, or inside COMMIT as a
# TransactionException that quotes it.
OUT_OF_MEMORY_TEXT = (
    "out of memory",
    "failed to pin block",
    "failed to allocate",
    "could not allocate block",
)


def machine_memory_mb() -> int:
    """Physical memory, or the cgroup's limit when the server runs in a smaller one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    return total // MIB


def default_ceiling_mb() -> int:
    """Half of the machine: the rest is the server's own Python side, and the system."""
    return machine_memory_mb() // 2


class MemoryLimit:
    """DuckDB's `memory_limit`: at least `floor_mb`, at most `ceiling_mb`."""

    def __init__(self, floor_mb: int, ceiling_mb: int) -> None:
        self.floor_mb = floor_mb
        self.ceiling_mb = max(ceiling_mb, floor_mb)
        self.current_mb = 0

    def open(self, db: duckdb.DuckDBPyConnection) -> None:
        self._set(db, self.floor_mb)

    def before_write(self, db: duckdb.DuckDBPyConnection, refuse: bool = True) -> None:
        """Make room for a write, or refuse it while the store cannot hold it; with
        `refuse` False (a migration dropping old indexes) take the ceiling instead."""
        index_mb = -(-db.execute(INDEX_BYTES).fetchall()[0][0] // MIB)
        needed = index_mb + WRITE_RESERVE_MB
        if needed > self.ceiling_mb and refuse:
            raise StoreUnavailable(
                "store_out_of_memory",
                f"the embedded store's key indexes hold {index_mb} MB; with what a write"
                f" needs that passes PUSHBASE_DUCKDB_MEMORY_MAX_MB ({self.ceiling_mb}):"
                " raise it, or move to PostgreSQL. Queued jobs wait.",
                retry_after=30,
            )
        target = min(self.ceiling_mb, max(self.floor_mb, -(-needed // STEP_MB) * STEP_MB))
        if target > self.current_mb:
            self._set(db, target)
        elif target < self.current_mb - STEP_MB:  # a dataset dropped: down, by whole steps
            try:
                self._set(db, target)
            except duckdb.Error:  # DuckDB holds more than that right now: later
                return
        else:
            return
        log.info("DuckDB memory limit now %d MB (key indexes: %d MB)", target, index_mb)

    def _set(self, db: duckdb.DuckDBPyConnection, mb: int) -> None:
        db.execute(f"SET memory_limit = '{mb}MB'")
        self.current_mb = mb


# DuckDB reports a full disk inside the message of an IOException, or of the
# TransactionException of a COMMIT whose log could not be written.
NO_ROOM_TEXT = ("no space left on device", "disk quota exceeded")


def needs_reopening(exc: duckdb.Error) -> bool:
    """Whether DuckDB invalidated its database: every statement fails from then on until
    it is opened again (a checkpoint that failed for lack of memory or disk; an internal
    error)."""
    return isinstance(exc, (duckdb.FatalException, duckdb.InternalException)) or (
        "database has been invalidated" in str(exc)
    )


def engine_failure(exc: duckdb.Error) -> StoreUnavailable | None:
    """The store error to answer for DuckDB's `exc` when it may pass (memory, disk, I/O, a
    fatal error after which the database is reopened); None for the others, which a retry
    would meet again (a bug, a constraint)."""
    text = str(exc).lower()
    if any(part in text for part in NO_ROOM_TEXT):
        return InsufficientStorage("the server's disk is full: the embedded store cannot write")
    if needs_reopening(exc):
        return StoreUnavailable(
            "store_unavailable", "the embedded store failed and is reopening; try again", 5
        )
    if isinstance(exc, (duckdb.IOException, duckdb.ConnectionException)):
        # A connection closed under a statement: the database was reopened meanwhile.
        return StoreUnavailable(
            "store_unavailable", "the embedded store could not read or write its file", 5
        )
    return out_of_memory(exc)


def out_of_memory(exc: duckdb.Error) -> StoreUnavailable | None:
    """The store error to answer for DuckDB's `exc`, if it means memory ran out."""
    text = str(exc).lower()
    if isinstance(exc, duckdb.OutOfMemoryException) or (
        isinstance(exc, duckdb.TransactionException)
        and any(part in text for part in OUT_OF_MEMORY_TEXT)
    ):
        return StoreUnavailable(
            "store_out_of_memory",
            "the embedded store ran out of memory (PUSHBASE_DUCKDB_MEMORY_MB); try again",
        )
    return None
