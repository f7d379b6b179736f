"""Decoding jobs' payloads, in worker processes.

Decoding is Python work (orjson objects → Arrow columns) that holds the GIL. In the
server process it would compete with the request path and with the stores' writes;
in a process of its own it uses another core and leaves the server's GIL free, which
keeps acknowledgements fast while the workers are busy. The pool is shared by every
runner of a Python process and started on first use; with
`PUSHBASE_DECODE_PROCESSES=0` decoding runs in the calling thread.
"""

from __future__ import annotations

import atexit
import importlib.abc
import multiprocessing
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pushbase.decode import DecodedBatch, DecodeOptions, decode_payload, format_for, is_gzip
from pushbase.jobs.model import Job
from pushbase.priority import lower_this_thread
from pushbase.schema import Dataset

_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def decode_job(
    job: Job, dataset: Dataset, payload: bytes | Path, max_inflated: int
) -> DecodedBatch:
    """A job's payload (bytes, or a file that starts with them) as the dataset's typed
    columns and row errors. Runs in any process."""
    if isinstance(payload, Path):
        with payload.open("rb") as source:
            payload = source.read(job.bytes)  # the spool file goes on with the job document
    return decode_payload(
        payload,
        format_for(job.content_type),
        is_gzip(job.content_encoding),
        dataset,
        job.method,
        max_inflated,
        DecodeOptions.model_validate(job.options),
    )


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """pyarrow imports pandas, when it is installed, the first time it converts a Python
    list, only to ask whether the list is a pandas object: ~40 MB in every decoding
    process for nothing. A decoding process sees only lists, so pandas stays out."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("not imported in a decoding process", name=name)


def _start_decoding_process() -> None:
    lower_this_thread()
    sys.meta_path.insert(0, _WithoutPandas())


def _pool(processes: int) -> ProcessPoolExecutor:
    with _pools_lock:
        pool = _pools.get(processes)
        if pool is None:
            # spawn, not fork: the server has threads and open database handles.
            context = multiprocessing.get_context("spawn")
            pool = _pools[processes] = ProcessPoolExecutor(
                processes, mp_context=context, initializer=_start_decoding_process
            )
        return pool


def _forget(processes: int, pool: ProcessPoolExecutor) -> None:
    with _pools_lock:
        if _pools.get(processes) is pool:
            del _pools[processes]


class Decoder:
    def __init__(self, processes: int, max_inflated: int) -> None:
        self.processes = processes
        self.max_inflated = max_inflated

    def decode(self, job: Job, dataset: Dataset, payload: bytes | Path) -> DecodedBatch:
        """Decode; a payload given as a file is read by the decoding process itself."""
        if not self.processes:
            return decode_job(job, dataset, payload, self.max_inflated)
        pool = _pool(self.processes)
        try:
            future: Future[DecodedBatch] = pool.submit(
                decode_job, job, dataset, payload, self.max_inflated
            )
            return future.result()
        except BrokenProcessPool:
            # A decode process died (out of memory, killed): start a new pool, try once more.
            _forget(self.processes, pool)
            return (
                _pool(self.processes)
                .submit(decode_job, job, dataset, payload, self.max_inflated)
                .result()
            )


@atexit.register
def _shutdown() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        _pools.clear()
