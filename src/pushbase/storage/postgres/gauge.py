"""The queue's size as the request path sees it, without a database round trip.

Every push checks the bytes waiting before it reads its body (DESIGN §3). When the
queue lives in PostgreSQL, asking it each time costs a round trip to a server that is
busy with the workers' writes, and the answer is approximate anyway: pushes accepted
concurrently are not in it. The gauge keeps the last measured figure, adds the bytes
this process queued since, takes off those of jobs it ended, and measures again in a
background thread once the figure is older than `max_age` seconds. Bytes that other
processes queue or apply are seen within about `max_age` plus one query. A figure older
than `trust` seconds (nobody asked for a while) is measured again before it is used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("pushbase.storage")


class QueueGauge:
    def __init__(self, measure: Callable[[], int], max_age: float, trust: float) -> None:
        self._measure = measure
        self.max_age = max_age
        self.trust = trust
        self._lock = threading.Lock()
        self._change = 0  # bytes this process queued less those of jobs it ended, ever
        self._measured = 0  # the last figure, and `_change` when it was taken
        self._change_then = 0
        self._at = float("-inf")
        self._refreshing = False
        # One long-lived measuring thread: starting a thread waits for it to run, which
        # on a busy process means waiting for the GIL, on the event loop.
        self._wake = threading.Event()
        self._measurer: threading.Thread | None = None
        self._closed = False

    def refresh(self) -> int:
        """Measure now (in the calling thread); the new figure."""
        with self._lock:
            started, change_then = time.monotonic(), self._change
        measured = self._measure()
        with self._lock:
            # Changes made while the query ran may or may not be in it: they count again,
            # until the next measurement a fraction of a second later.
            if started >= self._at:
                self._measured, self._change_then, self._at = measured, change_then, started
            return self._current()

    def value(self) -> int:
        """The latest figure. Stale, it is measured again in the background; too old to
        trust, in the calling thread."""
        known = self.known()
        return self.refresh() if known is None else known

    def known(self) -> int | None:
        """The latest figure without waiting for a measurement (one may start in the
        background); None when it is too old to trust."""
        with self._lock:
            age = time.monotonic() - self._at
            if age >= self.trust:
                return None
            if age >= self.max_age and not self._refreshing and not self._closed:
                self._refreshing = True
                if self._measurer is None:
                    self._measurer = threading.Thread(
                        target=self._measure_when_woken, name="pushbase-queue-gauge", daemon=True
                    )
                    self._measurer.start()
                self._wake.set()
            return self._current()

    def added(self, size: int) -> None:
        """This process queued a job of `size` bytes."""
        with self._lock:
            self._change += size

    def removed(self, size: int) -> None:
        """This process ended jobs of `size` bytes in all."""
        with self._lock:
            self._change -= size

    def _current(self) -> int:
        return max(0, self._measured + self._change - self._change_then)

    def close(self) -> None:
        """Stop the measuring thread."""
        with self._lock:
            self._closed = True
        self._wake.set()

    def _measure_when_woken(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                self.refresh()
            except Exception:
                log.exception("measuring the queue failed; the last figure stands")
            finally:
                with self._lock:
                    self._refreshing = False
