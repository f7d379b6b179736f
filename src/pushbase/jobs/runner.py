"""The job runner: worker threads that apply queued jobs (DESIGN §3).

Jobs of one dataset run one at a time in acceptance order (the store hands out
the oldest queued job of a dataset that has none running); different datasets
run in parallel, one per worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from pushbase.decode import DecodeOptions, decode_payload, format_for, is_gzip
from pushbase.errors import PushbaseError
from pushbase.jobs.model import Job, JobError, JobPhase, JobStatus
from pushbase.schema import WriteMethod
from pushbase.settings import Settings
from pushbase.storage.base import Store

log = logging.getLogger("pushbase.jobs")

IDLE_POLL_SECONDS = 0.5
PURGE_EVERY_SECONDS = 600


class JobRunner:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._wake = threading.Condition()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._finished: dict[str, threading.Event] = {}
        self._finished_lock = threading.Lock()
        self._last_purge = 0.0

    # life cycle -------------------------------------------------------
    def start(self, workers: int) -> None:
        recovered = self.store.recover()
        if recovered:
            log.info("requeued %d jobs left running by a previous process", recovered)
        for number in range(workers):
            thread = threading.Thread(
                target=self._loop, name=f"pushbase-worker-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self.notify()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # waiting for a job ------------------------------------------------
    async def wait(self, job_id: str, timeout: float) -> Job | None:
        """The job once finished, or None if `timeout` seconds pass first."""
        with self._finished_lock:
            event = self._finished.setdefault(job_id, threading.Event())
        try:
            deadline = time.monotonic() + timeout
            delay = 0.005
            job = self.store.get_job(job_id)
            while job is not None and not job.status.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.1)
                if event.is_set() or delay >= 0.1:
                    job = self.store.get_job(job_id)
            return job
        finally:
            with self._finished_lock:
                self._finished.pop(job_id, None)

    def _signal(self, job_id: str) -> None:
        with self._finished_lock:
            event = self._finished.get(job_id)
        if event is not None:
            event.set()

    # the loop ---------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self._claim()
            if job is None:
                self._maybe_purge()
                with self._wake:
                    self._wake.wait(IDLE_POLL_SECONDS)
                continue
            try:
                self.run_job(job)
            finally:
                try:
                    self.store.release(job.id)
                except Exception:
                    log.exception("releasing job %s failed", job.id)
                with self._busy_lock:
                    self._busy.discard(job.dataset_id)
                self._signal(job.id)
                self.notify()  # the dataset's next job may now run

    def _claim(self) -> Job | None:
        with self._busy_lock:
            try:
                job = self.store.claim_job(set(self._busy))
            except Exception:
                log.exception("claiming a job failed")
                return None
            if job is not None:
                self._busy.add(job.dataset_id)
            return job

    def run_job(self, job: Job) -> Job:
        try:
            dataset = self.store.get_dataset(job.dataset_id)
            if dataset is None:
                return self._fail(job, "dataset_not_found", "the dataset was dropped")
            batch = None
            if job.method is not WriteMethod.delete_all:
                payload = self.store.read_payload(job)
                try:
                    batch = decode_payload(
                        payload,
                        format_for(job.content_type),
                        is_gzip(job.content_encoding),
                        dataset,
                        job.method,
                        self.settings.max_inflated_bytes,
                        DecodeOptions.model_validate(job.options),
                    )
                except PushbaseError as exc:
                    return self._fail(job, "invalid_payload", exc.message)
                del payload
                if job.atomic and batch.errors:
                    return self.store.fail_job(
                        job,
                        JobError(
                            code="atomic_violation",
                            message="atomic job had row errors; nothing written",
                        ),
                        batch.errors,
                    )
            self.store.set_phase(job.id, JobPhase.writing, 50)
            job.phase = JobPhase.writing
            return self.store.apply(job, dataset, batch)
        except Exception as exc:  # a bug or a store failure: the job fails, the worker lives
            log.exception("job %s failed", job.id)
            return self._fail(job, "internal_error", f"{type(exc).__name__}: {exc}")

    def _fail(self, job: Job, code: str, message: str) -> Job:
        return self.store.fail_job(job, JobError(code=code, message=message))

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.job_retention_seconds)
        try:
            self.store.purge(cutoff)
        except Exception:
            log.exception("purging old jobs failed")


__all__ = ["JobRunner", "JobStatus"]
