"""The write of one or more jobs, as SQL both backends share (DESIGN §2, group commit §7).

Consecutive jobs of one dataset and method are written by one set of statements
in one transaction, yet each keeps its own stats and errors: the staged rows carry
their job (`j`), their row in the job's payload (`r`) and one order over the group
(`o`), so "last write wins" and "first occurrence inserts" follow acceptance order
exactly as if the jobs had run one after another.

Staged columns have positional names (c0, p0, …), and so do the merged rows' (d0, …):
user column names reach SQL only as quoted identifiers of the dataset table, and no
user column can share a name with a helper column (`j`, `_first`, `_bad`, …). A
backend supplies how to run statements, stage an Arrow table and take the last present
value in a group.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pushbase.decode import DecodedBatch, RowError
from pushbase.decode.coerce import ARROW_TYPES
from pushbase.jobs.model import ErrorLimits, Job, JobStats, JobStatus, record_row_errors
from pushbase.schema import Column, Dataset, WriteMethod

JOB_SHIFT = 32  # o = j << 32 | r: one order over all rows of a group
ROW_MASK = (1 << JOB_SHIFT) - 1


class KeyConflict(Exception):
    """An optimistic insert met a key already stored or repeated: write again, carefully."""


class AtomicViolation(Exception):
    """Raised inside the write transaction to roll it back when an atomic job has errors."""

    def __init__(self, job: Job, errors: list[RowError]) -> None:
        self.job = job
        self.errors = errors


@dataclass
class Work:
    """One job in a write, with its decoded rows (None for delete-all)."""

    job: Job
    batch: DecodedBatch | None


class SqlWriter(ABC):
    def __init__(
        self, dataset: Dataset, works: list[Work], table: str, optimistic: bool = False
    ) -> None:
        self.dataset = dataset
        self.works = works
        self.table = table
        # Optimistic: inserts are written without looking for existing or repeated keys
        # first; the primary key refuses the statement if there are any, the backend raises
        # KeyConflict and the store writes the jobs again with `optimistic=False`. (A
        # backend without a key index looks for them first, by a cheaper way: DuckDB.)
        self.optimistic = optimistic
        self.tag = secrets.token_hex(6)
        self.stg = f"stg_{self.tag}"
        self.mrg = f"mrg_{self.tag}"
        self.positions: dict[str, int] = {}
        self.masked: set[str] = set()
        self.rejected: list[tuple[int, RowError]] = []  # (job, error): rows a backend cannot store

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
    def insert_rows(self, staged: pa.Table, target: list[str]) -> None:
        """Append the staged value columns (c0, c1, …) to the table's `target` columns as
        they are; raise KeyConflict if the primary key refuses some row."""

    @abstractmethod
    def last_value(self, value: str, mask: str | None) -> str:
        """Aggregate: the value of the highest `o` in the group (among rows where `mask`)."""

    def unstage(self) -> None:
        """Drop what `stage` and the write created."""
        self.execute(f"DROP TABLE IF EXISTS {self.stg}")
        self.execute(f"DROP TABLE IF EXISTS {self.mrg}")

    def _merged_names(self) -> dict[str, str]:
        """Each dataset column's name in `self.mrg`: d0, d1, … in column order."""
        return {c.name: f"d{i}" for i, c in enumerate(self.dataset.columns)}

    def _write_merged(self, any_existing: bool) -> None:
        """Write `self.mrg` rows (NOT _bad) over the table, existing keys replaced.

        One `INSERT ... ON CONFLICT` per group: the merged rows already hold every final
        value, and groups are large enough to pay for the statement in both backends.
        """
        keys = ", ".join(self.ident(k) for k in self.dataset.unique_key)
        updates = ", ".join(
            f"{self.ident(c.name)} = EXCLUDED.{self.ident(c.name)}"
            for c in self.dataset.columns
            if c.name not in self.dataset.unique_key
        )
        action = f"DO UPDATE SET {updates}" if updates and any_existing else "DO NOTHING"
        columns = ", ".join(self.ident(c.name) for c in self.dataset.columns)
        merged = ", ".join(self._merged_names().values())
        self.execute(
            f"INSERT INTO {self.table} ({columns}) SELECT {merged} FROM {self.mrg}"
            f" WHERE NOT _bad ON CONFLICT ({keys}) {action}"
        )

    def prepare(self, staged: pa.Table) -> pa.Table:
        """A backend's last look at the rows: it may drop some into `self.rejected`."""
        return staged

    def stored_rows(self, columns: Iterable[str] = ()) -> str:
        """A relation holding every stored row whose key is staged in `self.stg` (with the
        key columns and `columns`), for a join on the key. The table itself where an index
        finds them; a backend without one may gather them first."""
        return self.table

    def delete_stored(self, keys: str) -> None:
        """Delete the stored rows whose keys are in `keys` (staged key columns c<p>)."""
        self.execute(f"DELETE FROM {self.table} t USING {keys} s WHERE {self._join('t', 's')}")

    # the write ---------------------------------------------------------------
    def run(self, method: WriteMethod) -> list[tuple[JobStats, list[RowError]]]:
        """Write every job; one (stats, write-time errors) per job, in order."""
        self.stats = [JobStats() for _ in self.works]
        self.errors: list[list[RowError]] = [[] for _ in self.works]
        self._run(method)
        for job, error in self.rejected:
            self.errors[job].append(error)
        return list(zip(self.stats, self.errors, strict=True))

    def _run(self, method: WriteMethod) -> None:
        if method is WriteMethod.delete_all:
            self.stats[0].deleted = self.dml(f"DELETE FROM {self.table}")
            return
        keyed = bool(self.dataset.unique_key)
        if method is WriteMethod.replace:
            self.stats[0].deleted = self.dml(f"DELETE FROM {self.table}")
        staged = self._staged()
        if staged is None:
            return
        if method is WriteMethod.insert and (self.optimistic or not keyed):
            self._insert_unchecked(staged)
            return
        self.stage(staged)
        try:
            if method is WriteMethod.delete:
                self._delete()
            elif method is WriteMethod.replace:
                self._merge(against_stored=False) if keyed else self._append()
            elif not keyed:
                self._append()
            elif method is WriteMethod.insert:
                self._insert()
            else:
                self._merge(against_stored=True)
        finally:
            self.unstage()

    def _staged(self) -> pa.Table | None:
        """Every job's valid rows together; None when there is nothing to write."""
        batches = [w.batch for w in self.works if w.batch is not None]
        names = [
            c.name
            for c in self.dataset.columns
            if any(c.name in b.table.column_names for b in batches)
        ]
        columns = {c.name: c for c in self.dataset.columns}
        # A column needs a presence mask if some row lacks it (absent keeps the stored value).
        masked = {
            name
            for name in names
            if any(name in b.present or name not in b.table.column_names for b in batches)
        }
        pieces = []
        for j, work in enumerate(self.works):
            batch = work.batch
            if batch is None or len(batch.rows) == 0:
                continue
            n = len(batch.rows)
            arrays, fields = [], []
            for position, name in enumerate(names):
                given = name in batch.table.column_names
                arrays.append(
                    batch.table.column(name).combine_chunks()
                    if given
                    else pa.nulls(n, ARROW_TYPES[columns[name].type])
                )
                fields.append(f"c{position}")
                if name in masked:
                    mask = batch.present.get(name)
                    arrays.append(mask if mask is not None else pa.repeat(pa.scalar(given), n))
                    fields.append(f"p{position}")
            rows = batch.rows
            arrays += [pa.repeat(pa.scalar(j, pa.int64()), n), rows, pc.add(rows, j << JOB_SHIFT)]
            fields += ["j", "r", "o"]
            pieces.append(pa.Table.from_arrays(arrays, names=fields))
        if not pieces or not names:
            return None
        self.positions = {name: p for p, name in enumerate(names)}
        self.masked = masked
        staged = self.prepare(pa.concat_tables(pieces))
        return staged if staged.num_rows else None

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

    def _append(self) -> None:
        for j, count in self.fetch(f"SELECT j, count(*) FROM {self.stg} GROUP BY j"):
            self.stats[j].inserted = int(count)
        target, source = self._staged_columns()
        self.execute(f"INSERT INTO {self.table} ({target}) SELECT {source} FROM {self.stg}")

    def _insert_unchecked(self, staged: pa.Table) -> None:
        """Rows straight into the table, no staging table: every row is new (optimistic)
        or the table has no key to check."""
        self.insert_rows(staged.select([f"c{p}" for p in self.positions.values()]),
                         list(self.positions))  # fmt: skip
        for count in pc.value_counts(staged.column("j")).to_pylist():
            self.stats[count["values"]].inserted = count["counts"]

    def _repeated_keys(self) -> bool:
        """Whether some key appears on several staged rows (a cheap hash aggregate)."""
        ((count,),) = self.fetch(
            f"SELECT count(*) FROM (SELECT 1 FROM {self.stg} GROUP BY {self._keys()}"
            " HAVING count(*) > 1) d"
        )
        return count > 0

    def _insert(self) -> None:
        """A key already stored, or seen earlier in the group, fails its row."""
        stored = self.stored_rows()
        exists = f"EXISTS (SELECT 1 FROM {stored} t WHERE {self._join('t', 's')})"
        self.execute(
            f"CREATE TEMP TABLE {self.mrg} AS SELECT s.*, {exists} AS _stored FROM {self.stg} s"
        )
        first = "true"
        if self._repeated_keys():
            # Only now pay for ranking rows within their key: which occurrence came first.
            ranked = (
                f"SELECT j, r, o, _stored,"
                f" row_number() OVER (PARTITION BY {self._keys()} ORDER BY o) AS n,"
                f" row_number() OVER (PARTITION BY {self._keys()}, j ORDER BY o) AS nj"
                f" FROM {self.mrg}"
            )
            failures = self.fetch(
                f"SELECT j, r, nj > 1, n FROM ({ranked}) x WHERE n > 1 OR _stored ORDER BY o"
            )
            first = f"o IN (SELECT min(o) FROM {self.mrg} GROUP BY {self._keys()})"
        else:
            failures = self.fetch(f"SELECT j, r, false, 1 FROM {self.mrg} WHERE _stored ORDER BY o")
        key_name = ",".join(self.dataset.unique_key)
        for j, row, in_job, _ in failures:
            message = "key appears earlier in this job" if in_job else "key already exists"
            self.errors[j].append(RowError(row, key_name, "duplicate_key", message))
        valid = f"NOT _stored AND {first}"
        for j, count in self.fetch(f"SELECT j, count(*) FROM {self.mrg} WHERE {valid} GROUP BY j"):
            self.stats[j].inserted = int(count)
        target, source = self._staged_columns()
        self.execute(
            f"INSERT INTO {self.table} ({target}) SELECT {source} FROM {self.mrg} WHERE {valid}"
        )

    def _merge(self, against_stored: bool) -> None:
        """Upsert (merge with stored rows) or replace (merge within the job only).

        Rows of one key are folded first, field by field, the last present value
        winning; an explicit null is a value like any other. A key's first row
        inserts (when the key is new) and every later row updates.
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
        folded.append("min(o) AS _first")
        repeated = self._repeated_keys()
        if repeated:
            fold = f"SELECT {', '.join(folded)} FROM {self.stg} GROUP BY {self._keys()}"
        else:  # one row per key: nothing to fold
            fold = f"SELECT *, o AS _first FROM {self.stg}"

        selected = []
        merged_as = self._merged_names()
        for column in self.dataset.columns:
            name, ident, d = column.name, self.ident(column.name), merged_as[column.name]
            p = self.positions.get(name)
            null = f"CAST(NULL AS {self.sql_type(column)})"
            stored = f"t.{ident}" if against_stored else null
            if p is None:
                selected.append(f"{stored} AS {d}")
            elif name in keys or name not in self.masked:
                selected.append(f"m.c{p} AS {d}")
            else:
                selected.append(f"CASE WHEN m.p{p} THEN m.c{p} ELSE {stored} END AS {d}")
        first_key = self.ident(self.dataset.unique_key[0])
        existed = f"t.{first_key} IS NOT NULL" if against_stored else "false"
        join = ""
        if against_stored:
            kept = [n for n in self.masked if n not in keys]  # absent fields keep these
            kept += [c.name for c in self.dataset.columns if c.name not in self.positions]
            join = f"LEFT JOIN {self.stored_rows(kept)} t ON {self._join('t', 'm')}"
        required = [c for c in self.dataset.columns if not c.nullable and c.name not in keys]
        missing = " OR ".join(f"{merged_as[c.name]} IS NULL" for c in required) or "false"
        merged = (
            f"SELECT {', '.join(selected)}, {existed} AS _existed, m._first FROM ({fold}) m {join}"
        )
        self.execute(
            f"CREATE TEMP TABLE {self.mrg} AS SELECT *, NOT _existed AND ({missing}) AS _bad"
            f" FROM ({merged}) x"
        )
        # Each staged row with the outcome of its key (joined back only if rows were folded).
        if repeated:
            back = " AND ".join(
                f"s.c{self.positions[k]} = b.{merged_as[k]}" for k in self.dataset.unique_key
            )
            per_row = (
                f"SELECT s.j, s.r, s.o, b._existed, b._first, b._bad"
                f" FROM {self.stg} s JOIN {self.mrg} b ON {back}"
            )
        else:
            per_row = (
                f"SELECT _first >> {JOB_SHIFT} AS j, _first & {ROW_MASK} AS r, _first AS o,"
                f" _existed, _first, _bad FROM {self.mrg}"
            )
        if required:
            names = ", ".join(repr(c.name) for c in required)
            for j, row in self.fetch(f"SELECT j, r FROM ({per_row}) x WHERE _bad ORDER BY o"):
                message = f"a new row needs a value for {names}"
                self.errors[j].append(RowError(row, None, "missing_value", message))
        for j, inserted, updated in self.fetch(
            "SELECT j, count(*) FILTER (WHERE NOT _existed AND o = _first),"
            f" count(*) FILTER (WHERE _existed OR o > _first) FROM ({per_row}) x"
            " WHERE NOT _bad GROUP BY j"
        ):
            self.stats[j].inserted, self.stats[j].updated = int(inserted), int(updated)
        ((existing,),) = self.fetch(f"SELECT count(*) FROM {self.mrg} WHERE _existed")
        self._write_merged(bool(existing))

    def _delete(self) -> None:
        """A key's first row in the group deletes the stored row; later ones find nothing."""
        firsts = f"SELECT {self._keys()}, min(o) AS _first FROM {self.stg} GROUP BY {self._keys()}"
        self.execute(
            f"CREATE TEMP TABLE {self.mrg} AS SELECT f.* FROM ({firsts}) f"
            f" WHERE EXISTS (SELECT 1 FROM {self.stored_rows()} t WHERE {self._join('t', 'f')})"
        )
        same = " AND ".join(f"s.c{p} = d.c{p}" for k, p in self.positions.items()
                            if k in self.dataset.unique_key)  # fmt: skip
        for j, deleted, received in self.fetch(
            f"SELECT s.j, count(d._first), count(*) FROM {self.stg} s"
            f" LEFT JOIN {self.mrg} d ON {same} AND s.o = d._first GROUP BY s.j"
        ):
            self.stats[j].deleted, self.stats[j].not_found = int(deleted), int(received - deleted)
        self.delete_stored(self.mrg)


