"""The embedded store's SQL vocabulary: column types and DDL, a dataset's table name,
the hidden key-hash column of keyed tables and the SQL that computes it, and timestamps
as DuckDB stores them (naive UTC). Pure text and values: nothing here touches a database."""

from __future__ import annotations

from datetime import UTC, datetime

from pushbase.schema import Column, ColumnType, Dataset
from pushbase.storage.sql import quote

SQL_TYPES = {
    ColumnType.string: "VARCHAR",
    ColumnType.integer: "BIGINT",
    ColumnType.number: "DOUBLE",
    ColumnType.boolean: "BOOLEAN",
    ColumnType.date: "DATE",
    ColumnType.datetime: "TIMESTAMP",  # UTC, µs
    ColumnType.json: "VARCHAR",  # JSON text; the catalog knows it is json
}


def table_name(dataset_id: str) -> str:
    return quote(f"ds_{dataset_id}")


def column_ddl(column: Column) -> str:
    ddl = f"{quote(column.name)} {SQL_TYPES[column.type]}"
    return ddl if column.nullable else f"{ddl} NOT NULL"


# Keyed tables have no primary key (an ART index costs ~105 MB of RAM per 1M keys and
# makes a spread upsert cost what the table costs, DESIGN §7): uniqueness comes from the
# writes, one group at a time per dataset (one process, the runner's busy datasets).
# Stored rows are found by this hidden column, the hash of the key: a join on one
# integer column reads ~5x less than on the key columns, then rows are fetched by rowid
# and compared on the key itself. 32 bits: half the bytes of DuckDB's 64-bit hash (~40 MB
# less per 10M rows) for a few hundred false candidates per 150k-row write at 10M rows,
# which the comparison on the key drops. No dataset column can be named so: column
# names may not hold control characters (schema.py).
KEY_HASH = "_pb_key_hash\x1f"
KEY_HASH_TYPE = "UINTEGER"


def hash_of(values: list[tuple[str, ColumnType]]) -> str:
    """The SQL of the key hash of (expression, type) pairs; cast to the stored types, so
    a staged value hashes as the stored one."""
    parts = [f"CAST({value} AS {SQL_TYPES[kind]})" for value, kind in values]
    return f"(hash({', '.join(parts)}) >> 32)::{KEY_HASH_TYPE}"


def key_hash(dataset: Dataset, columns: dict[str, str]) -> str:
    """The key hash of a row whose key columns are the expressions `columns[key]`."""
    types = {c.name: c.type for c in dataset.columns}
    return hash_of([(columns[k], types[k]) for k in dataset.unique_key])


# The key hash of a value of each key type, and of a composite key: a DuckDB (or a
# pushbase) that hashes otherwise must rehash the stored keys before its first write
# (`migrations.check_hash`), or it would miss them and store a key twice.
_SAMPLES = [
    ("'pushbase'", ColumnType.string),
    ("-7", ColumnType.integer),
    ("1.5", ColumnType.number),
    ("true", ColumnType.boolean),
    ("DATE '2024-02-29'", ColumnType.date),
    ("TIMESTAMP '2024-02-29 12:34:56.789012'", ColumnType.datetime),
]
HASH_FINGERPRINT = (
    f"SELECT concat_ws(',', {', '.join(hash_of([s]) for s in _SAMPLES)}, {hash_of(_SAMPLES)})"
)


def naive(stamp: datetime) -> datetime:
    return stamp.astimezone(UTC).replace(tzinfo=None)
