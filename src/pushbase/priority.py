"""Background priority: throughput work yields the CPU to requests.

On a small machine the job workers, DuckDB's own threads and the decode processes can
keep every core busy, and an acknowledgement must not wait behind them (DESIGN §7). Linux
gives each thread its own nice value, so background threads raise theirs and requests,
served by threads left at the process's priority, go first whenever cores are short
(elsewhere this is a no-op). Within the process, the GIL changes hands more often than
Python's default, so that a request does not wait behind a background thread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

BACKGROUND_NICE = 10
# How long a thread that wants the GIL waits for one running Python code to let it go
# (Python's default is 5 ms). An acknowledgement crosses threads several times.
REQUEST_SWITCH_SECONDS = 0.001

T = TypeVar("T")


def favour_requests() -> None:
    """In a process that serves requests: the event loop and the request threads get the
    GIL back within about a millisecond from background threads running Python code."""
    sys.setswitchinterval(min(sys.getswitchinterval(), REQUEST_SWITCH_SECONDS))


def lower_this_thread() -> None:
    """Run the calling thread (and the threads it starts later) at background priority."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, max(current, BACKGROUND_NICE))
    except OSError:
        pass  # not permitted here: priorities are a refinement, not a requirement


def call_in_background_thread(function: Callable[[], T]) -> T:
    """`function()` called from a short-lived background-priority thread.

    Threads a library starts inside `function` (DuckDB's pool, when it opens a database)
    inherit that priority.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        lower_this_thread()
        try:
            outcome.append(function())
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="pushbase-background-open")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
