"""The PostgreSQL store's catalog: datasets (create under a free table name, PATCH, drop,
the columns a write adds, row counts) and API keys. The catalog row names each
dataset's table and is the lock that orders PATCH, drop and writes of one dataset."""

from __future__ import annotations

import time

import psycopg

from pushbase.auth import ApiKey
from pushbase.errors import PushbaseError, not_found
from pushbase.schema import Column, Dataset
from pushbase.storage.base import DATASET_DROPPED, NotWritten, merge_columns
from pushbase.storage.postgres.ddl import (
    KEYED_FILLFACTOR,
    READABLE_ID_CHARS,
    TABLE_NAME_TRIES,
    check_identifiers,
    column_ddl,
    pg_ident,
    stored_type,
)
from pushbase.storage.postgres.recent import RecentDatasets
from pushbase.storage.sql import quote


class CatalogPart:
    """Datasets and keys of `PostgresStore`; uses its `_conn`."""

    recent: RecentDatasets

    # datasets ---------------------------------------------------------
    # Lock order, so that PATCH, drop and writes of one dataset never deadlock: the catalog
    # row first (drop: DELETE; PATCH and a write that adds columns: FOR NO KEY UPDATE; other
    # writes: FOR KEY SHARE, which a PATCH does not wait for), then the table.
    def create_dataset(self, dataset: Dataset) -> None:
        check_identifiers(dataset.columns)
        columns = ", ".join(column_ddl(c) for c in dataset.columns)
        options = ""
        if dataset.unique_key:
            columns += f", PRIMARY KEY ({', '.join(pg_ident(k) for k in dataset.unique_key)})"
            # Room on every page for updated rows: an update that changes no key (ours
            # never do) and finds room on its page is HOT, with no index entry to add.
            options = f" WITH (fillfactor = {KEYED_FILLFACTOR})"
        try:
            with self._conn() as conn, conn.transaction():
                table = self._create_table(conn, dataset.id, columns, options)
                conn.execute(
                    "INSERT INTO _pb_datasets (id, doc, tbl) VALUES (%s, %s, %s)",
                    [dataset.id, dataset.model_dump_json(exclude={"row_count"}), table],
                )
        except psycopg.errors.UniqueViolation as exc:
            raise PushbaseError(
                "dataset_exists", f"dataset {dataset.id!r} already exists", 409
            ) from exc
        self.recent.changed(dataset.id)

    @staticmethod
    def _create_table(
        conn: psycopg.Connection, dataset_id: str, columns: str, options: str = ""
    ) -> str:
        """Create the dataset's table under a name no relation has; never drop one: a
        table this dataset's catalog row does not name belongs to something else."""
        for attempt in range(TABLE_NAME_TRIES):
            if attempt == 0 and len(dataset_id) <= READABLE_ID_CHARS:
                table = f"ds_{dataset_id}"
            else:
                number = conn.execute("SELECT nextval('_pb_table_seq')").fetchone()[0]
                table = f"ds__{number}"
            try:
                with conn.transaction():  # a savepoint: a taken name leaves the rest intact
                    conn.execute(f"CREATE TABLE {quote(table)} ({columns}){options}")
                return table
            except psycopg.errors.DuplicateTable:
                continue  # a stray table (or an index) holds the name: take the next one
        raise PushbaseError("internal_error", "no free table name for the dataset", 500)

    @staticmethod
    def _table(conn: psycopg.Connection, dataset_id: str, lock: str = "") -> str | None:
        """The dataset's table (quoted) as the catalog names it; None once it is dropped."""
        row = conn.execute(
            f"SELECT tbl FROM _pb_datasets WHERE id = %s{lock}", [dataset_id]
        ).fetchone()
        return quote(row[0]) if row else None

    def _lock_for_write(
        self, conn: psycopg.Connection, dataset: Dataset, known: set[str], new: list[Column]
    ) -> str:
        """The table a write goes to, its catalog row locked until the write commits (a
        drop waits for it), and the columns it adds saved. `known` is what it decoded by."""
        if new:
            updated = self._update_dataset(conn, dataset, new, known=known)
            table = None if updated is None else updated[1]
        else:
            table = self._table(conn, dataset.id, " FOR KEY SHARE")
        if table is None:
            raise NotWritten(DATASET_DROPPED)
        return table

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        read_at = time.monotonic()
        with self._conn() as conn:
            row = conn.execute(
                "SELECT doc FROM _pb_datasets WHERE id = %s", [dataset_id]
            ).fetchone()
        if not row:
            return None
        self.recent.seen(Dataset.model_validate_json(row[0]), read_at)  # a copy of its own
        return Dataset.model_validate_json(row[0])

    def recent_dataset(self, dataset_id: str) -> Dataset | None:
        return self.recent.get(dataset_id)

    def list_datasets(self) -> list[Dataset]:
        with self._conn() as conn:
            rows = conn.execute("SELECT doc FROM _pb_datasets ORDER BY id").fetchall()
        return [Dataset.model_validate_json(r[0]) for r in rows]

    def update_dataset(self, dataset: Dataset, add_columns: list[Column]) -> None:
        try:
            with self._conn() as conn, conn.transaction():
                updated = self._update_dataset(conn, dataset, add_columns)
        finally:
            self.recent.changed(dataset.id)
        if updated is None:
            raise not_found("dataset", dataset.id)  # dropped since it was read
        dataset.columns = updated[0].columns  # with any column a concurrent change added

    def _update_dataset(
        self,
        conn: psycopg.Connection,
        dataset: Dataset,
        add_columns: list[Column],
        known: set[str] | None = None,
    ) -> tuple[Dataset, str] | None:
        """Add columns and save the document under the catalog row's lock: the document
        saved and the table (quoted), or None when the dataset is gone. A PATCH also sets
        name, description and policy; a write (`known`: see `merge_columns`) only adds."""
        row = conn.execute(
            "SELECT doc, tbl FROM _pb_datasets WHERE id = %s FOR NO KEY UPDATE", [dataset.id]
        ).fetchone()
        if row is None:
            return None
        stored = Dataset.model_validate_json(row[0])
        columns = merge_columns(stored, add_columns, known)
        check_identifiers(columns)
        for column in add_columns:
            conn.execute(
                f"ALTER TABLE {quote(row[1])} ADD COLUMN"
                f" {pg_ident(column.name)} {stored_type(column.type)}"
            )
        saved = (stored if known is not None else dataset).model_copy(
            update={"columns": columns, "updated_at": dataset.updated_at}
        )
        conn.execute(
            "UPDATE _pb_datasets SET doc = %s WHERE id = %s",
            [saved.model_dump_json(exclude={"row_count"}), dataset.id],
        )
        return saved, quote(row[1])

    def drop_dataset(self, dataset_id: str) -> bool:
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "DELETE FROM _pb_datasets WHERE id = %s RETURNING tbl", [dataset_id]
            ).fetchone()
            if row:  # only the table the catalog names (IF EXISTS: one lost before is fine)
                conn.execute(f"DROP TABLE IF EXISTS {quote(row[0])}")
        self.recent.changed(dataset_id)
        return row is not None

    def row_count(self, dataset_id: str) -> int:
        """0 for a dataset dropped meanwhile: one dataset never fails a whole list."""
        with self._conn() as conn:
            table = self._table(conn, dataset_id)
            if table is None:
                return 0
            try:
                return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except psycopg.errors.UndefinedTable:
                return 0  # dropped between the two statements, or lost before this release

    # keys -------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO _pb_keys (id, key_hash, doc) VALUES (%s, %s, %s)",
                [key.id, key.key_hash, key.model_dump_json()],
            )

    def find_key(self, key_hash: str) -> ApiKey | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT doc, key_hash FROM _pb_keys WHERE key_hash = %s AND NOT revoked",
                [key_hash],
            ).fetchone()
        if not row:
            return None
        key = ApiKey.model_validate_json(row[0])
        key.key_hash = row[1]
        return key

    def list_keys(self) -> list[ApiKey]:
        with self._conn() as conn:
            rows = conn.execute("SELECT doc FROM _pb_keys WHERE NOT revoked ORDER BY id").fetchall()
        return [ApiKey.model_validate_json(r[0]) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._conn() as conn:
            return bool(
                conn.execute(
                    "UPDATE _pb_keys SET revoked = true WHERE id = %s AND NOT revoked", [key_id]
                ).rowcount
            )
