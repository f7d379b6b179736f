"""Decode-ahead: the next queued jobs of a dataset are decoded while its current group
is being written.

Decoding is Python work that holds the GIL; a store's write runs mostly in the
database, without it. Doing both side by side lets one busy dataset use two cores.
A result is used only if the dataset's schema is still the one it was decoded
against, and results are kept within a byte budget; anything not taken is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from pushbase.decode import DecodedBatch
from pushbase.errors import PushbaseError
from pushbase.jobs.model import Job
from pushbase.priority import lower_this_thread
from pushbase.schema import Dataset
from pushbase.storage import Store

log = logging.getLogger("pushbase.jobs")

Decoder = Callable[[Job, Dataset], DecodedBatch]
STALE_SECONDS = 120


def schema_key(dataset: Dataset) -> str:
    """What a decode depends on besides the payload: columns, key, unknown-field policy."""
    shape = dataset.model_dump_json(include={"columns", "unique_key", "unknown_fields"})
    return hashlib.sha1(shape.encode()).hexdigest()


class DecodeAhead:
    def __init__(self, store: Store, decode: Decoder, budget_bytes: int, max_jobs: int) -> None:
        self.store = store
        self.decode = decode
        self.budget = budget_bytes
        self.max_jobs = max_jobs
        self._lock = threading.Lock()
        # job id → (schema key, batch or the decode error, payload bytes, when)
        self._ready: dict[str, tuple[str, DecodedBatch | PushbaseError, int, float]] = {}
        self._busy: dict[str, threading.Event] = {}
        self._tasks: queue.Queue[tuple[Dataset, int]] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(
            target=self._loop, name="pushbase-decode-ahead", daemon=True
        )
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def request(self, dataset: Dataset, after_seq: int) -> None:
        """Ask for the queued jobs after `after_seq` to be decoded (never blocks)."""
        # Decode-ahead is an optimisation: when it is busy, the worker decodes what is missing.
        with contextlib.suppress(queue.Full):
            self._tasks.put_nowait((dataset, after_seq))

    def take(self, job: Job, dataset: Dataset) -> DecodedBatch | None:
        """The job's decoded rows if decoded ahead for this schema (a decode error is raised)."""
        with self._lock:
            running = self._busy.get(job.id)
        if running is not None:
            running.wait()
        with self._lock:
            entry = self._ready.pop(job.id, None)
        if entry is None or entry[0] != schema_key(dataset):
            return None
        if isinstance(entry[1], PushbaseError):
            raise entry[1]
        return entry[1]

    def _used_bytes(self) -> int:
        now = time.monotonic()
        for job_id in [k for k, v in self._ready.items() if now - v[3] > STALE_SECONDS]:
            del self._ready[job_id]  # never taken: cancelled, or its dataset changed
        return sum(v[2] for v in self._ready.values())

    def _loop(self) -> None:
        lower_this_thread()
        while not self._stopping.is_set():
            try:
                dataset, after_seq = self._tasks.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._decode_after(dataset, after_seq)
            except Exception:
                log.exception("decode-ahead for %s failed", dataset.id)

    def _decode_after(self, dataset: Dataset, after_seq: int) -> None:
        key = schema_key(dataset)
        for job in self.store.queued_after(dataset.id, after_seq, self.max_jobs):
            with self._lock:
                if job.id in self._ready or job.id in self._busy:
                    continue
                if self._used_bytes() + job.bytes > self.budget:
                    return
                done = self._busy[job.id] = threading.Event()
            try:
                try:
                    result: DecodedBatch | PushbaseError = self.decode(job, dataset)
                except PushbaseError as exc:
                    result = exc
                with self._lock:
                    self._ready[job.id] = (key, result, job.bytes, time.monotonic())
            finally:
                with self._lock:
                    del self._busy[job.id]
                done.set()
