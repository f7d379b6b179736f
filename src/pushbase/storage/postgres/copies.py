"""Local copies of the payloads a PostgreSQL-backed process accepted, for its own workers.

PostgreSQL holds every payload (DESIGN §6) so that any process can run any job. Most
jobs, though, run in the process that accepted them, and reading a payload back costs
PostgreSQL a de-TOAST and the transfer, and this process a decompression, taken on a
small machine from the writes and the acknowledgements. So the accepting process also keeps
the bytes in a file, without fsync (PostgreSQL's row is the durable copy), and its
decoder reads them there. A copy is named by its job and is complete once it has
`job.bytes` bytes; anything else is ignored and the row is read instead.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pushbase.jobs.model import Job
from pushbase.payload import Payload

log = logging.getLogger("pushbase.store")


class PayloadCopies:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._writer: ThreadPoolExecutor | None = None

    def prepare(self) -> None:
        """Start empty: an earlier process's copies may be of jobs run since."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pushbase-copy")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    @contextlib.contextmanager
    def keeping(self, job_id: str, payload: Payload | None) -> Iterator[None]:
        """Write a copy of `payload` (if any) in a helper thread while the block waits for
        PostgreSQL; the copy is written when the block ends. A worker that claims the job
        before that ignores the partial copy and reads the row."""
        writing, writer = None, self._writer
        if payload is not None and writer is not None:
            with contextlib.suppress(RuntimeError):  # closed meanwhile: the row will do
                writing = writer.submit(self.keep, job_id, payload)
        try:
            yield
        finally:
            if writing is not None:
                writing.result()

    def keep(self, job_id: str, payload: Payload) -> None:
        """Best effort: without a copy, the job reads its payload from PostgreSQL."""
        try:
            payload.save(self._path(job_id), durable=False)
        except OSError:
            log.warning("no local copy of job %s's payload", job_id, exc_info=True)
            self.drop(job_id)

    def path(self, job: Job) -> Path | None:
        path = self._path(job.id)
        try:
            return path if path.stat().st_size == job.bytes else None
        except FileNotFoundError:
            return None

    def drop(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)

    def job_ids(self) -> set[str]:
        return {p.name for p in self.root.iterdir()}

    def _path(self, job_id: str) -> Path:
        return self.root / job_id
