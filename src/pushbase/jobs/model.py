"""The job document of DESIGN §3 and its life cycle."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, Field, field_validator

from pushbase.decode.rowerrors import DEFAULT_TEXT_LIMIT, RowError, safe_error_dict, safe_text
from pushbase.errors import PushbaseError
from pushbase.schema import WriteMethod


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobPhase(StrEnum):
    decoding = "decoding"
    writing = "writing"


class JobStats(BaseModel):
    received: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    not_found: int = 0
    failed: int = 0
    ignored_fields: int = 0


class JobError(BaseModel):
    code: str
    message: str


def new_job_id() -> str:
    return f"job_{secrets.token_hex(10)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    """One accepted push. Fields after `error` are internal and never shown."""

    id: str = Field(default_factory=new_job_id)
    dataset_id: str
    method: WriteMethod
    status: JobStatus = JobStatus.queued
    phase: JobPhase | None = None
    progress: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    bytes: int = 0
    source: str = "v1"
    idempotency_key: str | None = None
    stats: JobStats = Field(default_factory=JobStats)
    errors: list[dict[str, Any]] = Field(default_factory=list)
    errors_total: int = 0
    error: JobError | None = None

    # internal
    seq: int = 0
    label: str | None = None  # a caller's name for the job (D·engage `jobName`)
    payload_hash: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    atomic: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("errors", mode="after")
    @classmethod
    def _safe_errors(cls, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # A job stored before row errors were made safe may hold a value no JSON encoder
        # takes (an integer beyond 64 bits): it is made safe as it is read.
        return [safe_error_dict(e) for e in errors]

    @property
    def outcome(self) -> str | None:
        """DESIGN §10.1: complete, partial or rejected once the job has ended; None while
        it is queued or running, and for a cancelled job (it was neither run nor refused)."""
        if self.status is JobStatus.failed:
            return "rejected"
        if self.status is not JobStatus.succeeded:
            return None
        failed = self.stats.failed
        if not failed:
            return "complete"
        return "rejected" if failed >= self.stats.received else "partial"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)

    def document(self) -> dict[str, Any]:
        """The public job document (DESIGN §3)."""
        doc = self.model_dump(
            mode="json",
            exclude={
                "seq",
                "payload_hash",
                "content_type",
                "content_encoding",
                "atomic",
                "options",
                "label",
            },
        )
        doc["duration_ms"] = self.duration_ms
        doc["outcome"] = self.outcome
        # Whatever was stored (older documents too), a job document always encodes.
        doc["errors"] = [safe_error_dict(e) for e in doc["errors"]]
        if doc["error"] is not None:
            doc["error"]["message"] = safe_text(doc["error"]["message"], 4 * DEFAULT_TEXT_LIMIT)
        return doc


class ErrorLimits(Protocol):
    """What a job document may hold of its row errors: `Settings` has these, as does
    `RowErrorLimits`."""

    max_row_errors: int
    max_row_errors_text: int
    max_job_document_bytes: int


class RowErrorLimits(BaseModel):
    """What a job document may hold of its row errors (the settings of the same names)."""

    max_row_errors: int = 100
    max_row_errors_text: int = DEFAULT_TEXT_LIMIT
    max_job_document_bytes: int = 256 * 1024


def record_row_errors(job: Job, errors: list[RowError], limits: ErrorLimits) -> None:
    """Keep a job's row errors as its document shows them: at most `max_row_errors`, each
    cut to `max_row_errors_text`, and no more than fit `max_job_document_bytes` with the
    rest of the document; `errors_total` and `stats.failed` still count every one.

    Both stores call this, for succeeded and failed jobs alike.
    """
    text = limits.max_row_errors_text
    kept = [e.to_dict(text) for e in errors[: limits.max_row_errors]]
    job.errors_total = len(errors)
    job.stats.failed = len({e.row for e in errors})
    job.errors = []
    room = limits.max_job_document_bytes - len(orjson.dumps(job.document()))
    sizes = [len(orjson.dumps(e)) + 1 for e in kept]
    if sum(sizes) > room:  # drop trailing errors until the document fits
        total, fits = 0, 0
        for size in sizes:
            if total + size > room:
                break
            total, fits = total + size, fits + 1
        kept = kept[:fits]
    job.errors = kept


MAX_GROUP_JOBS = 64  # jobs a worker takes at once from one dataset (group commit)
ATOMIC_ERROR = JobError(
    code="atomic_violation", message="atomic job had row errors; nothing written"
)


def take_group(candidates: list[Job], joins: Callable[[list[Job], Job], bool]) -> list[Job]:
    """The first job and the ones right after it that may be written with it."""
    group = candidates[:1]
    for job in candidates[1:]:
        if not joins(group, job):
            break
        group.append(job)
    return group


def mark_running(job: Job) -> None:
    job.status, job.phase = JobStatus.running, JobPhase.decoding
    job.started_at = utcnow()


def mark_queued(job: Job) -> None:
    """Back to the queue as if never claimed (a crash or a store failure interrupted it)."""
    job.status, job.phase, job.progress, job.started_at = JobStatus.queued, None, 0, None


def idempotency_conflict(first: Job) -> PushbaseError:
    """The answer to a reused Idempotency-Key whose payload differs from the first."""
    return PushbaseError(
        "idempotency_conflict",
        "this Idempotency-Key was used with a different payload",
        409,
        {"job_id": first.id},
    )
