"""The Store interface that every backend implements.

A store owns the catalog (datasets, keys, jobs), the payloads of unfinished
jobs and the dataset tables. The job runner and the HTTP layer talk only to
this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pushbase.auth import ApiKey
from pushbase.decode import RowError
from pushbase.errors import PushbaseError, StoreUnavailable
from pushbase.jobs.model import Job, JobError, JobPhase, JobStatus
from pushbase.payload import Payload
from pushbase.schema import Column, Dataset, check_columns
from pushbase.storage.writer import Work

GroupRule = Callable[[list[Job], Job], bool]


def refuse_newer_schema(found: int, known: int) -> None:
    """A store migrated by a later release may hold what this one cannot read (compressed
    payloads, new columns): refuse to start on it rather than fail jobs."""
    if found > known:
        raise PushbaseError(
            "store_too_new",
            f"the store was migrated by a later pushbase (schema version {found}; this"
            f" release knows {known}): run the later release",
            500,
        )


class NotWritten(Exception):
    """Raised inside a write's transaction to roll it back: every job of it fails so."""

    def __init__(self, error: JobError) -> None:
        self.error = error


DATASET_DROPPED = JobError(code="dataset_not_found", message="the dataset was dropped")


def merge_columns(
    stored: Dataset, add_columns: list[Column], known: set[str] | None = None
) -> list[Column]:
    """The stored columns and those added, checked as new names against them.

    A change bases on the stored columns, not its caller's copy: a PATCH and a write that
    adds columns may both have read the dataset before either saved. For a write, `known`
    is the columns it decoded by: when its names are refused because a change made
    meanwhile added one, it runs again (decoded anew); otherwise its jobs fail."""
    columns = [*stored.columns, *(c.model_copy() for c in add_columns)]
    try:
        return check_columns(columns, stored.unique_key, stored=len(stored.columns))
    except PushbaseError as exc:
        if known is None:
            raise
        if any(c.name not in known for c in stored.columns):
            raise StoreUnavailable(
                "dataset_changed", "the dataset's columns changed meanwhile; the job runs again"
            ) from exc
        raise NotWritten(JobError(code=exc.code, message=exc.message)) from exc


@dataclass
class RowQuery:
    limit: int = 100
    offset: int = 0
    order_by: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    filters: dict[str, Any] = field(default_factory=dict)  # column → coerced value


