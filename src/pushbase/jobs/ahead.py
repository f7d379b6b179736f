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
from concurrent.futures import Future, ThreadPoolExecutor, wait

from pushbase.decode import DecodedBatch
from pushbase.errors import PushbaseError
from pushbase.jobs.model import Job
from pushbase.priority import lower_this_thread
from pushbase.schema import Dataset
from pushbase.storage import Store

log = logging.getLogger("pushbase.jobs")

Decoder = Callable[[Job, Dataset], DecodedBatch]
Ready = tuple[str, DecodedBatch | PushbaseError, int, float]  # schema key, result, bytes, when
STALE_SECONDS = 120
IN_FLIGHT = 2  # decodes handed to the decoding processes at once


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
        self._ready: dict[str, Ready] = {}
        self._busy: dict[str, threading.Event] = {}
        self._tasks: queue.Queue[tuple[Dataset, int]] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(
            target=self._loop, name="pushbase-decode-ahead", daemon=True
        )
        self._stopping = threading.Event()
        self._in_flight = ThreadPoolExecutor(
            IN_FLIGHT, thread_name_prefix="pushbase-decode-ahead", initializer=lower_this_thread
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._in_flight.shutdown(wait=False)

    def request(self, dataset: Dataset, after_seq: int) -> None:
        """Ask for the queued jobs after `after_seq` to be decoded (never blocks)."""
        # Decode-ahead is an optimisation: when it is busy, the worker decodes what is missing.
        with contextlib.suppress(queue.Full):
            self._tasks.put_nowait((dataset, after_seq))

    def start_decoding(self, jobs: list[Job], dataset: Dataset) -> None:
        """Decode a claimed group's jobs that were not decoded ahead, two at a time, so
        that the worker's `take` finds them rather than decoding them one by one."""
        with self._lock:
            missing = [
                (job, self._busy.setdefault(job.id, threading.Event()))
                for job in jobs
                if job.id not in self._ready and job.id not in self._busy
            ]
        self._send(missing, dataset, schema_key(dataset))

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
        claimed: list[tuple[Job, threading.Event]] = []
        queued = self.store.queued_after(dataset.id, after_seq, self.max_jobs)
        with self._lock:
            planned = self._used_bytes()
            for job in queued:
                if job.id in self._ready or job.id in self._busy:
                    continue
                if planned + job.bytes > self.budget:
                    break
                planned += job.bytes
                claimed.append((job, self._busy.setdefault(job.id, threading.Event())))
        wait(self._send(claimed, dataset, key))

    def _send(
        self, claimed: list[tuple[Job, threading.Event]], dataset: Dataset, key: str
    ) -> list[Future[None]]:
        # Two decodes in flight: the decoding process starts the next payload as soon as
        # it has sent one back, instead of idling while the result travels and is unpickled.
        futures = []
        for position, (job, done) in enumerate(claimed):
            try:
                futures.append(self._in_flight.submit(self._decode_one, job, done, dataset, key))
            except RuntimeError:  # stopping: whoever waits decodes the rest itself
                for unsent, event in claimed[position:]:
                    self._settle(unsent, event, None)
                break
        return futures

    def _decode_one(self, job: Job, done: threading.Event, dataset: Dataset, key: str) -> None:
        entry: Ready | None = None  # none: the worker decodes the job itself
        try:
            result: DecodedBatch | PushbaseError = self.decode(job, dataset)
            entry = (key, result, job.bytes, time.monotonic())
        except PushbaseError as exc:  # kept: the worker reports it as the job's error
            entry = (key, exc, job.bytes, time.monotonic())
        except Exception:
            log.exception("decoding job %s ahead failed", job.id)
        finally:
            self._settle(job, done, entry)

    def _settle(self, job: Job, done: threading.Event, entry: Ready | None) -> None:
        with self._lock:
            if entry is not None:
                self._ready[job.id] = entry
            del self._busy[job.id]
        done.set()
