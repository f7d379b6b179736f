"""Sample records → proposed columns (DESIGN §1, schema inference).

Inference never guesses a unique key; it runs on samples and on the new fields
of an `evolve` dataset, never over a whole payload row by row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pushbase.decode.coerce import looks_like
from pushbase.errors import PushbaseError
from pushbase.schema import Column, ColumnType

MAX_SAMPLE_ROWS = 1000


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; arrays stay whole (they become json columns)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def infer_type(values: Iterable[Any]) -> ColumnType:
    """The narrowest type that holds every non-null sample value."""
    seen: set[ColumnType] = set()
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool):
            seen.add(ColumnType.boolean)
        elif isinstance(value, int):
            seen.add(ColumnType.integer)
        elif isinstance(value, float):
            seen.add(ColumnType.number)
        elif isinstance(value, dict | list):
            seen.add(ColumnType.json)
        else:
            seen.add(looks_like(str(value)))
    if not seen:
        return ColumnType.string
    if len(seen) == 1:
        return seen.pop()
    if seen == {ColumnType.integer, ColumnType.number}:
        return ColumnType.number
    if seen == {ColumnType.date, ColumnType.datetime}:
        return ColumnType.datetime
    if ColumnType.json in seen:
        return ColumnType.json
    return ColumnType.string


def infer_columns(sample: Any) -> list[Column]:
    """Columns for a sample record or list of records, in first-seen order."""
    records = sample if isinstance(sample, list) else [sample]
    if not records or not all(isinstance(r, dict) for r in records):
        raise PushbaseError(
            "invalid_sample", "sample must be a JSON object or a non-empty array of objects", 400
        )
    values: dict[str, list[Any]] = {}
    for record in records[:MAX_SAMPLE_ROWS]:
        for path, value in flatten(record).items():
            values.setdefault(path, []).append(value)
    if not values:
        raise PushbaseError("invalid_sample", "sample has no fields", 400)
    return [Column(name=name, type=infer_type(column)) for name, column in values.items()]
