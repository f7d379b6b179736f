"""Admission: how many pushes to one dataset are made durable at once.

A bulk loader with many connections to one dataset would otherwise take every fsync
(or PostgreSQL commit) of the intake, and a small push to another dataset would wait
behind all of them. Each dataset gets a few slots; a push takes one once its body has
been received, and holds it while its payload is made durable and its job enqueued.

The body is read before the slot is taken, never under it: a client that sends its
body slowly (or not at all) would otherwise hold a slot for as long as it likes and
stall every other push to that dataset. A push receiving its body costs at most
`api/intake.py`'s `SPILL_BYTES` of memory (the rest goes to its file) and is bounded
in time by `PUSHBASE_HTTP_BODY_TIMEOUT_SECONDS`; the number of such pushes by
`PUSHBASE_HTTP_MAX_CONNECTIONS`. Waiting pushes are served first come, first served,
so jobs of one dataset are still enqueued in the order their bodies completed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Admission:
    def __init__(self, per_dataset: int) -> None:
        self.per_dataset = per_dataset
        self._gates: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def slot(self, dataset_id: str) -> AsyncIterator[None]:
        """Hold one of the dataset's slots (waits, first come first served)."""
        if dataset_id not in self._gates:
            self._gates[dataset_id] = (asyncio.Semaphore(self.per_dataset), [0])
        gate, users = self._gates[dataset_id]  # users: pushes holding or awaiting a slot
        users[0] += 1
        try:
            async with gate:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._gates[dataset_id]  # idle datasets keep no state
