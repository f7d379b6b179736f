"""A process that only applies jobs (`pushbase worker`), for the PostgreSQL store."""

from __future__ import annotations

import logging
import signal
import threading

from pushbase.errors import PushbaseError
from pushbase.jobs.runner import JobRunner
from pushbase.settings import Settings
from pushbase.storage import open_store

log = logging.getLogger("pushbase.worker")


def run_worker(settings: Settings, workers: int | None = None) -> None:
    """Run job workers until SIGTERM or SIGINT; the embedded store has no separate workers."""
    if not settings.database_url:
        raise PushbaseError(
            "worker_needs_postgres",
            "the embedded store belongs to one `pushbase serve` process; "
            "set PUSHBASE_DATABASE_URL=postgresql://... to run separate workers",
            400,
        )
    store = open_store(settings)
    store.open()
    runner = JobRunner(store, settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    count = settings.workers if workers is None else workers
    runner.start(count)
    log.info("pushbase worker: %d threads", count)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        runner.stop()
        store.close()
