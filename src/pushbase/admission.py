"""Admission: how many pushes to one dataset are received at once.

A bulk loader with many connections to one dataset would otherwise take every turn
of the event loop and every fsync, and a small push to another dataset would wait
behind all of them. Each dataset gets a few slots; a push waits for one before its
body is read, so a waiting push costs only the bytes the socket already holds
(the server stops reading a connection whose request is not being served).
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
