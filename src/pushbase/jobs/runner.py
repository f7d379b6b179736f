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

import pyarrow as pa

from pushbase.decode import DecodedBatch
from pushbase.errors import PushbaseError, StoreUnavailable
from pushbase.jobs.ahead import DecodeAhead
from pushbase.jobs.decoding import Decoder
from pushbase.jobs.model import (
    ATOMIC_ERROR,
    MAX_GROUP_JOBS,
    Job,
    JobError,
    JobPhase,
    JobStatus,
    mark_queued,
)
from pushbase.priority import lower_this_thread
from pushbase.schema import Dataset, UnknownFields, WriteMethod
from pushbase.settings import Settings
from pushbase.storage import Store, Work

log = logging.getLogger("pushbase.jobs")

IDLE_POLL_SECONDS = 0.5
GROUPABLE = (WriteMethod.insert, WriteMethod.upsert, WriteMethod.delete)
PURGE_EVERY_SECONDS = 600
QUIET_SECONDS = 1.0  # no job claimed for this long: the store may tidy up
STORE_PAUSE_SECONDS = (0.5, 60.0)  # after a store failure: first pause, longest pause
# Unexplained failures (not the store's: a bug, a write the store refuses every time) a
# job may meet, alone, before it fails; store failures that may pass have no bound.
MAX_ATTEMPTS = 3


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
        self._last_claim = 0.0
        self._store_failures = 0  # in a row
        self._attempts: dict[str, int] = {}  # unexplained failures per job, in this process
        self._alone: set[str] = set()  # jobs to run one at a time after such a failure
        self._claims_failing = False
        self._decoder = Decoder.from_settings(settings)
        self._ahead = DecodeAhead(store, self._decode, settings.group_max_bytes, MAX_GROUP_JOBS)

    # life cycle -------------------------------------------------------
    def start(self, workers: int) -> None:
        recovered = self.store.recover()
        if recovered:
            log.info("requeued %d jobs left running by a previous process", recovered)
        if workers:
            self.store.prepare_to_run()
            self._ahead.start()
        for number in range(workers):
            thread = threading.Thread(
                target=self._loop, name=f"pushbase-worker-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._ahead.stop()
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
        lower_this_thread()
        while not self._stopping.is_set():
            try:
                self._turn()
            except Exception:  # a bug: this worker must live on, or jobs stop for good
                log.exception("worker %s: unexpected error; carrying on", _thread_name())
                self._stopping.wait(1.0)

    def _turn(self) -> None:
        group = self._claim()
        if not group:
            self._housekeeping()
            with self._wake:
                self._wake.wait(IDLE_POLL_SECONDS)
            return
        try:
            self.run_group(group)
        finally:
            for job in group:
                try:
                    self.store.release(job.id)
                except Exception:
                    log.exception("releasing job %s failed", job.id)
            with self._busy_lock:
                self._busy.discard(group[0].dataset_id)
            for job in group:
                self._signal(job.id)
            self.notify()  # the dataset's next jobs may now run

    def _claim(self) -> list[Job]:
        with self._busy_lock:
            try:
                group = self.store.claim_jobs(set(self._busy), self._joins)
            except StoreUnavailable as exc:  # may pass: said once, not twice a second
                if not self._claims_failing:
                    log.warning("claiming jobs waits: %s (%s)", exc.message, exc.code)
                self._claims_failing = True
                return []
            except Exception:
                log.exception("claiming jobs failed")
                return []
            self._claims_failing = False
            if group:
                self._busy.add(group[0].dataset_id)
                self._last_claim = time.monotonic()
            return group

    def _joins(self, group: list[Job], job: Job) -> bool:
        """Whether `job` may be written in one transaction with the jobs before it.

        Only plain inserts, upserts and deletes group; atomic jobs, replace and
        delete-all run alone. Upserts into a dataset with required non-key columns,
        and datasets whose schema evolves, run alone too: there, a later job can
        change whether an earlier row is valid.
        """
        head = group[0]
        if head.method not in GROUPABLE or job.method is not head.method:
            return False
        if head.id in self._alone or job.id in self._alone:
            return False
        if head.atomic or job.atomic:
            return False
        if sum(j.bytes for j in group) + job.bytes > self.settings.group_max_bytes:
            return False
        dataset = self.store.get_dataset(head.dataset_id)
        if dataset is None or dataset.unknown_fields is UnknownFields.evolve:
            return False
        required = [
            c for c in dataset.columns if not c.nullable and c.name not in dataset.unique_key
        ]
        return not (head.method is WriteMethod.upsert and required)

    def run_group(self, group: list[Job]) -> list[Job]:
        """Decode each job, then write all that decoded in one transaction.

        What goes wrong is sorted by whether it may pass. A store failure (unreachable,
        out of memory, disk full, I/O, a database being reopened: `StoreUnavailable`, and
        `OSError` but a missing file) puts the acknowledged jobs back in the queue, as often
        as it takes: they run once the store can take them. Anything else (a bug, a write
        the store refuses every time, Python's own MemoryError, which a payload can cause
        every time) is retried one job at a time, and a job that fails so `MAX_ATTEMPTS`
        times ends `failed` with `internal_error`: one job cannot stop its dataset for good,
        and its neighbours in the group do not pay for it."""
        done: list[Job] = []  # jobs whose end is recorded
        try:
            dataset = self.store.get_dataset(group[0].dataset_id)
            if dataset is None:
                return self._fail_all(group, "dataset_not_found", "the dataset was dropped")
            works: list[Work] = []
            decodable = [job for job in group if job.method is not WriteMethod.delete_all]
            if len(decodable) > 1:
                self._ahead.start_decoding(decodable, dataset)
            for job in group:
                if job.method is WriteMethod.delete_all:
                    works.append(Work(job, None))
                    continue
                try:
                    batch = self._ahead.take(job, dataset) or self._decode(job, dataset)
                except StoreUnavailable:
                    raise  # reading the payload failed, not the payload
                except PushbaseError as exc:  # the payload's fault: invalid or too large
                    code = exc.code if exc.code == "payload_too_large" else "invalid_payload"
                    done.append(self._fail(job, code, exc.message))
                    continue
                if job.atomic and batch.errors:
                    done.append(self.store.fail_job(job, ATOMIC_ERROR, batch.errors))
                    continue
                works.append(Work(job, batch))
            if not works:
                self._forget(group)
                return done
            for work in works:
                self.store.set_phase(work.job.id, JobPhase.writing, 50)
                work.job.phase = JobPhase.writing
            if dataset.unknown_fields is not UnknownFields.evolve:  # evolve: schema may change
                self._ahead.request(dataset, group[-1].seq)
            written = self.store.apply(dataset, works)
            del works
            self._store_failures = 0
            pa.default_memory_pool().release_unused()  # keep RSS near what is in use
            self._forget(group)
            return [*done, *written]
        except StoreUnavailable as exc:
            self._wait_for_store(self._unfinished(group, done), exc.code, exc.message)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):  # a payload gone: no retry brings it back
                log.exception("jobs %s failed", [j.id for j in group])
                done.extend(self._after_failure(self._unfinished(group, done)))
            else:  # the disk, I/O: may pass too
                log.warning("jobs %s met %r", [j.id for j in group], exc, exc_info=True)
                self._wait_for_store(self._unfinished(group, done), "store_io_error", str(exc))
        except Exception:
            log.exception("jobs %s failed", [j.id for j in group])
            done.extend(self._after_failure(self._unfinished(group, done)))
        return done

    @staticmethod
    def _unfinished(group: list[Job], done: list[Job]) -> list[Job]:
        """The group's jobs whose end was not recorded; in memory a failed write may have
        marked them finished, so the store's word (`done`) decides, not their status."""
        ended = {job.id for job in done}
        return [job for job in group if job.id not in ended]

    def _after_failure(self, jobs: list[Job]) -> list[Job]:
        """An unexplained failure: run the jobs one at a time from now on, so that a bad
        one costs only itself; fail those that failed alone `MAX_ATTEMPTS` times."""
        if len(jobs) > 1:
            self._alone.update(job.id for job in jobs)
        again, failed = [], []
        for job in jobs:
            self._attempts[job.id] = tries = self._attempts.get(job.id, 0) + 1
            (failed if tries >= MAX_ATTEMPTS and len(jobs) == 1 else again).append(job)
        done = self._fail_all(failed, "internal_error", "")
        if again:
            self._requeue(again, pause=len(jobs) == 1)
        return done

    def _wait_for_store(self, jobs: list[Job], code: str, message: str) -> None:
        """A store failure that may pass: the unfinished jobs go back to the queue, not
        to failed (they were acknowledged), and this worker pauses before it claims
        again, twice as long each time in a row. The dataset stays busy meanwhile."""
        self._store_failures += 1
        log.warning(
            "%s: %s; %d jobs back in the queue, next try in %.1fs",
            code, message, len(jobs), self._pause(),
        )  # fmt: skip
        self._requeue(jobs, pause=True)

    def _pause(self) -> float:
        first, longest = STORE_PAUSE_SECONDS
        return min(longest, first * 2 ** max(0, self._store_failures - 1))

    def _requeue(self, jobs: list[Job], pause: bool) -> None:
        """Put jobs back in the queue, trying until it works (the store may be failing
        too): a job left `running` would never run again in this process. The dataset
        stays busy meanwhile, so its later jobs cannot overtake these. On stop they are
        left to the next start, which requeues what was running."""
        for job in jobs:
            mark_queued(job)  # a failed write may have marked it finished in memory
        while not self._put_back(jobs):
            self._store_failures += 1
            if self._stopping.wait(self._pause()):
                return
        if pause:
            self._stopping.wait(self._pause())

    def _put_back(self, jobs: list[Job]) -> bool:
        if not jobs:
            return True
        try:
            self.store.requeue(jobs)
            return True
        except Exception:
            log.warning("putting jobs %s back in the queue failed; trying again",
                        [j.id for j in jobs], exc_info=True)  # fmt: skip
            return False

    def _decode(self, job: Job, dataset: Dataset) -> DecodedBatch:
        payload = self.store.payload_file(job) or self.store.read_payload(job)
        return self._decoder.decode(job, dataset, payload)

    def _fail(self, job: Job, code: str, message: str) -> Job:
        """Within a group's run: if this raises, the group's handlers take over."""
        return self.store.fail_job(job, JobError(code=code, message=message))

    def _fail_all(self, jobs: list[Job], code: str, message: str) -> list[Job]:
        """Record the jobs as failed (an empty message: the user-facing words for an
        internal error). One whose failure cannot be recorded goes back to the queue:
        nothing raises from here."""
        failed = []
        for job in jobs:
            text = message or (
                f"the write failed inside the store; the server log has details (job {job.id})"
            )
            try:
                failed.append(self.store.fail_job(job, JobError(code=code, message=text)))
            except Exception:
                log.exception("recording job %s as failed did not work; back in the queue",
                              job.id)  # fmt: skip
                self._requeue([job], pause=True)
                continue
            self._forget([job])
        return failed

    def _forget(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._attempts.pop(job.id, None)
            self._alone.discard(job.id)

    def _housekeeping(self) -> None:
        self._maybe_purge()
        with self._busy_lock:  # no group is claimed while the store tidies up
            # Only once pushes have stopped: a steady trickle of small jobs is never idle
            # for long, and tidying up between them would cost more than it saves.
            if self._busy or time.monotonic() - self._last_claim < QUIET_SECONDS:
                return
            try:
                self.store.idle()
            except Exception:
                log.exception("store housekeeping failed")

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


def _thread_name() -> str:
    return threading.current_thread().name


__all__ = ["JobRunner", "JobStatus"]
