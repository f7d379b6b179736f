"""The PostgreSQL store's SQL vocabulary: column types and DDL, how column names become
identifiers within PostgreSQL's 63 bytes (and how releases before schema 4 cut them), how
dataset tables are named, and the fillfactor of keyed tables. Pure text and values:
nothing here touches a database."""

from __future__ import annotations

import hashlib

from pushbase.errors import PushbaseError
from pushbase.schema import Column, ColumnType
from pushbase.storage.sql import quote

SQL_TYPES = {
    ColumnType.string: "text",
    ColumnType.integer: "bigint",
    ColumnType.number: "double precision",
    ColumnType.boolean: "boolean",
    ColumnType.date: "date",
    ColumnType.datetime: "timestamp",  # UTC, µs
    ColumnType.json: "jsonb",
}
MAX_IDENTIFIER_BYTES = 63
# A dataset's table is `ds_<id>` while that is this short (readable in psql), else
# `ds__<n>` from a sequence: an older release hashed long names into exactly 63 bytes, so a
# short name never meets one of those, and ids start with a letter or digit, so never `ds__`.
READABLE_ID_CHARS = 50
TABLE_NAME_TRIES = 10
# Keyed tables leave a tenth of each page free for updates (HOT): spread upserts into 10M
# rows ran ~54k rows/s instead of ~40k. Tables made before get it on their new pages
# (schema version 4 sets it; nothing rewrites the pages they have).
KEYED_FILLFACTOR = 90


def stored_type(column_type: ColumnType) -> str:
    """A column's type in a table. Text compares bytewise (COLLATE "C"), as in DuckDB:
    every key lookup of a write compares keys, and comparing them through the database's
    locale took about a fifth of an upsert's CPU (upserts went from ~36k to ~52k rows/s)."""
    sql = SQL_TYPES[column_type]
    return f'{sql} COLLATE "C"' if column_type is ColumnType.string else sql


def column_name(name: str) -> str:
    """A column's identifier in its table (unquoted): the name itself within PostgreSQL's
    63 bytes; a longer one is cut and given a 128-bit hash after a control character.
    Column names hold no control characters (schema.py), so such an identifier equals no
    short name, and no other long one short of a SHA-256 collision."""
    raw = name.encode()
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    return raw[:30].decode("utf-8", "ignore") + "\x1f" + hashlib.sha256(raw).hexdigest()[:32]


def pg_ident(name: str) -> str:
    """A column's quoted identifier: the one mapping from column names to SQL."""
    return quote(column_name(name))


def legacy_name(name: str) -> str:
    """How releases before schema version 4 cut names past 63 bytes (tables `ds_<id>` and
    columns alike): 32 bits of hash, after a character a user name may hold, could collide."""
    raw = name.encode()
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    return raw[:54].decode("utf-8", "ignore") + "_" + hashlib.sha1(raw).hexdigest()[:8]


def column_ddl(column: Column) -> str:
    ddl = f"{pg_ident(column.name)} {stored_type(column.type)}"
    return ddl if column.nullable else f"{ddl} NOT NULL"


def check_identifiers(columns: list[Column]) -> None:
    """Two columns never share an identifier (only a SHA-256 collision could make them)."""
    seen: dict[str, str] = {}
    for column in columns:
        other = seen.setdefault(column_name(column.name), column.name)
        if other != column.name:
            raise PushbaseError(
                "duplicate_column",
                f"column {column.name!r} clashes with {other!r} in storage",
                400,
                {"column": column.name},
            )
