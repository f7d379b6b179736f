"""Accepting a push: the one entry for the native API and every dialect.

A push becomes a job only once its payload is durable (DESIGN §3). Callers
either stream a request body to disk (`api/intake.py`) or hand over bytes they
built themselves (`spool_bytes`, for dialects that unwrap base64 or envelopes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fastapi.concurrency import run_in_threadpool

from pushbase.admission import Admission
from pushbase.decode import DecodeOptions
from pushbase.decode.formats import format_for
from pushbase.errors import PushbaseError
from pushbase.jobs.model import Job
from pushbase.jobs.runner import JobRunner
from pushbase.payload import Payload
from pushbase.schema import Dataset, WriteMethod
from pushbase.settings import Settings
from pushbase.storage import Store


@dataclass
class Services:
    """The parts of a running server, shared by every route."""

    settings: Settings
    store: Store
    runner: JobRunner
    admission: Admission


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


def fingerprint(submission: Submission, options: dict[str, object]) -> str:
    """What makes two pushes with one idempotency key "the same push": the bytes, how
    they are to be read (format and encoding: the same bytes as CSV and as JSON are two
    pushes), the method, `atomic` and the decoding options."""
    payload = submission.payload
    content = payload.sha256() if payload is not None else "-"
    method, atomic = submission.method.value, str(submission.atomic)
    parts = [content, method, atomic, repr(sorted(options.items()))]
    reading = _reading(payload) if payload is not None else ""
    if reading:
        # Appended only when not plain JSON, so fingerprints stored before the format
        # counted still match their retries.
        parts.append(reading)
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def _reading(payload: Payload) -> str:
    """'' for plain JSON, else the payload's format and encoding ("csv", "json+gzip")."""
    try:
        kind = format_for(payload.content_type).value
    except PushbaseError:  # not a format the intake accepts: judged by its media type
        kind = (payload.content_type or "").split(";", 1)[0].strip().lower()
    encoding = (payload.content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        encoding = ""
    elif encoding == "x-gzip":
        encoding = "gzip"
    reading = kind if not encoding else f"{kind}+{encoding}"
    return "" if reading == "json" else reading


def _durably_enqueue(svc: Services, job: Job, submission: Submission, window: datetime) -> Job:
    # Hashing a body costs about a millisecond per MB: done here, in a worker thread, and
    # only when an idempotency key may have to compare payloads.
    payload = submission.payload
    try:
        if job.idempotency_key is not None:
            job.payload_hash = fingerprint(submission, job.options)
        return svc.store.enqueue(job, payload, window)
    finally:
        if payload is not None:
            payload.discard()  # a file is left only if the store did not take it


def check_queue(svc: Services, incoming: int) -> None:
    """Backpressure: refuse a push while too many bytes wait to be applied (blocking)."""
    _refuse_if_full(svc, svc.store.pending_bytes() + incoming)


async def check_queue_async(svc: Services, incoming: int) -> None:
    """`check_queue` for the event loop: a thread hop only when the store must be asked."""
    pending = svc.store.known_pending_bytes()
    if pending is None:
        pending = await run_in_threadpool(svc.store.pending_bytes)
    _refuse_if_full(svc, pending + incoming)


def _refuse_if_full(svc: Services, queued: int) -> None:
    if queued > svc.settings.queue_max_bytes:
        raise PushbaseError(
            "queue_full",
            "too many bytes are waiting to be applied; retry later",
            429,
            {"queue_max_bytes": svc.settings.queue_max_bytes},
            headers={"Retry-After": "1"},
        )


def spool_bytes(svc: Services, data: bytes, content_type: str) -> Payload:
    """Bytes a dialect built, as if they had been a body."""
    if len(data) > svc.settings.max_inflated_bytes:
        raise PushbaseError("payload_too_large", "the payload is too large", 413)
    # Made durable by the store, off the event loop, when `submit` enqueues it.
    return Payload(svc.store.incoming_path(), len(data), content_type, tail=[data])


async def submit(svc: Services, submission: Submission, wait: float = 0) -> Job:
    """Enqueue durably; return the job, finished if it finished within `wait` seconds.

    With an idempotency key seen before, the first job comes back and nothing new runs.
    """
    payload = submission.payload
    options = submission.options.model_dump(exclude_defaults=True)
    job = Job(
        dataset_id=submission.dataset.id,
        method=submission.method,
        bytes=payload.size if payload else 0,
        source=submission.source,
        idempotency_key=submission.idempotency_key,
        content_type=payload.content_type if payload else None,
        content_encoding=payload.content_encoding if payload else None,
        atomic=submission.atomic,
        options=options,
        label=submission.label,
    )
    window = datetime.now(UTC) - timedelta(seconds=svc.settings.idempotency_window_seconds)
    job = await run_in_threadpool(_durably_enqueue, svc, job, submission, window)
    svc.runner.notify()
    return await finished_within(svc, job, wait)


async def finished_within(svc: Services, job: Job, wait: float) -> Job:
    """The job as it is after up to `wait` seconds (less if it finishes sooner)."""
    if wait > 0 and not job.status.finished:
        done = await svc.runner.wait(job.id, min(wait, svc.settings.max_wait_seconds))
        if done is not None:
            return done
    return job