def apply_optimistically(works: list[Work], apply: Callable[[bool], list[Job]]) -> list[Job]:
    """Run a store's `apply(optimistic)`: inserts, most often of new keys, are first
    written without looking for stored or repeated keys; on a KeyConflict the
    transaction is gone and they are written again the careful way."""
    if works[0].job.method is WriteMethod.insert:
        try:
            return apply(True)
        except KeyConflict:
            pass
    return apply(False)


def settle(writer: SqlWriter, method: WriteMethod, limits: ErrorLimits) -> list[Job]:
    """Run the write and record each job's outcome on it; AtomicViolation rolls back.
    `limits` (the store's Settings): what each job keeps of its row errors."""
    outcomes = writer.run(method)
    finished = datetime.now(UTC)  # the rows are written: only the commit is left
    jobs = []
    for work, (stats, write_errors) in zip(writer.works, outcomes, strict=True):
        job, batch = work.job, work.batch
        errors = sorted(
            [*(batch.errors if batch else []), *write_errors], key=lambda e: (e.row, e.column or "")
        )
        if job.atomic and errors:
            raise AtomicViolation(job, errors)
        if batch is not None:
            stats.received = batch.received
            stats.ignored_fields = batch.ignored_fields
        job.status, job.phase, job.progress = JobStatus.succeeded, None, 100
        job.finished_at = finished
        job.stats = stats
        record_row_errors(job, errors, limits)  # also sets stats.failed and errors_total
        jobs.append(job)
    return jobs


def evolve(dataset: Dataset, works: list[Work]) -> list[Column]:
    """The columns an `evolve` dataset gains from these jobs, added to `dataset` here."""
    added = [c for w in works if w.batch for c in w.batch.new_columns]
    if added:
        dataset.columns.extend(added)
        dataset.updated_at = datetime.now(UTC)
    return added
