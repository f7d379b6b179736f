"""Dataset documents as the push path may see them: a copy up to a second old.

Every push looks up its dataset, and with PostgreSQL that is a thread hop and a round
trip to a server busy with the workers' writes, which an acknowledgement waits for. A
push needs only what a dataset keeps for life (its id and unique key), so a recent copy
will do. This process's own changes drop the copy at once; a change made
by another process is seen within `max_age` seconds: until then a push to a dataset
that process dropped is accepted, and its job fails as one that raced the drop does.
"""

from __future__ import annotations

import threading
import time

from pushbase.schema import Dataset

PRUNE_AT = 1024


class RecentDatasets:
    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        # id → (when read or changed here, the copy; None after a change made here)
        self._copies: dict[str, tuple[float, Dataset | None]] = {}
        self._prune_at = PRUNE_AT

    def get(self, dataset_id: str) -> Dataset | None:
        """The copy if it is recent enough, else None."""
        with self._lock:
            entry = self._copies.get(dataset_id)
            if entry is None:
                return None
            if time.monotonic() - entry[0] >= self.max_age:
                del self._copies[dataset_id]
                return None
            return entry[1]

    def seen(self, dataset: Dataset, read_at: float) -> None:
        """`dataset` as read from the store; `read_at` is `time.monotonic()` taken before
        the read, so that a read that started before a change here is not kept."""
        with self._lock:
            entry = self._copies.get(dataset.id)
            if entry is None or entry[0] < read_at:
                self._keep(dataset.id, (read_at, dataset))

    def changed(self, dataset_id: str) -> None:
        """This process changed or dropped the dataset: the next lookup asks the store."""
        with self._lock:
            self._keep(dataset_id, (time.monotonic(), None))

    def _keep(self, dataset_id: str, entry: tuple[float, Dataset | None]) -> None:
        self._copies[dataset_id] = entry
        if len(self._copies) > self._prune_at:  # datasets come and go: old entries go too
            oldest = time.monotonic() - self.max_age
            self._copies = {k: v for k, v in self._copies.items() if v[0] >= oldest}
            self._prune_at = max(PRUNE_AT, 2 * len(self._copies))
