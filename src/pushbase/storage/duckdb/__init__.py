"""The embedded store (DuckDB), one module per job: `store.py` (the `DuckDBStore` class:
life cycle, the write), `catalog.py` (datasets and keys), `queue.py` (jobs), `rows.py`
(reads and exports), `writer.py` (the `SqlWriter` for DuckDB), `ddl.py` (types, names, the
key hash), `migrations.py` (schema versions), `inbox.py` (accepted jobs not yet recorded)
and `memory.py` (DuckDB's memory limit and which of its errors may pass)."""

from pushbase.storage.duckdb.ddl import (
    HASH_FINGERPRINT,
    KEY_HASH,
    KEY_HASH_TYPE,
    SQL_TYPES,
    column_ddl,
    hash_of,
    key_hash,
    table_name,
)
from pushbase.storage.duckdb.migrations import MIGRATIONS, check_hash, migrate
from pushbase.storage.duckdb.store import DuckDBStore
from pushbase.storage.duckdb.writer import DuckDBWriter

__all__ = [
    "HASH_FINGERPRINT",
    "KEY_HASH",
    "KEY_HASH_TYPE",
    "MIGRATIONS",
    "SQL_TYPES",
    "DuckDBStore",
    "DuckDBWriter",
    "check_hash",
    "column_ddl",
    "hash_of",
    "key_hash",
    "migrate",
    "table_name",
]
