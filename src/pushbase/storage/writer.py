"""One job's write, as SQL both backends share (DESIGN §2 semantics live here).

The batch is staged under positional names (c0, p0, …, r) so that user column
names reach SQL only as quoted identifiers of the dataset table. A backend
supplies how to run statements, stage an Arrow table, take the last present
value in a group, and write the merged rows.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from pushbase.decode import DecodedBatch, RowError
from pushbase.decode.batch import ROW_COLUMN
from pushbase.jobs.model import JobStats
from pushbase.schema import Column, Dataset, WriteMethod


class AtomicViolation(Exception):
    """Raised inside the write transaction to roll it back when an atomic job has errors."""

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors


class SqlWriter(ABC):
    def __init__(self, dataset: Dataset, batch: DecodedBatch | None, table: str) -> None:
        self.dataset = dataset
        self.batch = batch
        self.table = table
        self.tag = secrets.token_hex(6)
        self.stg = f"stg_{self.tag}"
        self.mrg = f"mrg_{self.tag}"
        self.positions: dict[str, int] = {}
        self.masked: set[str] = set()
        self.rejected: list[RowError] = []  # rows a backend cannot store, found before the write

    # what a backend provides -----------------------------------------------
    @abstractmethod
    def ident(self, column: str) -> str:
        """The quoted identifier of a dataset column in the table."""

    @abstractmethod
    def sql_type(self, column: Column) -> str:
        """The SQL type of a dataset column in this backend."""

    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def dml(self, sql: str) -> int:
        """Run an INSERT/UPDATE/DELETE and return the rows it touched."""

    @abstractmethod
    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def stage(self, staged: pa.Table) -> None:
        """Create the temporary table `self.stg` holding `staged`."""

    @abstractmethod
    def last_value(self, value: str, mask: str | None) -> str:
        """Aggregate: the value of the highest `r` in the group (among rows where `mask`)."""

    @abstractmethod
    def write_merged(self, columns: str, any_existing: bool) -> None:
        """Write `self.mrg` rows (NOT _bad) over the table: existing keys replaced."""

    # the write ---------------------------------------------------------------
    def run(self, method: WriteMethod) -> tuple[JobStats, list[RowError]]:
        stats, errors = self._run(method)
        return stats, [*self.rejected, *errors]

    def _run(self, method: WriteMethod) -> tuple[JobStats, list[RowError]]:
        if method is WriteMethod.delete_all or self.batch is None:
            return JobStats(deleted=self.dml(f"DELETE FROM {self.table}")), []
        keyed = bool(self.dataset.unique_key)
        if self.batch.table.num_rows == 0:
            if method is WriteMethod.replace:
                return JobStats(deleted=self.dml(f"DELETE FROM {self.table}")), []
            return JobStats(), []
        self._stage()
        try:
            if method is WriteMethod.delete:
                return self._delete()
            if method is WriteMethod.replace:
                deleted = self.dml(f"DELETE FROM {self.table}")
                stats, errors = self._merge(against_stored=False) if keyed else self._append()
                stats.deleted = deleted
                return stats, errors
            if not keyed:
                return self._append()
            if method is WriteMethod.insert:
                return self._insert()
            return self._merge(against_stored=True)
        finally:
            self.execute(f"DROP TABLE IF EXISTS {self.stg}")
            self.execute(f"DROP TABLE IF EXISTS {self.mrg}")

    def _stage(self) -> None:
        assert self.batch is not None
        arrays, names = [], []
        for name in self.batch.table.column_names:
            if name == ROW_COLUMN:
                continue
            position = len(self.positions)
            self.positions[name] = position
            arrays.append(self.batch.table.column(name))
            names.append(f"c{position}")
            mask = self.batch.present.get(name)
            if mask is not None:
                self.masked.add(name)
                arrays.append(mask)
                names.append(f"p{position}")
        arrays.append(self.batch.table.column(ROW_COLUMN))
        names.append("r")
        self.stage(pa.Table.from_arrays(arrays, names=names))

    def _staged_columns(self) -> tuple[str, str]:
        """(target column list, staged source list) for the columns in the batch."""
        target = ", ".join(self.ident(n) for n in self.positions)
        source = ", ".join(f"c{p}" for p in self.positions.values())
        return target, source

    def _keys(self, alias: str = "") -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(f"{prefix}c{self.positions[k]}" for k in self.dataset.unique_key)

    def _join(self, table_alias: str, staged_alias: str) -> str:
        """`t."key" = s.cN AND ...` between the table and staged rows."""
        return " AND ".join(
            f"{table_alias}.{self.ident(k)} = {staged_alias}.c{self.positions[k]}"
            for k in self.dataset.unique_key
        )

    def _append(self) -> tuple[JobStats, list[RowError]]:
        target, source = self._staged_columns()
        inserted = self.dml(f"INSERT INTO {self.table} ({target}) SELECT {source} FROM {self.stg}")
        return JobStats(inserted=inserted), []

    def _insert(self) -> tuple[JobStats, list[RowError]]:
        exists = f"EXISTS (SELECT 1 FROM {self.table} t WHERE {self._join('t', 's')})"
        ranked = (
            f"SELECT *, row_number() OVER (PARTITION BY {self._keys()} ORDER BY r) AS n"
            f" FROM {self.stg}"
        )
        duplicates = self.fetch(
            f"SELECT s.r, s.n > 1 FROM ({ranked}) s WHERE s.n > 1 OR {exists} ORDER BY s.r"
        )
        key_name = ",".join(self.dataset.unique_key)
        errors = [
            RowError(
                row,
                key_name,
                "duplicate_key",
                "key appears earlier in this job" if in_job else "key already exists",
            )
            for row, in_job in duplicates
        ]
        target, source = self._staged_columns()
        inserted = self.dml(
            f"INSERT INTO {self.table} ({target}) SELECT {source} FROM ({ranked}) s"
            f" WHERE s.n = 1 AND NOT {exists}"
        )
        return JobStats(inserted=inserted), errors

    def _merge(self, against_stored: bool) -> tuple[JobStats, list[RowError]]:
        """Upsert (merge with stored rows) or replace (merge within the job only).

        Several rows of one key are folded first, field by field, the last present
        value winning; an explicit null is a value like any other.
        """
        keys = set(self.dataset.unique_key)
        folded = [self._keys()]
        for name, p in self.positions.items():
            if name in keys:
                continue
            mask = f"p{p}" if name in self.masked else None
            folded.append(f"{self.last_value(f'c{p}', mask)} AS c{p}")
            if mask:
                folded.append(f"bool_or(p{p}) AS p{p}")
        folded.append("count(*) AS n")
        fold = f"SELECT {', '.join(folded)} FROM {self.stg} GROUP BY {self._keys()}"

        selected = []
        for column in self.dataset.columns:
            name, ident = column.name, self.ident(column.name)
            p = self.positions.get(name)
            stored = f"t.{ident}" if against_stored else f"CAST(NULL AS {self.sql_type(column)})"
            if p is None:
                selected.append(f"{stored} AS {ident}")
            elif name in keys or name not in self.masked:
                selected.append(f"m.c{p} AS {ident}")
            else:
                selected.append(f"CASE WHEN m.p{p} THEN m.c{p} ELSE {stored} END AS {ident}")
        first_key = self.ident(self.dataset.unique_key[0])
        existed = f"t.{first_key} IS NOT NULL" if against_stored else "false"
        join = f"LEFT JOIN {self.table} t ON {self._join('t', 'm')}" if against_stored else ""
        required = [c for c in self.dataset.columns if not c.nullable and c.name not in keys]
        missing = " OR ".join(f"{self.ident(c.name)} IS NULL" for c in required) or "false"
        merged = (
            f"SELECT {', '.join(selected)}, {existed} AS _existed, m.n AS _n FROM ({fold}) m {join}"
        )
        self.execute(
            f"CREATE TEMP TABLE {self.mrg} AS SELECT *, NOT _existed AND ({missing}) AS _bad"
            f" FROM ({merged}) x"
        )
        errors: list[RowError] = []
        if required:
            back = " AND ".join(
                f"s.c{self.positions[k]} = b.{self.ident(k)}" for k in self.dataset.unique_key
            )
            bad_rows = self.fetch(
                f"SELECT s.r FROM {self.stg} s JOIN {self.mrg} b ON {back}"
                " WHERE b._bad ORDER BY s.r"
            )
            names = ", ".join(repr(c.name) for c in required)
            errors = [
                RowError(row, None, "missing_value", f"a new row needs a value for {names}")
                for (row,) in bad_rows
            ]
        ((updated_rows, existing, inserted, repeats),) = self.fetch(
            "SELECT coalesce(sum(_n) FILTER (WHERE _existed), 0),"
            " count(*) FILTER (WHERE _existed),"
            " count(*) FILTER (WHERE NOT _existed AND NOT _bad),"
            f" coalesce(sum(_n - 1) FILTER (WHERE NOT _existed AND NOT _bad), 0) FROM {self.mrg}"
        )
        columns = ", ".join(self.ident(c.name) for c in self.dataset.columns)
        self.write_merged(columns, bool(existing))
        return JobStats(inserted=int(inserted), updated=int(updated_rows) + int(repeats)), errors

    def _delete(self) -> tuple[JobStats, list[RowError]]:
        ((not_found,),) = self.fetch(
            f"SELECT count(*) FROM {self.stg} s WHERE NOT EXISTS"
            f" (SELECT 1 FROM {self.table} t WHERE {self._join('t', 's')})"
        )
        deleted = self.dml(
            f"DELETE FROM {self.table} t USING (SELECT DISTINCT {self._keys()} FROM {self.stg}) s"
            f" WHERE {self._join('t', 's')}"
        )
        return JobStats(deleted=deleted, not_found=int(not_found)), []
