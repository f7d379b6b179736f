"""The PostgreSQL store's schema versions and how a database of an earlier release
reaches the current one: `MIGRATIONS` (statements, or functions run in the same
transaction) and `migrate`, which applies the missing ones under the caller's lock."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import psycopg

from pushbase.storage.base import refuse_newer_schema
from pushbase.storage.postgres.ddl import KEYED_FILLFACTOR, column_name, legacy_name
from pushbase.storage.sql import quote


def _adopt_tables(conn: psycopg.Connection) -> None:
    """Schema version 4: the catalog names each dataset's table. Tables made before keep
    the name their id gave them; their columns past 63 bytes take `column_name`'s form."""
    for dataset_id, doc in conn.execute("SELECT id, doc FROM _pb_datasets").fetchall():
        table = legacy_name(f"ds_{dataset_id}")
        conn.execute("UPDATE _pb_datasets SET tbl = %s WHERE id = %s", [table, dataset_id])
        present = {
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped",
                [quote(table)],
            ).fetchall()
        }  # empty when the table is missing: nothing to rename
        for column in orjson.loads(doc)["columns"]:
            old, new = legacy_name(column["name"]), column_name(column["name"])
            if old != new and old in present:
                conn.execute(
                    f"ALTER TABLE {quote(table)} RENAME COLUMN {quote(old)} TO {quote(new)}"
                )


def _leave_room_for_updates(conn: psycopg.Connection) -> None:
    """Schema version 4: keyed tables made before take `KEYED_FILLFACTOR` for new pages."""
    for table, doc in conn.execute("SELECT tbl, doc FROM _pb_datasets").fetchall():
        exists = conn.execute("SELECT to_regclass(%s)", [quote(table)]).fetchone()[0]
        if orjson.loads(doc).get("unique_key") and exists is not None:
            conn.execute(f"ALTER TABLE {quote(table)} SET (fillfactor = {KEYED_FILLFACTOR})")


Migration = list[str | Callable[[psycopg.Connection], None]]

MIGRATIONS: list[Migration] = [
    [
        "CREATE TABLE _pb_datasets (id text PRIMARY KEY, doc text NOT NULL)",
        "CREATE TABLE _pb_keys (id text PRIMARY KEY, key_hash text NOT NULL UNIQUE,"
        " doc text NOT NULL, revoked boolean NOT NULL DEFAULT false)",
        "CREATE TABLE _pb_jobs (id text PRIMARY KEY, seq bigserial NOT NULL,"
        " dataset_id text NOT NULL, status text NOT NULL, idempotency_key text,"
        " created_at timestamptz NOT NULL, bytes bigint NOT NULL, doc text NOT NULL)",
        "CREATE INDEX _pb_jobs_pending ON _pb_jobs (dataset_id, seq)"
        " WHERE status IN ('queued', 'running')",
        "CREATE INDEX _pb_jobs_seq ON _pb_jobs (seq)",
        "CREATE UNIQUE INDEX _pb_jobs_idempotency ON _pb_jobs (dataset_id, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE TABLE _pb_payloads (job_id text PRIMARY KEY, data bytea NOT NULL)",
    ],
    [
        # An acknowledgement waits for this row: lz4 compresses a 1 MB body ~3x faster than
        # the default pglz (and leaves less WAL than no compression). Without lz4 support,
        # payloads are stored uncompressed.
        "DO $$ BEGIN"
        " ALTER TABLE _pb_payloads ALTER COLUMN data SET COMPRESSION lz4;"
        " EXCEPTION WHEN OTHERS THEN"
        " ALTER TABLE _pb_payloads ALTER COLUMN data SET STORAGE EXTERNAL;"
        " END $$",
    ],
    [
        # Payloads arrive compressed by the process that accepted them (compression.py).
        "ALTER TABLE _pb_payloads ADD COLUMN codec text",
        "ALTER TABLE _pb_payloads ALTER COLUMN data SET STORAGE EXTERNAL",
    ],
    [
        # A dataset's table name is the catalog's, never derived again from its id: a
        # derived name could be another dataset's (issue 20, item 5).
        "ALTER TABLE _pb_datasets ADD COLUMN tbl text UNIQUE",
        "CREATE SEQUENCE _pb_table_seq",
        _adopt_tables,
        "ALTER TABLE _pb_datasets ALTER COLUMN tbl SET NOT NULL",
        _leave_room_for_updates,
    ],
]


def migrate(conn: psycopg.Connection) -> None:
    """Bring the schema to the current version, in the caller's transaction (which holds
    the lock that lets one process migrate at a time)."""
    conn.execute("CREATE TABLE IF NOT EXISTS _pb_version (version integer NOT NULL)")
    current = conn.execute("SELECT max(version) FROM _pb_version").fetchone()[0] or 0
    refuse_newer_schema(current, len(MIGRATIONS))
    for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
        for statement in statements:
            if isinstance(statement, str):
                conn.execute(statement)
            else:
                statement(conn)
        conn.execute("INSERT INTO _pb_version VALUES (%s)", [version])
