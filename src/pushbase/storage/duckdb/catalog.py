"""The embedded store's catalog: datasets (create, PATCH, drop, the columns a write adds,
row counts) and API keys. One process owns the file, so both are also kept in memory
(`_datasets`, `_keys`) and requests read them without waiting for DuckDB; the file is
changed first, then memory, under `_catalog_lock`."""

from __future__ import annotations

import threading

import duckdb

from pushbase.auth import ApiKey
from pushbase.errors import PushbaseError, StoreUnavailable, not_found
from pushbase.schema import Column, Dataset
from pushbase.storage.base import merge_columns
from pushbase.storage.duckdb.ddl import KEY_HASH, KEY_HASH_TYPE, SQL_TYPES, column_ddl, table_name
from pushbase.storage.sql import quote


def _busy(dataset_id: str) -> PushbaseError:
    return PushbaseError(
        "dataset_busy", f"dataset {dataset_id!r} is being written or changed; try again", 409
    )


class CatalogPart:
    """Datasets and keys of `DuckDBStore`; uses its `_cursor` and `_transaction`."""

    _datasets: dict[str, Dataset]
    _keys: dict[str, ApiKey]  # by hash
    _catalog_lock: threading.RLock

    def _load_catalog(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Datasets and keys into memory, as the file has them (replacing what was there)."""
        datasets = {}
        for (doc,) in cur.execute("SELECT doc FROM _pb_datasets").fetchall():
            dataset = Dataset.model_validate_json(doc)
            datasets[dataset.id] = dataset
        keys = {}
        for doc, key_hash in cur.execute(
            "SELECT doc, key_hash FROM _pb_keys WHERE NOT revoked"
        ).fetchall():
            key = ApiKey.model_validate_json(doc)
            key.key_hash = key_hash
            keys[key_hash] = key
        self._datasets, self._keys = datasets, keys

    # datasets ---------------------------------------------------------
    # A change to a dataset updates the file, then `_datasets`; `_catalog_lock` makes the
    # two one step for create, PATCH and drop, so concurrent changes (a PATCH racing a drop)
    # leave memory as the file is. A write that adds columns reloads the document after
    # its commit, under the same lock. DuckDB refuses conflicting transactions rather than
    # waiting: a PATCH or drop that meets a write's uncommitted change answers 409
    # `dataset_busy`; a write that meets a committed PATCH or drop runs again or fails.
    def create_dataset(self, dataset: Dataset) -> None:
        columns = ", ".join(column_ddl(c) for c in dataset.columns)
        if dataset.unique_key:  # no index: see KEY_HASH
            columns += f", {quote(KEY_HASH)} {KEY_HASH_TYPE} NOT NULL"
        with self._catalog_lock:
            try:
                with self._transaction() as cur:
                    if cur.execute(
                        "SELECT 1 FROM _pb_datasets WHERE id = ?", [dataset.id]
                    ).fetchone():
                        raise PushbaseError(
                            "dataset_exists", f"dataset {dataset.id!r} already exists", 409
                        )
                    cur.execute(f"CREATE TABLE {table_name(dataset.id)} ({columns})")
                    cur.execute(
                        "INSERT INTO _pb_datasets VALUES (?, ?)",
                        [dataset.id, self._dataset_doc(dataset)],
                    )
            except (duckdb.ConstraintException, duckdb.CatalogException) as exc:
                # DuckDB compares table names case-insensitively: `ds_A` is `ds_a`.
                other = [i for i in self._datasets if i.casefold() == dataset.id.casefold()]
                detail = f" (dataset {other[0]!r} differs only in case)" if other else ""
                raise PushbaseError(
                    "dataset_exists", f"dataset {dataset.id!r} already exists{detail}", 409
                ) from exc
            self._datasets[dataset.id] = dataset.model_copy(deep=True)

    @staticmethod
    def _dataset_doc(dataset: Dataset) -> str:
        return dataset.model_dump_json(exclude={"row_count"})

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        dataset = self._datasets.get(dataset_id)
        return dataset.model_copy(deep=True) if dataset else None  # callers may change theirs

    def list_datasets(self) -> list[Dataset]:
        datasets = dict(self._datasets)  # a drop may remove one meanwhile
        return [datasets[i].model_copy(deep=True) for i in sorted(datasets)]

    def update_dataset(self, dataset: Dataset, add_columns: list[Column]) -> None:
        with self._catalog_lock:
            try:
                with self._transaction() as cur:
                    saved = self._update_dataset(cur, dataset, add_columns)
            except duckdb.TransactionException as exc:
                raise _busy(dataset.id) from exc
            if saved is None:
                self._datasets.pop(dataset.id, None)
                raise not_found("dataset", dataset.id)  # dropped since it was read
            self._datasets[dataset.id] = saved.model_copy(deep=True)
        dataset.columns = saved.columns  # with any column a write added meanwhile

    def _update_dataset(
        self,
        cur: duckdb.DuckDBPyConnection,
        dataset: Dataset,
        add_columns: list[Column],
        known: set[str] | None = None,
    ) -> Dataset | None:
        """Add columns and save the document (not `_datasets`: the caller does, after the
        commit): the document saved, or None when the dataset is gone. A PATCH also sets
        name, description and policy; a write (`known`: see `merge_columns`) only adds."""
        row = cur.execute("SELECT doc FROM _pb_datasets WHERE id = ?", [dataset.id]).fetchone()
        if row is None:
            return None
        stored = Dataset.model_validate_json(row[0])
        columns = merge_columns(stored, add_columns, known)
        saved = (stored if known is not None else dataset).model_copy(
            update={"columns": columns, "updated_at": dataset.updated_at}
        )
        cur.execute(
            "UPDATE _pb_datasets SET doc = ? WHERE id = ?", [self._dataset_doc(saved), dataset.id]
        )
        for column in add_columns:
            # New columns are nullable in storage: existing rows have no value for them.
            cur.execute(
                f"ALTER TABLE {table_name(dataset.id)} ADD COLUMN"
                f" {quote(column.name)} {SQL_TYPES[column.type]}"
            )
        return saved

    def drop_dataset(self, dataset_id: str) -> bool:
        with self._catalog_lock:
            try:
                with self._transaction() as cur:
                    found = cur.execute(
                        "DELETE FROM _pb_datasets WHERE id = ?", [dataset_id]
                    ).fetchone()[0]
                    if found:
                        cur.execute(f"DROP TABLE IF EXISTS {table_name(dataset_id)}")
            except duckdb.TransactionException as exc:
                raise _busy(dataset_id) from exc
            self._datasets.pop(dataset_id, None)
        return bool(found)

    def row_count(self, dataset_id: str) -> int:
        try:
            with self._cursor() as cur:
                return cur.execute(f"SELECT count(*) FROM {table_name(dataset_id)}").fetchone()[0]
        except duckdb.CatalogException:
            return 0  # no table (dropped meanwhile): one dataset never fails a whole list

    def _committed(self, saved: Dataset) -> None:
        """After a write that added columns committed `saved`: memory takes the document
        the file now has (a PATCH may have saved a later one), or `saved` if it cannot be
        read (a stale copy would make every later push add the same columns again)."""
        with self._catalog_lock:
            try:
                with self._cursor() as cur:
                    row = cur.execute(
                        "SELECT doc FROM _pb_datasets WHERE id = ?", [saved.id]
                    ).fetchone()
            except StoreUnavailable:
                row = (self._dataset_doc(saved),)
            if row:
                self._datasets[saved.id] = Dataset.model_validate_json(row[0])

    def _exists(self, dataset_id: str) -> bool:
        """Whether the dataset exists once a change in progress (a drop) is done."""
        with self._catalog_lock:
            return dataset_id in self._datasets

    # keys -------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO _pb_keys (id, key_hash, doc) VALUES (?, ?, ?)",
                [key.id, key.key_hash, key.model_dump_json()],
            )
        self._keys[key.key_hash] = key.model_copy()

    def find_key(self, key_hash: str) -> ApiKey | None:
        key = self._keys.get(key_hash)
        return key.model_copy() if key else None

    def list_keys(self) -> list[ApiKey]:
        return sorted((k.model_copy() for k in self._keys.values()), key=lambda k: k.id)

    def revoke_key(self, key_id: str) -> bool:
        with self._cursor() as cur:
            found = cur.execute(
                "UPDATE _pb_keys SET revoked = true WHERE id = ? AND NOT revoked", [key_id]
            ).fetchone()[0]
        for key_hash in [h for h, k in self._keys.items() if k.id == key_id]:
            del self._keys[key_hash]
        return bool(found)
