"""The catalog against careless and hostile names and concurrent changes (issue 20: items
5, 9, 10 and parts of 12): a dataset never reaches another's table or column, a change that
fails or races leaves the catalog as its tables are, and a reserved name is refused."""

from __future__ import annotations

import hashlib
import secrets
import threading
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from conftest import (
    PG_URL,
    create_dataset,
    drop_schema,
    make_client,
    postgres_or_skip,
    push,
    rows_of,
)
from pushbase.jobs.model import JobStatus
from pushbase.schema import Column
from pushbase.storage.postgres import KEYED_FILLFACTOR, MIGRATIONS, legacy_name


def store_of(client: TestClient) -> Any:
    return client.app.state.services.store


def old_hashed_name(name: str) -> str:
    """How releases before schema version 4 cut identifiers past 63 bytes."""
    raw = name.encode()
    return raw[:54].decode() + "_" + hashlib.sha1(raw).hexdigest()[:8]


# item 5: names that an older release would have given twice ----------------------------
def test_an_id_equal_to_a_long_ids_table_name_leaves_that_datasets_rows(client):
    first = "a" * 64
    second = old_hashed_name(f"ds_{first}").removeprefix("ds_")  # 60 valid id characters
    assert len(second) == 60
    create_dataset(client, first, [{"name": "id", "type": "integer"}], unique_key=["id"])
    assert push(client, first, [{"id": 1}, {"id": 2}])["stats"]["inserted"] == 2

    create_dataset(client, second, [{"name": "x"}])
    assert push(client, second, [{"x": "mine"}])["status"] == "succeeded"

    assert rows_of(client, first) == [{"id": 1}, {"id": 2}]
    assert rows_of(client, second) == [{"x": "mine"}]
    listed = {d["id"]: d["row_count"] for d in client.get("/v1/datasets").json()["datasets"]}
    assert listed == {first: 2, second: 1}
    assert client.delete(f"/v1/datasets/{second}").status_code == 204
    assert rows_of(client, first) == [{"id": 1}, {"id": 2}]


def test_a_column_named_as_a_long_columns_old_identifier_is_its_own_column(client):
    long = "c" * 70
    lookalike = old_hashed_name(long)
    columns = [{"name": "id", "type": "integer"}, {"name": long}, {"name": lookalike}]
    create_dataset(client, "cols", columns, unique_key=["id"])
    push(client, "cols", [{"id": 1, long: "long", lookalike: "short"}])
    assert rows_of(client, "cols") == [{"id": 1, long: "long", lookalike: "short"}]
    other = "c" * 30 + "d" * 40  # shares the cut prefix of the new identifiers
    patched = client.patch("/v1/datasets/cols", json={"add_columns": [{"name": other}]})
    assert patched.status_code == 200, patched.text
    push(client, "cols", [{"id": 1, other: "other"}])
    assert rows_of(client, "cols") == [{"id": 1, long: "long", lookalike: "short", other: "other"}]


def test_a_stray_table_with_a_datasets_name_is_neither_dropped_nor_used(store_settings):
    """Only PostgreSQL lets another process make a table next to pushbase's."""
    if "database_url" not in store_settings:
        pytest.skip("a PostgreSQL case")
    schema = store_settings["database_schema"]
    with make_client(store_settings) as client:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE TABLE "{schema}"."ds_stray" (v text)')
            conn.execute(f'INSERT INTO "{schema}"."ds_stray" VALUES (\'keep me\')')
        create_dataset(client, "stray", [{"name": "id", "type": "integer"}])
        push(client, "stray", [{"id": 1}])
        assert rows_of(client, "stray") == [{"id": 1}]
        assert client.delete("/v1/datasets/stray").status_code == 204
        with psycopg.connect(PG_URL) as conn:
            assert conn.execute(f'SELECT v FROM "{schema}"."ds_stray"').fetchall() == [("keep me",)]


