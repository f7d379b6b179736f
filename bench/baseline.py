"""DuckDB baseline: how fast DuckDB itself loads the insert phase's rows into a keyed table.

The rows are written once as newline-delimited JSON (untimed). Each measurement opens a
fresh database file, creates the `users` table with the same ten columns and the same
composite PRIMARY KEY (tenant, user_id), and times one

    INSERT INTO users SELECT * FROM read_json(file, format='newline_delimited', columns={..})

with explicit column types (signup_at TIMESTAMP), in this process. No HTTP, no queue, no
durability per batch: the ceiling the server's embedded store is compared against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from workload import COLUMNS, DUCKDB_TYPES, UNIQUE_KEY


@dataclass
class BaselineResult:
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_baseline(ndjson: Path, expected_rows: int, workdir: Path) -> BaselineResult:
    import duckdb

    db_path = workdir / "baseline.duckdb"
    for stale in (db_path, workdir / "baseline.duckdb.wal"):
        stale.unlink(missing_ok=True)
    column_defs = ", ".join(f"{_quote(c['name'])} {DUCKDB_TYPES[c['type']]}" for c in COLUMNS)
    key = ", ".join(_quote(k) for k in UNIQUE_KEY)
    reader_columns = (
        "{" + ", ".join(f"'{c['name']}': '{DUCKDB_TYPES[c['type']]}'" for c in COLUMNS) + "}"
    )
    path_literal = "'" + str(ndjson).replace("'", "''") + "'"
    try:
        con = duckdb.connect(str(db_path))
        try:
            con.execute(f"CREATE TABLE users ({column_defs}, PRIMARY KEY ({key}))")
            t0 = time.perf_counter()
            con.execute(
                f"INSERT INTO users SELECT * FROM read_json({path_literal}, "
                f"format='newline_delimited', columns={reader_columns})"
            )
            seconds = time.perf_counter() - t0
            (count,) = con.execute("SELECT count(*) FROM users").fetchone()
        finally:
            con.close()
    finally:
        for leftover in (db_path, workdir / "baseline.duckdb.wal"):
            leftover.unlink(missing_ok=True)
    if count != expected_rows:
        raise RuntimeError(f"baseline loaded {count} rows, expected {expected_rows}")
    return BaselineResult(count, seconds)
