"""Reading a dataset's rows on the embedded store: a filtered, ordered page with the
total count, and a whole-table export in Arrow batches. A table dropped under a read
answers 404."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from pushbase.errors import not_found
from pushbase.schema import Dataset
from pushbase.storage.base import RowQuery
from pushbase.storage.duckdb.ddl import table_name
from pushbase.storage.sql import quote

log = logging.getLogger("pushbase.store")


class RowsPart:
    """Reads of `DuckDBStore`; uses its `_cursor` and the catalog's `_exists`."""

    def read_rows(self, dataset: Dataset, query: RowQuery) -> tuple[pa.Table, int]:
        where, params = self._where(query.filters)
        order = ", ".join(f"{quote(c)} {'DESC' if desc else 'ASC'}" for c, desc in query.order_by)
        if not order:
            order = ", ".join(quote(k) for k in dataset.unique_key) or "rowid"
        columns = ", ".join(quote(c.name) for c in dataset.columns)
        table = table_name(dataset.id)
        with self._cursor() as cur, self._gone_as_not_found(dataset.id):
            total = cur.execute(f"SELECT count(*) FROM {table}{where}", params).fetchall()[0][0]
            page = cur.sql(
                f"SELECT {columns} FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                params=[*params, query.limit, query.offset],
            ).to_arrow_table()
        return page, total

    @contextlib.contextmanager
    def _gone_as_not_found(self, dataset_id: str) -> Iterator[None]:
        """A read that meets the table dropped under it: the dataset is gone, 404."""
        try:
            yield
        except duckdb.CatalogException as exc:
            if self._exists(dataset_id):  # a table lost before this release: drop it
                log.warning("dataset %r has no table: %s", dataset_id, exc)
            raise not_found("dataset", dataset_id) from exc

    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        if not filters:
            return "", []
        clauses = [
            f"{quote(name)} IS NULL" if value is None else f"{quote(name)} = ?"
            for name, value in filters.items()
        ]
        return " WHERE " + " AND ".join(clauses), [v for v in filters.values() if v is not None]

    def export_batches(self, dataset: Dataset) -> Iterator[pa.RecordBatch]:
        columns = ", ".join(quote(c.name) for c in dataset.columns)
        order = ", ".join(quote(k) for k in dataset.unique_key) or "rowid"
        with self._cursor() as cur, self._gone_as_not_found(dataset.id):
            reader = cur.sql(
                f"SELECT {columns} FROM {table_name(dataset.id)} ORDER BY {order}"
            ).to_arrow_reader(50_000)
            yield from reader
