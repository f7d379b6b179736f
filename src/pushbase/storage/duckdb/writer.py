"""The embedded store's `SqlWriter`: how a write runs on DuckDB. Keyed tables have no
index, so stored rows are found by the hidden key hash (then by rowid and compared on the
key itself), optimistic inserts look for conflicts first, and Arrow tables are scanned
where they are."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import duckdb
import pyarrow as pa

from pushbase.schema import Column, Dataset
from pushbase.storage.duckdb.ddl import KEY_HASH, SQL_TYPES, key_hash, table_name
from pushbase.storage.sql import quote
from pushbase.storage.writer import KeyConflict, SqlWriter, Work


class DuckDBWriter(SqlWriter):
    def __init__(
        self,
        cur: duckdb.DuckDBPyConnection,
        dataset: Dataset,
        works: list[Work],
        optimistic: bool = False,
    ) -> None:
        super().__init__(dataset, works, table_name(dataset.id), optimistic)
        self.cur = cur
        self.found: str | None = None  # the temporary table of stored rows, once gathered

    # Keys without an index (see KEY_HASH): the stored rows of the staged keys are
    # gathered once per write, by a join on the key hash alone (the table's other columns
    # are not read), then fetched by rowid; joins on the key itself then run between
    # temporary tables the size of the batch, and stored rows are deleted by rowid.
    def stored_rows(self, columns: Iterable[str] = ()) -> str:
        if self.found is None:
            keys = self.dataset.unique_key
            names = [*keys, *(c for c in columns if c not in keys)]
            staged_hash = key_hash(self.dataset, {k: f"s.c{self.positions[k]}" for k in keys})
            candidates = f"cnd_{self.tag}"
            self.execute(
                f"CREATE TEMP TABLE {candidates} AS SELECT t.rowid AS _rid FROM {self.table} t"
                f" SEMI JOIN {self.stg} s ON t.{quote(KEY_HASH)} = {staged_hash}"
            )
            self.found = f"fnd_{self.tag}"
            self.execute(
                f"CREATE TEMP TABLE {self.found} AS SELECT rowid AS _rid,"
                f" {', '.join(quote(n) for n in names)} FROM {self.table}"
                f" WHERE rowid IN (SELECT _rid FROM {candidates})"
            )
        return self.found

    def delete_stored(self, keys: str) -> None:
        self._delete_found(keys, {k: f"c{self.positions[k]}" for k in self.dataset.unique_key})

    def _delete_found(self, keys: str, names: dict[str, str]) -> None:
        """Delete the gathered rows whose key is in `keys` (key columns `names[key]`)."""
        on = " AND ".join(f"f.{quote(k)} = s.{names[k]}" for k in self.dataset.unique_key)
        self.execute(
            f"DELETE FROM {self.table} WHERE rowid IN"
            f" (SELECT f._rid FROM {self.stored_rows()} f SEMI JOIN {keys} s ON {on})"
        )

    def _write_merged(self, any_existing: bool) -> None:
        """Stored rows of the merged keys out, the merged rows in: the merged rows hold
        every final value, and nothing here reads more than the batch's rows."""
        merged_as = self._merged_names()
        if any_existing:
            self._delete_found(f"(SELECT * FROM {self.mrg} WHERE _existed)", merged_as)
        columns = ", ".join(self.ident(c.name) for c in self.dataset.columns)
        hashed = key_hash(self.dataset, merged_as)
        self.execute(
            f"INSERT INTO {self.table} ({columns}, {quote(KEY_HASH)})"
            f" SELECT {', '.join(merged_as.values())}, {hashed} FROM {self.mrg} WHERE NOT _bad"
        )

    def _staged_columns(self) -> tuple[str, str]:
        target, source = super()._staged_columns()
        if not self.dataset.unique_key:
            return target, source
        hashed = key_hash(self.dataset, {k: f"c{self.positions[k]}" for k in self.positions})
        return f"{target}, {quote(KEY_HASH)}", f"{source}, {hashed}"

    def _insert_unchecked(self, staged: pa.Table) -> None:
        """Optimistic insert: with no index to refuse a stored or repeated key, look for
        them first (the key hash only: cheap), and write the careful way if there are."""
        if self.dataset.unique_key and self._may_conflict(staged):
            self.stage(staged)
            try:
                self._insert()
            finally:
                self.unstage()
            return
        super()._insert_unchecked(staged)

    def _may_conflict(self, staged: pa.Table) -> bool:
        """Whether a key repeats in the batch or is stored. Stored keys are compared on
        the key itself: the rows whose hash matches (a few hundred false ones per 150k
        keys at 10M rows) are fetched by rowid first."""
        keys = [f"c{self.positions[k]}" for k in self.dataset.unique_key]
        hashed = key_hash(self.dataset, {k: f"s.c{self.positions[k]}" for k in self.positions})
        candidates = f"cnd_{self.tag}"
        with self._registered(staged.select(keys)) as source:
            ((repeated,),) = self.fetch(
                f"SELECT EXISTS (SELECT 1 FROM {source} GROUP BY {', '.join(keys)}"
                " HAVING count(*) > 1)"
            )
            if repeated:
                return True
            self.execute(
                f"CREATE TEMP TABLE {candidates} AS SELECT t.rowid AS _rid FROM {self.table} t"
                f" SEMI JOIN {source} s ON t.{quote(KEY_HASH)} = {hashed}"
            )
            try:
                ((stored,),) = self.fetch(
                    f"SELECT EXISTS (SELECT 1 FROM (SELECT"
                    f" {', '.join(quote(k) for k in self.dataset.unique_key)} FROM {self.table}"
                    f" WHERE rowid IN (SELECT _rid FROM {candidates})) f"
                    f" SEMI JOIN {source} s ON {self._join('f', 's')})"
                )
            finally:
                self.execute(f"DROP TABLE {candidates}")
        return bool(stored)

    def unstage(self) -> None:
        super().unstage()
        self.execute(f"DROP TABLE IF EXISTS cnd_{self.tag}")
        self.execute(f"DROP TABLE IF EXISTS fnd_{self.tag}")
        self.found = None

    def ident(self, column: str) -> str:
        return quote(column)

    def sql_type(self, column: Column) -> str:
        return SQL_TYPES[column.type]

    def execute(self, sql: str) -> None:
        try:
            self.cur.execute(sql)
        except duckdb.ConstraintException as exc:
            if self.optimistic:
                raise KeyConflict from exc
            raise

    def dml(self, sql: str) -> int:
        return int(self.cur.execute(sql).fetchall()[0][0])

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.cur.execute(sql).fetchall()

    def stage(self, staged: pa.Table) -> None:
        with self._registered(staged) as source:
            self.cur.execute(f"CREATE TEMP TABLE {self.stg} AS SELECT * FROM {source}")

    def insert_rows(self, staged: pa.Table, target: list[str]) -> None:
        # One plain INSERT reads the rows once: DuckDB scans the Arrow table where it is.
        columns = ", ".join(self.ident(name) for name in target)
        select = "*"
        if self.dataset.unique_key:
            columns += f", {quote(KEY_HASH)}"
            select += ", " + key_hash(
                self.dataset, {k: f"c{self.positions[k]}" for k in self.positions}
            )
        with self._registered(staged) as source:
            self.execute(f"INSERT INTO {self.table} ({columns}) SELECT {select} FROM {source}")

    @contextlib.contextmanager
    def _registered(self, table: pa.Table) -> Iterator[str]:
        source = f"src_{self.tag}"
        self.cur.register(source, table)
        try:
            yield source
        finally:
            # After a KeyConflict the transaction is aborted; its rollback drops the view.
            with contextlib.suppress(duckdb.TransactionException):
                self.cur.unregister(source)

    def last_value(self, value: str, mask: str | None) -> str:
        # A struct keeps an explicit null that a bare arg_max would skip.
        where = f" FILTER (WHERE {mask})" if mask else ""
        return f"(arg_max({{'v': {value}}}, o){where}).v"
