"""How much disk a backend's data takes: the figure beside the memory rows.

Embedded store: every DuckDB database file in the server's data directory with its
write-ahead log (`*.duckdb` + `*.duckdb.wal`; today one, `pushbase.duckdb`), not the spool
of queued payloads. PostgreSQL: `pg_total_relation_size` (table, indexes, TOAST) of the
dataset's table, summed over its partitions if it has any, read from the catalog row that
names it; the queue's tables are left out.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def duckdb_files_bytes(data_dir: Path) -> int:
    files = [*data_dir.rglob("*.duckdb"), *data_dir.rglob("*.duckdb.wal")]
    total = 0
    for path in files:
        with contextlib.suppress(OSError):  # a checkpoint removed the wal meanwhile
            total += path.stat().st_size
    return total


def postgres_table_bytes(url: str, schema: str, dataset: str) -> int | None:
    """The dataset table's total size, or None where it cannot be read."""
    import psycopg

    ident = '"' + schema.replace('"', '""') + '"'
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(f"SELECT tbl FROM {ident}._pb_datasets WHERE id = %s", [dataset])
            found = row.fetchone()
            table = found[0] if found and found[0] else f"ds_{dataset}"
            relation = ident + '."' + table.replace('"', '""') + '"'
            # the partition tree of a plain table is empty: then the table's own size
            (size,) = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(relid)),"
                " pg_total_relation_size(to_regclass(%s)))"
                " FROM pg_partition_tree(to_regclass(%s))",
                [relation, relation],
            ).fetchone()
    except psycopg.Error:
        return None
    return None if size is None else int(size)
