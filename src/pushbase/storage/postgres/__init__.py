"""The PostgreSQL store, one module per job: `store.py` (the `PostgresStore` class: life
cycle, the write), `catalog.py` (datasets and keys), `queue.py` (jobs, claims and their
locks), `rows.py` (reads and exports), `writer.py` (the `SqlWriter` for PostgreSQL),
`ddl.py` (types, identifiers, table options), `migrations.py` (schema versions), and the
push path's helpers: `compression.py` (payloads), `copies.py` (local payload copies),
`gauge.py` (the queue's size) and `recent.py` (recent dataset documents)."""

from pushbase.storage.postgres.ddl import (
    KEYED_FILLFACTOR,
    MAX_IDENTIFIER_BYTES,
    SQL_TYPES,
    check_identifiers,
    column_ddl,
    column_name,
    legacy_name,
    pg_ident,
    stored_type,
)
from pushbase.storage.postgres.migrations import MIGRATIONS, Migration, migrate
from pushbase.storage.postgres.store import PostgresStore
from pushbase.storage.postgres.writer import PostgresWriter

__all__ = [
    "KEYED_FILLFACTOR",
    "MAX_IDENTIFIER_BYTES",
    "MIGRATIONS",
    "SQL_TYPES",
    "Migration",
    "PostgresStore",
    "PostgresWriter",
    "check_identifiers",
    "column_ddl",
    "column_name",
    "legacy_name",
    "migrate",
    "pg_ident",
    "stored_type",
]
