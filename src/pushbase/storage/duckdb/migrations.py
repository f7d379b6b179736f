"""The embedded store's schema versions and how a file of an earlier release reaches
the current one: `MIGRATIONS` (statement lists, or functions that run their own
transactions), `migrate` which applies the missing ones on open, and `check_hash`, which
rehashes stored keys when this DuckDB hashes them otherwise than the one that wrote them."""

from __future__ import annotations

import logging
from collections.abc import Callable

import duckdb

from pushbase.schema import Dataset
from pushbase.storage.base import refuse_newer_schema
from pushbase.storage.duckdb.ddl import (
    HASH_FINGERPRINT,
    KEY_HASH,
    KEY_HASH_TYPE,
    key_hash,
    table_name,
)
from pushbase.storage.duckdb.memory import MemoryLimit
from pushbase.storage.sql import quote

log = logging.getLogger("pushbase.store")


def _rebuild_keyed_tables(cur: duckdb.DuckDBPyConnection) -> None:
    """Schema 2: keyed tables of earlier releases, with a PRIMARY KEY, become tables
    without an index and with the key hash; one transaction per table, every row kept.
    A table that has the hash already (a migration cut short) is left as it is."""
    for (doc,) in cur.execute("SELECT doc FROM _pb_datasets ORDER BY id").fetchall():
        dataset = Dataset.model_validate_json(doc)
        name = f"ds_{dataset.id}"
        stored = cur.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns()"
            " WHERE database_name = current_database() AND schema_name = 'main'"
            " AND table_name = ? ORDER BY column_index",
            [name],
        ).fetchall()
        names = [column for column, _, _ in stored]
        if not dataset.unique_key or not stored or KEY_HASH in names:
            continue
        # The stored types and nullability, not the catalog's: a column added later is
        # nullable in storage whatever its document says.
        ddl = [
            f"{quote(column)} {kind}{'' if nullable else ' NOT NULL'}"
            for column, kind, nullable in stored
        ]
        new = quote(f"_pb_rebuild_{dataset.id}")
        listed = ", ".join(quote(column) for column in names)
        cur.execute("BEGIN")
        ddl.append(f"{quote(KEY_HASH)} {KEY_HASH_TYPE} NOT NULL")
        cur.execute(f"CREATE TABLE {new} ({', '.join(ddl)})")
        hashed = key_hash(dataset, {k: quote(k) for k in dataset.unique_key})
        cur.execute(f"INSERT INTO {new} SELECT {listed}, {hashed} FROM {quote(name)}")
        cur.execute(f"DROP TABLE {quote(name)}")
        cur.execute(f"ALTER TABLE {new} RENAME TO {quote(name)}")
        cur.execute("COMMIT")
        log.info("dataset %r: table rebuilt without its primary-key index", dataset.id)
    cur.execute(f"INSERT OR REPLACE INTO _pb_meta VALUES ('key_hash', ({HASH_FINGERPRINT}))")


MIGRATIONS: list[list[str] | Callable[[duckdb.DuckDBPyConnection], None]] = [
    [
        "CREATE TABLE _pb_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        "CREATE TABLE _pb_datasets (id VARCHAR PRIMARY KEY, doc VARCHAR NOT NULL)",
        "CREATE TABLE _pb_keys (id VARCHAR PRIMARY KEY, key_hash VARCHAR NOT NULL,"
        " doc VARCHAR NOT NULL, revoked BOOLEAN NOT NULL DEFAULT false)",
        "CREATE SEQUENCE _pb_job_seq",
        "CREATE TABLE _pb_jobs (id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL,"
        " dataset_id VARCHAR NOT NULL, status VARCHAR NOT NULL, idempotency_key VARCHAR,"
        " created_at TIMESTAMP NOT NULL, bytes BIGINT NOT NULL, doc VARCHAR NOT NULL)",
    ],
    # Functions run their own transactions; the version is recorded once they are done.
    _rebuild_keyed_tables,  # 2: no primary-key index
]


def migrate(cur: duckdb.DuckDBPyConnection, memory: MemoryLimit) -> None:
    """Bring the file to the current schema version, then check the stored key hashes."""
    cur.execute("CREATE TABLE IF NOT EXISTS _pb_version (version INTEGER)")
    row = cur.execute("SELECT max(version) FROM _pb_version").fetchone()
    current = row[0] or 0
    refuse_newer_schema(current, len(MIGRATIONS))
    if current < len(MIGRATIONS):  # old key indexes are loaded to be dropped
        memory.before_write(cur, refuse=False)
    for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
        if callable(step):
            step(cur)
        cur.execute("BEGIN")
        for statement in step if isinstance(step, list) else []:
            cur.execute(statement)
        cur.execute("INSERT INTO _pb_version VALUES (?)", [version])
        cur.execute("COMMIT")
    check_hash(cur)


def check_hash(cur: duckdb.DuckDBPyConnection) -> None:
    """Keyed rows are found by DuckDB's hash of their key: if this DuckDB hashes
    otherwise than the one that stored them, every stored hash is computed again
    (one transaction per table; the new fingerprint is saved once all are done)."""
    ((fingerprint,),) = cur.execute(HASH_FINGERPRINT).fetchall()
    row = cur.execute("SELECT value FROM _pb_meta WHERE key = 'key_hash'").fetchone()
    if row is not None and row[0] == fingerprint:
        return
    if row is not None:
        log.warning("this DuckDB hashes keys differently: rehashing every keyed table")
        for (doc,) in cur.execute("SELECT doc FROM _pb_datasets").fetchall():
            dataset = Dataset.model_validate_json(doc)
            if dataset.unique_key:
                hashed = key_hash(dataset, {k: quote(k) for k in dataset.unique_key})
                cur.execute(f"UPDATE {table_name(dataset.id)} SET {quote(KEY_HASH)} = {hashed}")
    cur.execute("INSERT OR REPLACE INTO _pb_meta VALUES ('key_hash', ?)", [fingerprint])
