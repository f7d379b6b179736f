"""Accepting a push: the one entry for the native API and every dialect.

A push becomes a job only once its payload is durable (DESIGN §3). Callers
either stream a request body to disk (`api/intake.py`) or hand over bytes they
built themselves (`spool_bytes`, for dialects that unwrap base64 or envelopes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from pushbase.decode import DecodeOptions
from pushbase.errors import PushbaseError
from pushbase.jobs.model import Job
from pushbase.jobs.runner import JobRunner
from pushbase.schema import Dataset, WriteMethod
from pushbase.settings import Settings
from pushbase.storage import Store
from pushbase.storage.spool import fsync_path


@dataclass
class Services:
    """The parts of a running server, shared by every route."""

    settings: Settings
    store: Store
    runner: JobRunner


@dataclass
class Payload:
    """A body on durable local storage, waiting to become a job."""

    path: Path
    size: int
    sha256: str
    content_type: str | None
    content_encoding: str | None = None


@dataclass
class Submission:
    dataset: Dataset
    method: WriteMethod
    payload: Payload | None  # None for delete-all
    source: str = "v1"
    idempotency_key: str | None = None
    atomic: bool = False
    options: DecodeOptions = field(default_factory=DecodeOptions)
    label: str | None = None  # kept on the job, not part of the idempotency fingerprint


def _durably_enqueue(svc: Services, job: Job, payload: Payload | None, window: datetime) -> Job:
    if payload is not None:
        fsync_path(payload.path)  # the body on disk before the job exists
    return svc.store.enqueue(job, payload.path if payload else None, window)


def check_queue(svc: Services, incoming: int) -> None:
    """Backpressure: refuse a push while too many bytes wait to be applied."""
    if svc.store.pending_bytes() + incoming > svc.settings.queue_max_bytes:
        raise PushbaseError(
            "queue_full",
            "too many bytes are waiting to be applied; retry later",
            429,
            {"queue_max_bytes": svc.settings.queue_max_bytes},
            headers={"Retry-After": "1"},
        )


def spool_bytes(svc: Services, data: bytes, content_type: str) -> Payload:
    """Write bytes a dialect built to the spool, fsync'd, as if they had been a body."""
    if len(data) > svc.settings.max_inflated_bytes:
        raise PushbaseError("payload_too_large", "the payload is too large", 413)
    path = svc.store.incoming_path()
    path.write_bytes(data)  # fsync'd by `submit`, with the enqueue
    return Payload(path, len(data), hashlib.sha256(data).hexdigest(), content_type)


async def submit(svc: Services, submission: Submission, wait: float = 0) -> Job:
    """Enqueue durably; return the job, finished if it finished within `wait` seconds.

    With an idempotency key seen before, the first job comes back and nothing new runs.
    """
    payload = submission.payload
    options = submission.options.model_dump(exclude_defaults=True)
    fingerprint = hashlib.sha256(
        ":".join(
            [
                payload.sha256 if payload else "-",
                submission.method.value,
                str(submission.atomic),
                repr(sorted(options.items())),
            ]
        ).encode()
    ).hexdigest()
    job = Job(
        dataset_id=submission.dataset.id,
        method=submission.method,
        bytes=payload.size if payload else 0,
        source=submission.source,
        idempotency_key=submission.idempotency_key,
        payload_hash=fingerprint,
        content_type=payload.content_type if payload else None,
        content_encoding=payload.content_encoding if payload else None,
        atomic=submission.atomic,
        options=options,
        label=submission.label,
    )
    window = datetime.now(UTC) - timedelta(seconds=svc.settings.idempotency_window_seconds)
    try:
        job = await run_in_threadpool(_durably_enqueue, svc, job, payload, window)
    finally:
        if payload is not None:
            payload.path.unlink(missing_ok=True)  # still there only if enqueue did not keep it
    svc.runner.notify()
    if wait > 0 and not job.status.finished:
        done = await svc.runner.wait(job.id, min(wait, svc.settings.max_wait_seconds))
        if done is not None:
            return done
    return job
