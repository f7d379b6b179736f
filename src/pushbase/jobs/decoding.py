"""Decoding jobs' payloads, in worker processes.

Decoding is Python work (orjson objects → Arrow columns) that holds the GIL. In the
server process it would compete with the request path and with the stores' writes;
in a process of its own it uses another core and leaves the server's GIL free, which
keeps acknowledgements fast while the workers are busy. The pool is shared by every
runner of a Python process and started on first use; with
`PUSHBASE_DECODE_PROCESSES=0` decoding runs in the calling thread.

A decoding process may use at most `PUSHBASE_MAX_DECODE_MEMORY_MB` of memory (a limit
on its data segment, set as it starts): a payload that needs more (a small gzip body
inflating to objects of many GB) fails its job with `payload_too_large` instead of
taking the machine's memory. In the calling thread nothing but `max_inflated_bytes`
bounds a decode.
"""

from __future__ import annotations

import atexit
import gc
import importlib.abc
import logging
import multiprocessing
import resource
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pyarrow as pa

from pushbase.decode import DecodedBatch, DecodeOptions, decode_payload, format_for, is_gzip
from pushbase.decode.batch import DecodeLimits
from pushbase.errors import PushbaseError
from pushbase.jobs.model import Job
from pushbase.priority import lower_this_thread
from pushbase.schema import Dataset
from pushbase.settings import Settings

log = logging.getLogger("pushbase.jobs")

_pools: dict[tuple[int, int], ProcessPoolExecutor] = {}  # (processes, memory MB) → pool
_pools_lock = threading.Lock()
MIB = 1024 * 1024


def decode_job(
    job: Job,
    dataset: Dataset,
    payload: bytes | Path,
    max_inflated: int,
    limits: DecodeLimits | None = None,
    memory_mb: int | None = None,
) -> DecodedBatch:
    """A job's payload (bytes, or a file that starts with them) as the dataset's typed
    columns and row errors. Runs in any process; `memory_mb` only names the limit a
    decoding process runs under, for the error that says it was reached."""
    try:
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
            limits,
        )
    except MemoryError:  # ArrowMemoryError too
        gc.collect()
        pa.default_memory_pool().release_unused()
        raise too_large(memory_mb) from None


def too_large(memory_mb: int | None) -> PushbaseError:
    limit = f" ({memory_mb} MB, PUSHBASE_MAX_DECODE_MEMORY_MB)" if memory_mb else ""
    return PushbaseError(
        "payload_too_large",
        f"decoding this payload needs more memory than a decode may use{limit};"
        " push it in smaller parts",
        413,
        {"max_decode_memory_mb": memory_mb} if memory_mb else {},
    )


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """pyarrow imports pandas, when it is installed, the first time it converts a Python
    list, only to ask whether the list is a pandas object: ~40 MB in every decoding
    process for nothing. A decoding process sees only lists, so pandas stays out."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("not imported in a decoding process", name=name)


def _start_decoding_process(memory_mb: int = 0) -> None:
    lower_this_thread()
    sys.meta_path.insert(0, _WithoutPandas())
    if memory_mb:
        limit_memory(memory_mb)


def limit_memory(memory_mb: int) -> None:
    """Bound this process's data segment (its heap and anonymous mappings, where every
    decoded object and Arrow buffer lives): past it, allocations fail with MemoryError.
    Address space (RLIMIT_AS) would also count the libraries' mappings and the
    allocators' reservations, which are not memory in use."""
    limit = memory_mb * MIB
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _pool(processes: int, memory_mb: int) -> ProcessPoolExecutor:
    with _pools_lock:
        pool = _pools.get((processes, memory_mb))
        if pool is None:
            # spawn, not fork: the server has threads and open database handles.
            context = multiprocessing.get_context("spawn")
            pool = _pools[processes, memory_mb] = ProcessPoolExecutor(
                processes,
                mp_context=context,
                initializer=_start_decoding_process,
                initargs=(memory_mb,),
            )
        return pool


def _forget(key: tuple[int, int], pool: ProcessPoolExecutor) -> None:
    with _pools_lock:
        if _pools.get(key) is pool:
            del _pools[key]
    pool.shutdown(wait=False, cancel_futures=True)


class Decoder:
    def __init__(
        self,
        processes: int,
        max_inflated: int,
        limits: DecodeLimits | None = None,
        memory_mb: int | None = None,
    ) -> None:
        self.processes = processes
        self.max_inflated = max_inflated
        self.limits = limits or DecodeLimits()
        # The setting's default when not given: every decoding process runs bounded.
        if memory_mb is None:
            memory_mb = Settings.model_fields["max_decode_memory_mb"].default
        self.memory_mb = memory_mb

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoder:
        limits = DecodeLimits(
            text=settings.max_row_errors_text, new_columns=settings.max_new_columns_per_push
        )
        return cls(
            settings.decode_processes,
            settings.max_inflated_bytes,
            limits,
            settings.max_decode_memory_mb,
        )

    def decode(self, job: Job, dataset: Dataset, payload: bytes | Path) -> DecodedBatch:
        """Decode; a payload given as a file is read by the decoding process itself."""
        args = (job, dataset, payload, self.max_inflated, self.limits, self.memory_mb)
        if not self.processes:
            return decode_job(*args[:5])
        key = (self.processes, self.memory_mb)
        for attempt in (1, 2):
            pool = _pool(*key)
            try:
                future: Future[DecodedBatch] = pool.submit(decode_job, *args)
                return future.result()
            except BrokenProcessPool:
                # A decoding process died (killed, or out of memory where an allocation
                # failure cannot be caught): a new pool, and one more try, since the
                # process may have died of another job decoded beside this one.
                _forget(key, pool)
                log.warning("a decoding process died decoding job %s (try %d)", job.id, attempt)
        raise too_large(self.memory_mb)


@atexit.register
def _shutdown() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        _pools.clear()
