"""DuckDB baseline: how fast DuckDB itself loads the insert phase's rows into a keyed table.

The rows are written once as newline-delimited JSON (untimed). Each measurement opens a
fresh database file, creates the `users` table with the same ten columns and the same
composite PRIMARY KEY (tenant, user_id), and times one

    INSERT INTO users SELECT * FROM read_json(file, format='newline_delimited', columns={..})

with explicit column types (signup_at TIMESTAMP), in this process. No HTTP, no queue, no
durability per batch: the ceiling the server's embedded store is compared against.

The reference (`run_reference`) is the same for the spread phases: on a table of the same
ten columns *without* an index, holding the rows the server's dataset holds when its spread
phases start (built untimed in SQL, in the order the phases wrote them), the spread
upsert's rows as `DELETE ... USING` their keys then `INSERT`, 60,000 rows per transaction,
and the spread delete's keys as `DELETE ... USING`, 60,000 keys per transaction. The rows
are staged in a temporary table first (untimed): what is timed is the writing (DESIGN §7,
"Spread keys").
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from workload import (
    COLUMNS,
    DUCKDB_TYPES,
    FIRST,
    LAST,
    PLACES,
    PLANS,
    PRELOAD_FIRST_KEY,
    SCORE_BUMP,
    UNIQUE_KEY,
    SpreadPlan,
    StoredKeys,
    key_record,
    make_row,
)


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


# -- the reference for the spread phases: no index, DELETE ... USING + INSERT -------------

REFERENCE_TRANSACTION_ROWS = 60_000


@dataclass
class ReferenceResult:
    table_rows: int  # rows stored when the spread upsert starts
    upsert_rows: int
    upsert_seconds: float
    delete_rows: int
    delete_seconds: float
    file_bytes: int  # database file + wal, the larger of before and after closing

    @property
    def upsert_per_s(self) -> float:
        return self.upsert_rows / self.upsert_seconds if self.upsert_seconds else 0.0

    @property
    def delete_per_s(self) -> float:
        return self.delete_rows / self.delete_seconds if self.delete_seconds else 0.0


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _generator_sql() -> str:
    """A table macro `bench_rows(lo, hi, ph)`: workload.make_row(i, ph) for i in [lo, hi),
    in SQL, so that millions of rows are built without Python (checked against make_row)."""
    bump = " ".join(f"WHEN {phase} THEN {value}" for phase, value in SCORE_BUMP.items())
    return f"""
        CREATE OR REPLACE TEMP MACRO bench_rows(lo, hi, ph) AS TABLE SELECT
            'tenant-' || lpad(CAST(i % 64 AS VARCHAR), 3, '0') AS tenant,
            'u' || lpad(CAST(i AS VARCHAR), 10, '0') AS user_id,
            CASE WHEN ph = 1 THEN 'user' || i || '@example.com'
                 ELSE 'user' || i || '+p' || ph || '@example.org' END AS email,
            {_sql_list(FIRST)}[i % 10 + 1] AS first_name,
            {_sql_list(LAST)}[(i // 10) % 8 + 1] AS last_name,
            {_sql_list([c for c, _ in PLACES])}[i % {len(PLACES)} + 1] AS country,
            {_sql_list([c for _, c in PLACES])}[i % {len(PLACES)} + 1] AS city,
            {_sql_list(PLANS)}[(i + ph) % 4 + 1] AS plan,
            (i * 7919 % 100000) / 100.0 + (CASE ph {bump} ELSE 0 END) AS score,
            make_timestamp(2020 + i % 5, 1 + i % 12, 1 + (i // 12) % 28, (i // 7) % 24,
                           i % 60, (i // 60) % 60) + to_milliseconds(i % 1000) AS signup_at
        FROM range(lo, hi) t(i)
    """


def _files_size(db_path: Path) -> int:
    wal = db_path.with_name(db_path.name + ".wal")
    return sum(p.stat().st_size for p in (db_path, wal) if p.exists())


def build_reference_table(db_path: Path, stored: StoredKeys, rows: int) -> None:
    """The server's dataset as it stands when the spread phases start, in a table without
    an index, written in the phases' order: preload, insert, contiguous upsert (delete
    the upper half of the inserted keys, insert them and the new keys with phase-2
    values), contiguous delete (every 10th key). Untimed; done once and copied per run."""
    import duckdb

    for stale in (db_path, db_path.with_name(db_path.name + ".wal")):
        stale.unlink(missing_ok=True)
    column_defs = ", ".join(f"{_quote(c['name'])} {DUCKDB_TYPES[c['type']]}" for c in COLUMNS)
    lower = rows - rows // 2  # the contiguous upsert's first existing key (workload.upsert_keys)
    keynum = "CAST(substr(user_id, 2) AS BIGINT)"  # plain keys are u + 10 digits
    con = duckdb.connect(str(db_path))
    try:
        con.execute(_generator_sql())
        con.execute(f"CREATE TABLE users ({column_defs})")
        if stored.preload:
            con.execute(
                "INSERT INTO users SELECT * FROM bench_rows(?, ?, 1)",
                [PRELOAD_FIRST_KEY, PRELOAD_FIRST_KEY + stored.preload],
            )
        con.execute("INSERT INTO users SELECT * FROM bench_rows(0, ?, 1)", [rows])
        con.execute(f"DELETE FROM users WHERE {keynum} >= ? AND {keynum} < ?", [lower, rows])
        con.execute(
            "INSERT INTO users SELECT * FROM bench_rows(?, ?, 2)", [lower, stored.contiguous]
        )
        if stored.every_10th_deleted:
            con.execute(
                f"DELETE FROM users WHERE {keynum} % 10 = 0 AND {keynum} < ?",
                [stored.contiguous],
            )
        con.execute("CHECKPOINT")
        (count,) = con.execute("SELECT count(*) FROM users").fetchone()
        sample = [stored[0], stored[len(stored) // 2], stored[len(stored) - 1]]
        problems = []
        for key in sample:
            want = make_row(key, 2 if lower <= key < stored.contiguous else 1)
            got = con.execute(
                "SELECT email, strftime(signup_at, '%Y-%m-%dT%H:%M:%S.%gZ') FROM users"
                " WHERE tenant = ? AND user_id = ?",
                [want["tenant"], want["user_id"]],
            ).fetchall()
            if got != [(want["email"], want["signup_at"])]:
                problems.append(f"key {key}: {got} != {want['email']}, {want['signup_at']}")
    finally:
        con.close()
    if count != len(stored) or problems:
        raise RuntimeError(
            f"reference table: {count} rows, expected {len(stored)}; {'; '.join(problems)}"
        )


def _stage(con, name: str, records, ndjson: Path) -> None:
    """A temporary table `name` of `records` (dicts) numbered in order by `seq`."""
    with ndjson.open("wb") as out:
        for seq, record in enumerate(records):
            out.write(orjson.dumps({**record, "seq": seq}) + b"\n")
    names = list(records[0])
    types = {c["name"]: DUCKDB_TYPES[c["type"]] for c in COLUMNS}
    reader = "{" + ", ".join(f"'{c}': '{types[c]}'" for c in names) + ", 'seq': 'BIGINT'}"
    path_literal = "'" + str(ndjson).replace("'", "''") + "'"
    con.execute(
        f"CREATE TEMP TABLE {name} AS SELECT * FROM read_json({path_literal}, "
        f"format='newline_delimited', columns={reader})"
    )
    ndjson.unlink()


def _chunked(con, total: int, statements: list[str]) -> tuple[float, int]:
    """Run `statements` (with ? ? for a seq range) per 60,000 rows, one transaction each;
    returns the seconds and the rows the first statement of each reported changed."""
    changed = 0
    t0 = time.perf_counter()
    for lo in range(0, total, REFERENCE_TRANSACTION_ROWS):
        hi = lo + REFERENCE_TRANSACTION_ROWS
        con.execute("BEGIN")
        for i, statement in enumerate(statements):
            result = con.execute(statement, [lo, hi]).fetchone()
            if i == 0 and result:
                changed += result[0]
        con.execute("COMMIT")
    return time.perf_counter() - t0, changed


def run_reference(base: Path, plan: SpreadPlan, workdir: Path) -> ReferenceResult:
    """The spread upsert, then the spread delete, straight into a copy of the table that
    `build_reference_table` wrote at `base`; checks every count."""
    import duckdb

    db_path = workdir / "reference.duckdb"
    for stale in (db_path, db_path.with_name(db_path.name + ".wal")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(base, db_path)
    names = [_quote(c["name"]) for c in COLUMNS]
    on_key = " AND ".join(f"users.{k} = s.{k}" for k in map(_quote, UNIQUE_KEY))
    in_range = "seq >= ? AND seq < ?"
    con = duckdb.connect(str(db_path))
    try:
        (before,) = con.execute("SELECT count(*) FROM users").fetchone()
        _stage(con, "spread_rows", [make_row(k, 3) for k in plan.upsert], workdir / "s.ndjson")
        if plan.delete:  # none with --no-delete
            gone = [key_record(k) for k in plan.delete]
            _stage(con, "spread_gone", gone, workdir / "g.ndjson")
        keys = ", ".join(map(_quote, UNIQUE_KEY))
        upsert_s, replaced = _chunked(
            con,
            len(plan.upsert),
            [
                f"DELETE FROM users USING (SELECT {keys} FROM spread_rows WHERE {in_range}) s"
                f" WHERE {on_key}",
                f"INSERT INTO users SELECT {', '.join(names)} FROM spread_rows WHERE {in_range}",
            ],
        )
        (after_upsert,) = con.execute("SELECT count(*) FROM users").fetchone()
        delete_s, deleted = _chunked(
            con,
            len(plan.delete),
            [
                f"DELETE FROM users USING (SELECT {keys} FROM spread_gone WHERE {in_range}) s"
                f" WHERE {on_key}"
            ],
        )
        (after_delete,) = con.execute("SELECT count(*) FROM users").fetchone()
        size = _files_size(db_path)
    finally:
        con.close()
    size = max(size, _files_size(db_path))
    for leftover in (db_path, db_path.with_name(db_path.name + ".wal")):
        leftover.unlink(missing_ok=True)
    want = (len(plan.existing), before + len(plan.new), len(plan.delete))
    got = (replaced, after_upsert, deleted)
    if got != want or after_delete != after_upsert - len(plan.delete):
        raise RuntimeError(f"reference: replaced/rows/deleted {got}, expected {want}")
    return ReferenceResult(before, len(plan.upsert), upsert_s, len(plan.delete), delete_s, size)
