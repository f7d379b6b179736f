"""Reading a dataset's rows on PostgreSQL: a filtered, ordered page with the total count,
and a whole-table export through a server-side cursor, both as Arrow. A table dropped
under a read answers 404."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pyarrow as pa

from pushbase.decode.coerce import ARROW_TYPES
from pushbase.errors import not_found
from pushbase.schema import ColumnType, Dataset
from pushbase.storage.base import RowQuery
from pushbase.storage.postgres.ddl import pg_ident


def _param_safe(sql: str) -> str:
    """Identifiers may hold `%`; with parameters psycopg reads `%%` as a literal `%`."""
    return sql.replace("%", "%%")


@contextlib.contextmanager
def _gone_as_not_found(dataset_id: str) -> Iterator[None]:
    """A read that meets the table dropped under it: the dataset is gone, 404."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise not_found("dataset", dataset_id) from exc


class RowsPart:
    """Reads of `PostgresStore`; uses its `_conn` and the catalog's `_table`."""

    def _select_list(self, dataset: Dataset) -> str:
        return ", ".join(
            f"{pg_ident(c.name)}::text" if c.type is ColumnType.json else pg_ident(c.name)
            for c in dataset.columns
        )

    def _default_order(self, dataset: Dataset) -> str:
        return ", ".join(pg_ident(k) for k in dataset.unique_key) or "ctid"

    @staticmethod
    def _to_arrow(dataset: Dataset, rows: list[tuple[Any, ...]]) -> pa.Table:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in dataset.columns]
        arrays = {}
        for column, values in zip(dataset.columns, columns, strict=True):
            if column.type is ColumnType.json:  # jsonb prints with spaces: back to compact JSON
                values = tuple(
                    v if v is None else orjson.dumps(orjson.loads(v)).decode() for v in values
                )
            arrays[column.name] = pa.array(list(values), ARROW_TYPES[column.type])
        return pa.table(arrays)

    def read_rows(self, dataset: Dataset, query: RowQuery) -> tuple[pa.Table, int]:
        # Every piece of SQL text that holds an identifier goes through `_param_safe`.
        clauses = [
            _param_safe(f"{pg_ident(name)} IS NULL" if value is None else f"{pg_ident(name)} = ")
            + ("" if value is None else "%s")
            for name, value in query.filters.items()
        ]
        params = [v for v in query.filters.values() if v is not None]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = ", ".join(
            f"{pg_ident(c)} {'DESC' if desc else 'ASC'}" for c, desc in query.order_by
        ) or self._default_order(dataset)
        select = self._select_list(dataset)
        with self._conn() as conn, _gone_as_not_found(dataset.id):
            table = self._table(conn, dataset.id)
            if table is None:
                raise not_found("dataset", dataset.id)
            total = conn.execute(
                _param_safe(f"SELECT count(*) FROM {table}") + where, params
            ).fetchone()[0]
            rows = conn.execute(
                _param_safe(f"SELECT {select} FROM {table}") + where
                + _param_safe(f" ORDER BY {order}") + " LIMIT %s OFFSET %s",
                [*params, query.limit, query.offset],
            ).fetchall()  # fmt: skip
        return self._to_arrow(dataset, rows), total

    def export_batches(self, dataset: Dataset) -> Iterator[pa.RecordBatch]:
        with self._conn() as conn, conn.transaction(), _gone_as_not_found(dataset.id):
            table = self._table(conn, dataset.id, " FOR KEY SHARE")  # not dropped mid-export
            if table is None:
                raise not_found("dataset", dataset.id)
            sql = (
                f"SELECT {self._select_list(dataset)} FROM {table}"
                f" ORDER BY {self._default_order(dataset)}"
            )
            with conn.cursor(name="export") as cur:
                cur.execute(sql)
                while rows := cur.fetchmany(50_000):
                    yield from self._to_arrow(dataset, rows).to_batches()