class Store(ABC):
    #: Datasets and keys are served from memory (no I/O): lookups need no thread.
    memory_catalog: bool = False

    # life cycle -------------------------------------------------------
    @abstractmethod
    def open(self) -> None:
        """Connect and migrate the catalog to the current schema version."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> bool: ...

    # datasets ---------------------------------------------------------
    @abstractmethod
    def create_dataset(self, dataset: Dataset) -> None:
        """Create catalog entry and typed table; `dataset_exists` if the id is taken."""

    @abstractmethod
    def get_dataset(self, dataset_id: str) -> Dataset | None: ...

    def recent_dataset(self, dataset_id: str) -> Dataset | None:
        """A copy of the dataset up to a second old, if this process holds one (no I/O;
        do not change it); else None, and `get_dataset` must be asked. For the push path,
        which uses only what a dataset keeps for life: its id and unique key."""
        return self.get_dataset(dataset_id) if self.memory_catalog else None

    @abstractmethod
    def list_datasets(self) -> list[Dataset]: ...

    @abstractmethod
    def update_dataset(self, dataset: Dataset, add_columns: list[Column]) -> None:
        """Save `dataset` (whose columns end with `add_columns`) and add those columns to its
        table. Columns another change added meanwhile are kept, and `dataset.columns` is
        set to the stored list. `dataset_not_found` (404) if it was dropped meanwhile;
        `duplicate_column` (400) if an added name clashes with a stored one."""

    @abstractmethod
    def drop_dataset(self, dataset_id: str) -> bool: ...

    @abstractmethod
    def row_count(self, dataset_id: str) -> int:
        """Rows in the dataset's table; 0 if the dataset is gone (dropped meanwhile)."""

    # rows -------------------------------------------------------------
    @abstractmethod
    def read_rows(self, dataset: Dataset, query: RowQuery) -> tuple[pa.Table, int]:
        """A page of rows and the total number of rows matching the filters."""

    @abstractmethod
    def export_batches(self, dataset: Dataset) -> Iterator[pa.RecordBatch]: ...

    # keys -------------------------------------------------------------
    @abstractmethod
    def add_key(self, key: ApiKey) -> None: ...

    @abstractmethod
    def find_key(self, key_hash: str) -> ApiKey | None: ...

    @abstractmethod
    def list_keys(self) -> list[ApiKey]: ...

    @abstractmethod
    def revoke_key(self, key_id: str) -> bool: ...

    # jobs -------------------------------------------------------------
    @abstractmethod
    def incoming_path(self) -> Path:
        """A fresh local file for the request path to stream a body into."""

    @abstractmethod
    def enqueue(self, job: Job, payload: Payload | None, window_start: datetime) -> Job:
        """Make the job and its payload durable, then return it (blocking).

        With an idempotency key seen on the dataset since `window_start`, return
        that first job instead (same payload hash) or raise `idempotency_conflict`.
        """

    @abstractmethod
    def get_job(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def job_counts(self) -> dict[JobStatus, int]:
        """How many jobs the store holds in each status (every status present; for metrics)."""

    @abstractmethod
    def list_jobs(
        self,
        dataset_id: str | None,
        status: JobStatus | None,
        limit: int,
        datasets: list[str] | None,
    ) -> list[Job]: ...

    @abstractmethod
    def claim_jobs(self, busy_datasets: set[str], joins: GroupRule) -> list[Job]:
        """Take the oldest pending job of a dataset no one else is running, plus the
        queued jobs right after it that `joins(group, job)` accepts (group commit);
        mark them running. Empty when there is nothing to do."""

    @abstractmethod
    def queued_after(self, dataset_id: str, after_seq: int, limit: int) -> list[Job]:
        """Queued jobs of a dataset after `after_seq`, oldest first; claims nothing."""

    @abstractmethod
    def release(self, job_id: str) -> None:
        """The runner is done with a claimed job (finished or not): free what the claim holds."""

    @abstractmethod
    def read_payload(self, job: Job) -> bytes: ...

    def payload_file(self, job: Job) -> Path | None:
        """A local file whose first `job.bytes` bytes are the payload, when the store
        keeps one (read it there)."""
        return None

    @abstractmethod
    def set_phase(self, job_id: str, phase: JobPhase, progress: int) -> None: ...

    @abstractmethod
    def cancel_job(self, job_id: str) -> Job | None:
        """Cancel a queued job; None when it is no longer queued."""

    @abstractmethod
    def apply(self, dataset: Dataset, works: list[Work]) -> list[Job]:
        """Write the jobs' rows and record their outcomes, all in one transaction.

        An atomic job with row errors is failed instead and nothing is written."""

    @abstractmethod
    def fail_job(self, job: Job, error: JobError, errors: list[RowError] | None = None) -> Job: ...

    @abstractmethod
    def requeue(self, jobs: list[Job]) -> None:
        """Put claimed jobs back in the queue: their write met a store failure that may
        pass (`StoreUnavailable`), so they run again later. `release` still follows."""

    @abstractmethod
    def recover(self) -> int:
        """Put jobs left running by a dead process back in the queue; return how many."""

    @abstractmethod
    def purge(self, before: datetime) -> int:
        """Forget finished jobs older than `before`."""

    @abstractmethod
    def pending_bytes(self) -> int:
        """Payload bytes of jobs not yet finished (for backpressure).

        Every push asks, so a figure up to a second old will do: a store may answer
        from memory rather than wait for a busy database."""

    def known_pending_bytes(self) -> int | None:
        """`pending_bytes` if this process can tell without I/O, else None."""
        return self.pending_bytes() if self.memory_catalog else None

    @abstractmethod
    def prepare_to_run(self) -> None:
        """Workers will run jobs in this process (a process may also only accept them)."""

    @abstractmethod
    def idle(self) -> None:
        """No job has been claimed for a moment and none is running: a time for
        housekeeping that would otherwise fall on a job's commit."""
