"""The benchmark's workload: the `users` dataset, its rows, and their pre-encoded batches.

Everything is deterministic: key number `i` always yields the same row for a phase, so the
same batches are encoded once and pushed to every backend and every repeat, and the DuckDB
baseline reads exactly the rows of the insert phase.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
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


def key_record(i: int) -> dict[str, str]:
    """The key columns of key number `i` (the body of a delete)."""
    return {"tenant": TENANTS[i % 64], "user_id": f"u{i:010d}"}


def make_row(i: int, phase: int) -> dict[str, Any]:
    """Row for key number `i`; deterministic, and different values in phase 2."""
    country, city = PLACES[i % len(PLACES)]
    return {
        **key_record(i),
        "email": f"user{i}@example.com" if phase == 1 else f"user{i}+p2@example.org",
        "first_name": FIRST[i % 10],
        "last_name": LAST[(i // 10) % 8],
        "country": country,
        "city": city,
        "plan": PLANS[(i + phase) % 4],
        "score": (i * 7919 % 100_000) / 100.0 + (0.5 if phase == 2 else 0.0),
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
