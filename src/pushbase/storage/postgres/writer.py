"""The PostgreSQL store's `SqlWriter`: how a write runs on PostgreSQL. Staged rows are
sorted by key and copied in as CSV; joins with the table probe its key index; an upsert
with whole rows and no repeated key is one `INSERT ... ON CONFLICT`, a delete one
`DELETE ... USING`; text holding NUL fails row by row."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pushbase.decode import RowError
from pushbase.schema import Column, Dataset
from pushbase.storage.postgres.ddl import SQL_TYPES, pg_ident, stored_type
from pushbase.storage.writer import KeyConflict, SqlWriter, Work


class PostgresWriter(SqlWriter):
    def __init__(
        self,
        conn: psycopg.Connection,
        dataset: Dataset,
        works: list[Work],
        table: str,
        optimistic: bool = False,
    ) -> None:
        super().__init__(dataset, works, table, optimistic)
        self.conn = conn
        self._repeated: bool | None = None
        self._direct = False  # staged rows may be written as they are (see stage)
        self._per_job: dict[int, int] = {}  # staged rows of each job

    def prepare(self, staged: pa.Table) -> pa.Table:
        """PostgreSQL text cannot hold NUL: such rows fail alone instead of failing the job."""
        bad = None
        for name in staged.column_names:
            column = staged.column(name)
            if pa.types.is_string(column.type):
                has_nul = pc.fill_null(pc.match_substring(column, "\x00"), False)
                bad = has_nul if bad is None else pc.or_(bad, has_nul)
        if bad is None or not pc.any(bad).as_py():
            return staged
        failed = staged.filter(bad)
        message = "text may not contain the NUL character"
        self.rejected = [
            (j, RowError(row, None, "invalid_value", message))
            for j, row in zip(failed.column("j").to_pylist(), failed.column("r").to_pylist(),
                              strict=True)
        ]  # fmt: skip
        return staged.filter(pc.invert(bad))

    def ident(self, column: str) -> str:
        return pg_ident(column)

    def sql_type(self, column: Column) -> str:
        return SQL_TYPES[column.type]

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def dml(self, sql: str) -> int:
        return self.conn.execute(sql).rowcount

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql).fetchall()

    def stage(self, staged: pa.Table) -> None:
        types = []
        columns = {c.name: c for c in self.dataset.columns}
        by_position = {f"c{p}": columns[name] for name, p in self.positions.items()}
        for name in staged.column_names:
            if name in by_position:
                types.append(f"{name} {stored_type(by_position[name].type)}")
            elif name in ("j", "r", "o"):
                types.append(f"{name} bigint")
            else:
                types.append(f"{name} boolean")
        # JIT compiled each of these large statements for ~0.2 s and won nothing back.
        self.conn.execute("SET LOCAL jit = off")
        keys = self.dataset.unique_key
        if keys and all(k in self.positions for k in keys):
            # Rows in key order meet the index in order: each of its pages is visited once.
            named = [f"c{self.positions[k]}" for k in keys]
            staged = staged.sort_by([(name, "ascending") for name in named])
            # Here, not in the server: the database's one core per write is the bottleneck.
            # Not for floats: PostgreSQL has -0 = 0 and NaN = NaN, Arrow's grouping may not.
            if not any(pa.types.is_floating(staged.column(n).type) for n in named):
                self._repeated = staged.group_by(named).aggregate([]).num_rows < staged.num_rows
        required = [c.name for c in self.dataset.columns if not c.nullable and c.name not in keys]
        # Every row carries every field it writes and no required value is missing: a row
        # with a new key inserts as it is, one with a stored key replaces all it carries.
        self._direct = not self.masked and all(
            n in self.positions and staged.column(f"c{self.positions[n]}").null_count == 0
            for n in required
        )
        counts = pc.value_counts(staged.column("j")).to_pylist()
        self._per_job = {c["values"]: c["counts"] for c in counts}
        self.conn.execute(f"CREATE TEMP TABLE {self.stg} ({', '.join(types)}) ON COMMIT DROP")
        self._copy(staged, self.stg)

    def _repeated_keys(self) -> bool:
        if self._repeated is None:  # asked by more than one step; the staged rows stay put
            self._repeated = super()._repeated_keys()
        return self._repeated

    def _index_joins(self, on: bool) -> None:
        """Joins with the table probe its key index (`on=False` undoes it). Left to itself
        the planner hashes the whole table for 100k+ staged rows: a cost that grows with
        the table, ~6 s per 150k rows at 10M rows, instead of ~1 s."""
        value = "off" if on else "on"
        self.execute(
            f"SELECT set_config('enable_hashjoin', '{value}', true),"
            f" set_config('enable_mergejoin', '{value}', true)"
        )

    def stored_rows(self, columns: Iterable[str] = ()) -> str:
        """The stored rows of the staged keys, found one key at a time through the index
        (a lateral subquery the planner cannot turn into a hash join of the whole table)."""
        keys = self.dataset.unique_key
        wanted = ", ".join(self.ident(n) for n in dict.fromkeys([*keys, *columns]))
        staged = ", ".join(f"c{self.positions[k]}" for k in keys)
        match = " AND ".join(f"x.{self.ident(k)} = k.c{self.positions[k]}" for k in keys)
        return (
            f"(SELECT x.* FROM (SELECT DISTINCT {staged} FROM {self.stg}) k CROSS JOIN LATERAL"
            f" (SELECT {wanted} FROM {self.table} x WHERE {match} OFFSET 0) x)"
        )

    def delete_stored(self, keys: str) -> None:
        self._index_joins(True)
        super().delete_stored(keys)
        self._index_joins(False)

    def _merge(self, against_stored: bool) -> None:
        """Upsert without folding or joining when no key repeats and rows are whole
        (`_direct`): one `INSERT ... ON CONFLICT DO UPDATE` writes them, and tells which
        rows it inserted (a new row has no xmax; an updated one carries our lock's)."""
        if not (against_stored and self._direct) or self._repeated_keys():
            super()._merge(against_stored)
            return
        keys = self.dataset.unique_key
        target, source = self._staged_columns()
        updates = ", ".join(
            f"{self.ident(n)} = EXCLUDED.{self.ident(n)}" for n in self.positions if n not in keys
        )
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        returned = ", ".join(f"t.{self.ident(k)} AS k{i}" for i, k in enumerate(keys))
        back = " AND ".join(f"w.k{i} = s.c{self.positions[k]}" for i, k in enumerate(keys))
        conflict = ", ".join(self.ident(k) for k in keys)
        inserted = dict(
            self.fetch(
                f"WITH w AS (INSERT INTO {self.table} AS t ({target}) SELECT {source}"
                f" FROM {self.stg} ON CONFLICT ({conflict}) {action}"
                f" RETURNING {returned}, t.xmax = 0 AS _new)"
                f" SELECT s.j, count(*) FROM w JOIN {self.stg} s ON {back} WHERE w._new"
                " GROUP BY s.j"
            )
        )
        for j, count in self._per_job.items():
            self.stats[j].inserted = int(inserted.get(j, 0))
            self.stats[j].updated = count - self.stats[j].inserted

    def _delete(self) -> None:
        """Without repeated keys, each staged row deletes its key's row or finds none."""
        if self._repeated_keys():
            super()._delete()
            return
        self._index_joins(True)
        deleted = dict(
            self.fetch(
                f"WITH d AS (DELETE FROM {self.table} t USING {self.stg} s"
                f" WHERE {self._join('t', 's')} RETURNING s.j) SELECT j, count(*) FROM d GROUP BY j"
            )
        )
        self._index_joins(False)
        for j, count in self._per_job.items():
            self.stats[j].deleted = int(deleted.get(j, 0))
            self.stats[j].not_found = count - self.stats[j].deleted

    def insert_rows(self, staged: pa.Table, target: list[str]) -> None:
        columns = ", ".join(self.ident(name) for name in target)
        try:
            self._copy(staged, f"{self.table} ({columns})")
        except psycopg.errors.UniqueViolation as exc:
            raise KeyConflict from exc

    def _copy(self, rows: pa.Table, into: str) -> None:
        buffer = io.BytesIO()
        # Every valid value quoted: an unquoted empty field is NULL, "" the empty string.
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
        pacsv.write_csv(rows, buffer, write_options=options)
        with self.conn.cursor().copy(f"COPY {into} FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())

    def last_value(self, value: str, mask: str | None) -> str:
        where = f" FILTER (WHERE {mask})" if mask else ""
        return f"(array_agg({value} ORDER BY o DESC){where})[1]"