# item 5: a store made by the previous release keeps working ---------------------------
def test_a_store_of_the_previous_release_is_migrated_and_its_datasets_work(tmp_path: Path):
    postgres_or_skip()
    schema = f"pbt_{secrets.token_hex(6)}"
    long_id = "L" * 64
    long_column = "x" * 70
    old_table = old_hashed_name(f"ds_{long_id}")
    try:
        with psycopg.connect(PG_URL, autocommit=True) as conn, conn.transaction():
            # Schema version 3, as the previous release left it, with two datasets.
            conn.execute(f'CREATE SCHEMA "{schema}"')
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute("CREATE TABLE _pb_version (version integer NOT NULL)")
            for version, statements in enumerate(MIGRATIONS[:3], start=1):
                for statement in statements:
                    assert isinstance(statement, str)
                    conn.execute(statement)
                conn.execute("INSERT INTO _pb_version VALUES (%s)", [version])
            for dataset_id, table, columns in (
                ("short", "ds_short", [{"name": "id", "type": "integer", "nullable": False}]),
                (long_id, old_table, [
                    {"name": "id", "type": "integer", "nullable": False},
                    {"name": long_column, "type": "string"},
                ]),
            ):  # fmt: skip
                doc = {
                    "id": dataset_id, "name": dataset_id, "columns": columns,
                    "unique_key": ["id"], "unknown_fields": "reject",
                    "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
                }  # fmt: skip
                conn.execute(
                    "INSERT INTO _pb_datasets VALUES (%s, %s)",
                    [dataset_id, orjson.dumps(doc).decode()],
                )
                extra = f', "{old_hashed_name(long_column)}" text' if len(columns) > 1 else ""
                conn.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY{extra})')
                conn.execute(f'INSERT INTO "{table}" (id) VALUES (1)')
        assert legacy_name(f"ds_{long_id}") == old_table

        settings = {"data_dir": tmp_path, "database_url": PG_URL, "database_schema": schema}
        with make_client(settings) as client:
            listed = {
                d["id"]: d["row_count"] for d in client.get("/v1/datasets").json()["datasets"]
            }
            assert listed == {"short": 1, long_id: 1}
            with psycopg.connect(PG_URL) as conn:  # keyed tables leave room for updates
                options = conn.execute(
                    "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'ds_short'",
                    [schema],
                ).fetchone()[0]
            assert options == [f"fillfactor={KEYED_FILLFACTOR}"]
            assert rows_of(client, long_id) == [{"id": 1, long_column: None}]
            push(client, long_id, [{"id": 1, long_column: "kept"}, {"id": 2}])
            assert rows_of(client, long_id) == [{"id": 1, long_column: "kept"},
                                                {"id": 2, long_column: None}]  # fmt: skip
            push(client, "short", [{"id": 2}])
            assert rows_of(client, "short") == [{"id": 1}, {"id": 2}]
            patched = client.patch("/v1/datasets/short", json={"add_columns": [{"name": "n"}]})
            assert patched.status_code == 200, patched.text
            # The id that an older release would have given the long id's table is free.
            create_dataset(client, old_table.removeprefix("ds_"), [{"name": "v"}])
            assert rows_of(client, long_id)[0] == {"id": 1, long_column: "kept"}
            assert client.delete(f"/v1/datasets/{long_id}").status_code == 204
            assert client.delete("/v1/datasets/short").status_code == 204
        with psycopg.connect(PG_URL) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema]
            ).fetchall()}  # fmt: skip
        assert old_table not in tables and "ds_short" not in tables
    finally:
        drop_schema(schema)


