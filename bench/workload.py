"""The benchmark's workload: the `users` dataset, its rows, and their pre-encoded batches.

Everything is deterministic: key number `i` always yields the same row for a phase, so the
same batches are encoded once and pushed to every backend and every repeat, and the DuckDB
baseline reads exactly the rows of the insert phase.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

COLUMNS = [
    {"name": "tenant", "type": "string"},
    {"name": "user_id", "type": "string"},
    {"name": "email", "type": "string"},
    {"name": "first_name", "type": "string"},
    {"name": "last_name", "type": "string"},
    {"name": "country", "type": "string"},
    {"name": "city", "type": "string"},
    {"name": "plan", "type": "string"},
    {"name": "score", "type": "number"},
    {"name": "signup_at", "type": "datetime"},
]
UNIQUE_KEY = ["tenant", "user_id"]

# The same columns as DuckDB types, for the baseline's table and its `read_json` reader.
DUCKDB_TYPES = {
    "string": "VARCHAR",
    "number": "DOUBLE",
    "datetime": "TIMESTAMP",
}

FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Barbara",
    "Ken",
    "Margaret",
    "Dennis",
    "Frances",
    "Edsger",
]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie"]
PLACES = [
    ("NO", "Oslo"),
    ("FR", "Paris"),
    ("DE", "Berlin"),
    ("US", "Austin"),
    ("JP", "Osaka"),
    ("BR", "Recife"),
    ("IN", "Pune"),
    ("KE", "Nairobi"),
    ("CA", "Montréal"),
]
PLANS = ["free", "pro", "team", "enterprise"]
TENANTS = [f"tenant-{t:03d}" for t in range(64)]

Batch = tuple[bytes, int]  # (JSON body, number of records in it)


PRELOAD_FIRST_KEY = 1_000_000_000  # preloaded keys are apart from every phase's keys
# Key numbers from here on are the spread upsert's new keys: key `NEW_KEY_BASE + b` is
# stored key `b`'s user_id with an "n" appended, so it sorts right after `b`, and new keys
# land all over the table's key order like the existing ones, never on a key in use.
NEW_KEY_BASE = 10**11
SCORE_BUMP = {1: 0.0, 2: 0.5, 3: 0.75}  # what each phase adds to a row's score


def key_record(i: int) -> dict[str, str]:
    """The key columns of key number `i` (the body of a delete)."""
    if i >= NEW_KEY_BASE:
        b = i - NEW_KEY_BASE
        return {"tenant": TENANTS[b % 64], "user_id": f"u{b:010d}n"}
    return {"tenant": TENANTS[i % 64], "user_id": f"u{i:010d}"}


def make_row(i: int, phase: int) -> dict[str, Any]:
    """Row for key number `i`; deterministic, and different values in phases 2 and 3 (the
    contiguous and the spread upsert)."""
    country, city = PLACES[i % len(PLACES)]
    return {
        **key_record(i),
        "email": f"user{i}@example.com" if phase == 1 else f"user{i}+p{phase}@example.org",
        "first_name": FIRST[i % 10],
        "last_name": LAST[(i // 10) % 8],
        "country": country,
        "city": city,
        "plan": PLANS[(i + phase) % 4],
        "score": (i * 7919 % 100_000) / 100.0 + SCORE_BUMP[phase],
        "signup_at": (
            f"20{20 + i % 5}-{1 + i % 12:02d}-{1 + (i // 12) % 28:02d}"
            f"T{(i // 7) % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}.{i % 1000:03d}Z"
        ),
    }


def _encode(keys: Sequence[int], record, batch_bytes: int) -> list[Batch]:
    """JSON arrays of about `batch_bytes` each, of `record(k)` for every key in order."""
    sample = [record(k) for k in keys[:1000]]
    per_row = max(1, len(orjson.dumps(sample)) // max(1, len(sample)))
    rows_per_batch = max(1, batch_bytes // per_row)
    batches = []
    for start in range(0, len(keys), rows_per_batch):
        chunk = keys[start : start + rows_per_batch]
        batches.append((orjson.dumps([record(k) for k in chunk]), len(chunk)))
    return batches


def encode_batches(keys: Sequence[int], phase: int, batch_bytes: int) -> list[Batch]:
    """Full rows of `phase` for `keys`, as JSON arrays of about `batch_bytes`."""
    return _encode(keys, lambda k: make_row(k, phase), batch_bytes)


def encode_key_batches(keys: Sequence[int], batch_bytes: int) -> list[Batch]:
    """Key-only records `{"tenant": .., "user_id": ..}` for a delete, about `batch_bytes` each."""
    return _encode(keys, key_record, batch_bytes)


def insert_keys(n: int) -> list[int]:
    """Phase 1: keys 0 .. n-1, all new."""
    return list(range(n))


def upsert_keys(n: int) -> tuple[list[int], int]:
    """Phase 2: half keys from the upper half of phase 1 (existing), half new, interleaved.

    Returns the keys and how many of them are new. Afterwards the dataset holds keys
    0 .. n + new - 1.
    """
    existing = list(range(n - n // 2, n))
    new = list(range(n, n + (n - len(existing))))
    keys: list[int] = []
    for pair in itertools.zip_longest(existing, new):
        keys.extend(k for k in pair if k is not None)
    return keys, len(new)


def delete_keys(total: int) -> list[int]:
    """Phase 3: every 10th of the `total` stored keys (10 % of the dataset, spread evenly
    over rows inserted, upserted and added by the upsert)."""
    return list(range(0, total, 10))


# -- spread keys: upserts and deletes anywhere in the dataset, in random order --------------

SPREAD_SEED = 21  # fixed: every backend, repeat and reference gets the same keys


@dataclass(frozen=True)
class StoredKeys:
    """The dataset's keys once the contiguous phases are done, as a sequence (index -> key
    number): the preloaded keys, then keys 0 .. contiguous - 1 less every 10th of them when
    the contiguous delete ran."""

    preload: int
    contiguous: int  # the insert and the contiguous upsert wrote keys 0 .. contiguous - 1
    every_10th_deleted: bool

    @property
    def kept_contiguous(self) -> int:
        gone = len(range(0, self.contiguous, 10)) if self.every_10th_deleted else 0
        return self.contiguous - gone

    def __len__(self) -> int:
        return self.preload + self.kept_contiguous

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < self.preload:
            return PRELOAD_FIRST_KEY + index
        j = index - self.preload
        # kept keys are those not divisible by 10: nine of every ten, from 1
        return (j // 9) * 10 + 1 + j % 9 if self.every_10th_deleted else j


@dataclass(frozen=True)
class SpreadPlan:
    existing: list[int]  # stored keys the spread upsert changes
    new: list[int]  # keys it adds (NEW_KEY_BASE + a stored key: next to it in key order)
    upsert: list[int]  # existing + new, shuffled: the upsert's records in push order
    delete: list[int]  # keys stored after the upsert, the spread delete's records


def spread_keys(
    stored: StoredKeys, upsert_rows: int, delete_rows: int, seed: int = SPREAD_SEED
) -> SpreadPlan:
    """Seeded uniform draws over the whole dataset. The upsert's existing keys and the bases
    of its new keys are distinct stored keys; the delete draws distinct keys among those
    stored after the upsert (untouched, changed or new alike), so every key it names exists
    and the expected stats and row counts are exact."""
    existing_count = upsert_rows // 2
    new_count = upsert_rows - existing_count
    if upsert_rows > len(stored) or delete_rows > len(stored) + new_count:
        raise ValueError(f"spread phases of {upsert_rows}/{delete_rows} rows need more rows")
    rng = random.Random(seed)
    drawn = rng.sample(range(len(stored)), upsert_rows)
    existing = [stored[i] for i in drawn[:existing_count]]
    new = [NEW_KEY_BASE + stored[i] for i in drawn[existing_count:]]
    upsert = existing + new
    rng.shuffle(upsert)
    delete = [
        stored[i] if i < len(stored) else new[i - len(stored)]
        for i in rng.sample(range(len(stored) + new_count), delete_rows)
    ]
    return SpreadPlan(existing, new, upsert, delete)


def write_ndjson(keys: Iterable[int], phase: int, path: Path, chunk: int = 50_000) -> int:
    """Write the rows of `keys` as newline-delimited JSON; returns the bytes written."""
    written = 0
    keys = list(keys)
    with path.open("wb") as out:
        for start in range(0, len(keys), chunk):
            data = b"".join(
                orjson.dumps(make_row(k, phase)) + b"\n" for k in keys[start : start + chunk]
            )
            out.write(data)
            written += len(data)
    return written