# item 10: PATCH and DELETE of one dataset at once ---------------------------------------
def test_patch_and_delete_at_once_leave_no_ghost(client):
    for round_ in range(24):
        dataset_id = f"race{round_}"
        create_dataset(client, dataset_id, [{"name": "id", "type": "integer"}], unique_key=["id"])
        push(client, dataset_id, [{"id": 1}])
        patch_body: dict[str, Any] = {"name": f"renamed {round_}"}
        if round_ % 2:
            patch_body["add_columns"] = [{"name": f"col{round_}"}]
        start = threading.Barrier(2)
        answers: dict[str, int] = {}

        def patch(
            body: dict[str, Any] = patch_body,
            name: str = dataset_id,
            start: threading.Barrier = start,
            answers: dict[str, int] = answers,
        ) -> None:
            start.wait()
            answers["patch"] = client.patch(f"/v1/datasets/{name}", json=body).status_code

        def delete(
            name: str = dataset_id,
            start: threading.Barrier = start,
            answers: dict[str, int] = answers,
        ) -> None:
            start.wait()
            answers["delete"] = client.delete(f"/v1/datasets/{name}").status_code

        threads = [threading.Thread(target=patch), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers["delete"] == 204, answers
        assert answers["patch"] in (200, 404), answers
        listed = client.get("/v1/datasets")
        assert listed.status_code == 200, listed.text
        assert dataset_id not in {d["id"] for d in listed.json()["datasets"]}
        assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404
        assert (
            client.post(f"/v1/datasets/{dataset_id}/records", json=[{"id": 2}]).status_code == 404
        )
    # Every id can be taken again: no table was left behind.
    create_dataset(client, "race1", [{"name": "id", "type": "integer"}])
    assert push(client, "race1", [{"id": 5}])["status"] == "succeeded"
    assert rows_of(client, "race1") == [{"id": 5}]


def test_concurrent_patches_keep_every_added_column(client):
    create_dataset(client, "both", [{"name": "id", "type": "integer"}], unique_key=["id"])
    names = [f"c{i}" for i in range(6)]
    start = threading.Barrier(len(names))
    answers: list[int] = []

    def patch(name: str) -> None:
        start.wait()
        body = {"add_columns": [{"name": name}]}
        answers.append(client.patch("/v1/datasets/both", json=body).status_code)

    threads = [threading.Thread(target=patch, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * len(names)
    columns = [c["name"] for c in client.get("/v1/datasets/both").json()["columns"]]
    assert columns[0] == "id" and sorted(columns[1:]) == names
    push(client, "both", [{"id": 1, **{name: name for name in names}}])
    assert rows_of(client, "both") == [{"id": 1, **{name: name for name in names}}]


def test_store_patch_after_drop_is_not_found_and_changes_nothing(client):
    create_dataset(client, "gone", [{"name": "id", "type": "integer"}])
    store = store_of(client)
    stale = store.get_dataset("gone")
    assert store.drop_dataset("gone")
    stale.name = "back from the dead"
    response = client.patch("/v1/datasets/gone", json={"name": "x"})
    assert response.status_code == 404
    with pytest.raises(Exception) as raised:
        store.update_dataset(stale, [])
    assert getattr(raised.value, "code", None) == "dataset_not_found"
    assert store.get_dataset("gone") is None
    assert client.get("/v1/datasets").json()["datasets"] == []


def test_the_list_survives_a_dataset_whose_table_is_gone(client):
    """A catalog entry without its table (as the race above could leave before)."""
    create_dataset(client, "kept", [{"name": "id", "type": "integer"}])
    create_dataset(client, "lost", [{"name": "id", "type": "integer"}])
    push(client, "kept", [{"id": 1}])
    store = store_of(client)
    if store.settings.database_url:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{store.schema}"')
            (table,) = conn.execute("SELECT tbl FROM _pb_datasets WHERE id = 'lost'").fetchone()
            conn.execute(f'DROP TABLE "{table}"')
    else:
        with store._cursor() as cur:
            cur.execute('DROP TABLE "ds_lost"')
    listed = client.get("/v1/datasets")
    assert listed.status_code == 200, listed.text
    assert [(d["id"], d["row_count"]) for d in listed.json()["datasets"]] == [
        ("kept", 1),
        ("lost", 0),
    ]
    assert client.delete("/v1/datasets/lost").status_code == 204
    assert client.get("/v1/datasets").status_code == 200


# item 9: a write that fails after adding columns ----------------------------------------
def test_a_rolled_back_evolve_leaves_the_catalog_unchanged(client):
    columns = [{"name": "id", "type": "integer"}]
    create_dataset(client, "ev", columns, unique_key=["id"], unknown_fields="evolve")
    push(client, "ev", [{"id": 1, "newcol1": "a"}])
    job = push(client, "ev", [{"id": 2, "newcol2": "b"}, {"id": 1}], method="insert", atomic="true")
    assert job["status"] == "failed", job
    names = [c["name"] for c in client.get("/v1/datasets/ev").json()["columns"]]
    assert names == ["id", "newcol1"]
    assert push(client, "ev", [{"id": 3, "newcol1": "c"}])["status"] == "succeeded"
    assert rows_of(client, "ev") == [{"id": 1, "newcol1": "a"}, {"id": 3, "newcol1": "c"}]
    job = push(client, "ev", [{"id": 4, "newcol2": "d"}])
    assert job["status"] == "succeeded" and job["stats"]["inserted"] == 1
    assert rows_of(client, "ev", id="4") == [{"id": 4, "newcol1": None, "newcol2": "d"}]


# item 12: reserved, odd and case-folded names ------------------------------------------
@pytest.mark.parametrize("name", ["xmin", "ctid", "tableoid", "cmin", "cmax", "xmax", "ROWID"])
def test_engine_reserved_column_names_are_refused(client, name):
    response = client.post("/v1/datasets", json={"id": "r", "columns": [{"name": name}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "reserved_column_name"
    response = client.post("/v1/datasets", json={"id": "r", "sample": {"a": 1, name: 2}})
    assert response.json()["error"]["code"] == "reserved_column_name"
    create_dataset(client, "r", [{"name": "a"}])
    response = client.patch("/v1/datasets/r", json={"add_columns": [{"name": name}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "reserved_column_name"


def test_an_evolve_push_never_adds_a_reserved_or_case_folded_column(client):
    columns = [{"name": "id", "type": "integer"}]
    create_dataset(client, "evr", columns, unique_key=["id"], unknown_fields="evolve")
    for record in ({"id": 1, "xmin": 5}, {"id": 2, "ID": 7}):
        job = push(client, "evr", [record])
        assert job["status"] in ("succeeded", "failed"), job
    assert [c["name"] for c in client.get("/v1/datasets/evr").json()["columns"]] == ["id"]
    assert push(client, "evr", [{"id": 3, "fine": "yes"}])["status"] == "succeeded"
    patched = client.patch("/v1/datasets/evr", json={"add_columns": [{"name": "more"}]})
    assert patched.status_code == 200, patched.text
    assert [r["id"] for r in rows_of(client, "evr")] == [3]


def test_a_dataset_stored_with_case_folded_twins_can_still_be_changed(store_settings):
    """An older release let `evolve` add `ID` next to `id` on PostgreSQL (DuckDB refused)."""
    if "database_url" not in store_settings:
        pytest.skip("a PostgreSQL case")
    with make_client(store_settings) as client:
        create_dataset(client, "twins", [{"name": "id", "type": "integer"}], unique_key=["id"])
        store = store_of(client)
        with psycopg.connect(PG_URL, autocommit=True) as conn, conn.transaction():
            conn.execute(f'SET search_path TO "{store.schema}"')
            (doc, table) = conn.execute(
                "SELECT doc, tbl FROM _pb_datasets WHERE id = 'twins'"
            ).fetchone()
            twin = {"name": "ID", "type": "string", "nullable": True}
            doc = orjson.loads(doc)
            doc["columns"].append(twin)
            conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "ID" text')
            conn.execute(
                "UPDATE _pb_datasets SET doc = %s WHERE id = 'twins'", [orjson.dumps(doc).decode()]
            )
        dataset = store.get_dataset("twins")
        added = Column(name="more")
        dataset.columns.append(added)
        store.update_dataset(dataset, [added])
        assert [c.name for c in store.get_dataset("twins").columns] == ["id", "ID", "more"]
        refused = client.patch("/v1/datasets/twins", json={"add_columns": [{"name": "MORE"}]})
        assert refused.json()["error"]["code"] == "duplicate_column"
        push(client, "twins", [{"id": 1, "ID": "x", "more": "y"}])
        assert rows_of(client, "twins") == [{"id": 1, "ID": "x", "more": "y"}]


def test_a_filter_on_a_column_with_a_percent_sign(client):
    columns = [{"name": "id", "type": "integer"}, {"name": "rate%"}, {"name": "%s"}]
    create_dataset(client, "pct", columns, unique_key=["id"])
    push(client, "pct", [{"id": 1, "rate%": "a", "%s": "x"}, {"id": 2, "rate%": "b"}])
    assert [r["id"] for r in rows_of(client, "pct", **{"rate%": "b"})] == [2]
    assert [r["id"] for r in rows_of(client, "pct", **{"%s": "x", "order_by": "rate%"})] == [1]


# metrics support -----------------------------------------------------------------------
def test_job_counts_by_status(client):
    create_dataset(client, "jc", [{"name": "id", "type": "integer"}], unique_key=["id"])
    push(client, "jc", [{"id": 1}])
    push(client, "jc", [{"id": 1}], method="insert", atomic="true")
    counts = store_of(client).job_counts()
    assert set(counts) == set(JobStatus)
    assert counts[JobStatus.succeeded] == 1 and counts[JobStatus.failed] == 1
    assert sum(counts.values()) == 2
