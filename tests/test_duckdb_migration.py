"""An embedded store written by an earlier release opens with every row (DESIGN §6).

Releases before schema 2 gave each keyed dataset table a PRIMARY KEY (an ART index);
since, keyed tables have no index and a hidden key hash column. The data directories
here are written the way those releases wrote them (the same DDL and catalog rows as
their `create_dataset`), then opened by today's server: the tables are rebuilt, every
row kept, and keys keep behaving as keys.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pushbase.schema import Column, Dataset
from pushbase.storage.duckdb import KEY_HASH, MIGRATIONS, key_hash
from pushbase.storage.sql import quote

try:
    from conftest import create_dataset, make_client, push, rows_of
except ImportError:  # tests/ imported as a package
    from tests.conftest import create_dataset, make_client, push, rows_of

OLD_TYPES = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "json": "VARCHAR",
}
PEOPLE = [
    {"name": "tenant", "type": "string"},
    {"name": "id", "type": "integer"},
    {"name": "name", "type": "string", "nullable": False},
    {"name": "born", "type": "date"},
    {"name": "score", "type": "number"},
    {"name": "seen", "type": "datetime"},
    {"name": "active", "type": "boolean"},
]
PEOPLE_ROWS = 3000


def old_create(db: duckdb.DuckDBPyConnection, dataset_id: str, columns: list[dict], key: list[str]):
    """What `create_dataset` of schema 1 ran: uncompressed key columns, a PRIMARY KEY."""
    now = datetime.now(UTC)
    dataset = Dataset(
        id=dataset_id, name=dataset_id, columns=[Column(**c) for c in columns],
        unique_key=key, created_at=now, updated_at=now,
    )  # fmt: skip
    ddl = []
    for column in dataset.columns:
        nullable = column.nullable and column.name not in key
        part = f'"{column.name}" {OLD_TYPES[column.type.value]}'
        if column.name in key:
            part += " USING COMPRESSION uncompressed"
        ddl.append(part if nullable else f"{part} NOT NULL")
    if key:
        ddl.append(f"PRIMARY KEY ({', '.join(quote(k) for k in key)})")
    db.execute(f'CREATE TABLE "ds_{dataset_id}" ({", ".join(ddl)})')
    doc = dataset.model_dump_json(exclude={"row_count"})
    db.execute("INSERT INTO _pb_datasets VALUES (?, ?)", [dataset_id, doc])


def person(i: int) -> dict[str, Any]:
    return {
        "tenant": f"t{i % 7}",
        "id": i,
        "name": f"name {i}",
        "born": date(1950 + i % 50, 1 + i % 12, 1 + i % 28).isoformat(),
        "score": i / 4,
        "seen": f"2024-03-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
        "active": i % 3 == 0,
    }


def old_store(data_dir: Path) -> None:
    """A data directory as schema 1 left it: catalog, three datasets, their rows."""
    data_dir.mkdir(parents=True)
    with duckdb.connect(str(data_dir / "pushbase.duckdb")) as db:
        db.execute("CREATE TABLE _pb_version (version INTEGER)")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO _pb_version VALUES (1)")
        old_create(db, "people", PEOPLE, ["tenant", "id"])
        db.execute(
            'INSERT INTO "ds_people" SELECT'
            " 't' || (i % 7), i, 'name ' || i, DATE '1950-01-01', i / 4,"
            " TIMESTAMP '2024-03-01 10:00:00', i % 3 = 0 FROM range(?) r(i)",
            [PEOPLE_ROWS],
        )
        # The exact values of `person(i)` for the first rows (the others are checked by count).
        for i in range(20):
            row = person(i)
            db.execute(
                'UPDATE "ds_people" SET born = ?, seen = ? WHERE tenant = ? AND id = ?',
                [row["born"], row["seen"].replace("T", " ").rstrip("Z"), row["tenant"], i],
            )
        # A column PATCH added later: nullable in storage, whatever its document says.
        db.execute('ALTER TABLE "ds_people" ADD COLUMN "note" VARCHAR')
        db.execute("UPDATE \"ds_people\" SET note = 'n' || id WHERE id < 10")
        doc = Dataset.model_validate_json(
            db.execute("SELECT doc FROM _pb_datasets WHERE id = 'people'").fetchone()[0]
        )
        doc.columns.append(Column(name="note", type="string"))
        db.execute(
            "UPDATE _pb_datasets SET doc = ? WHERE id = 'people'",
            [doc.model_dump_json(exclude={"row_count"})],
        )
        old_create(db, "log", [{"name": "line", "type": "string"}], [])
        db.execute("INSERT INTO \"ds_log\" SELECT 'line ' || i FROM range(500) r(i)")
        old_create(db, "empty", [{"name": "k", "type": "string"}], ["k"])


def layout(data_dir: Path) -> dict[str, Any]:
    with duckdb.connect(str(data_dir / "pushbase.duckdb"), read_only=True) as db:
        keys = db.execute(
            "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
            " AND table_name LIKE 'ds_%'"
        ).fetchall()
        hashed = db.execute(
            "SELECT table_name FROM duckdb_columns() WHERE column_name = ? ORDER BY 1", [KEY_HASH]
        ).fetchall()
        version = db.execute("SELECT max(version) FROM _pb_version").fetchone()[0]
        tables = db.execute(
            "SELECT table_name FROM duckdb_tables() WHERE table_name NOT LIKE '_pb%' ORDER BY 1"
        ).fetchall()
    return {
        "primary_keys": [t for (t,) in keys],
        "hashed": [t for (t,) in hashed],
        "version": version,
        "tables": [t for (t,) in tables],
    }


def test_a_store_of_the_previous_schema_opens_with_every_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_store(data)
    assert layout(data)["primary_keys"] == ["ds_empty", "ds_people"]
    with make_client(data) as server:
        assert server.get("/v1/datasets/people").json()["row_count"] == PEOPLE_ROWS
        assert server.get("/v1/datasets/log").json()["row_count"] == 500
        first = rows_of(server, "people", tenant="t0", limit=3)
        assert [(r["id"], r["name"], r["note"]) for r in first] == [
            (0, "name 0", "n0"), (7, "name 7", "n7"), (14, "name 14", None),
        ]  # fmt: skip
        assert first[0]["born"] == person(0)["born"] and first[0]["active"] is True
        # Keys are still keys, found among the migrated rows.
        insert = push(server, "people", [person(5), person(PEOPLE_ROWS)], method="insert")
        assert insert["stats"]["inserted"] == 1
        assert [e["code"] for e in insert["errors"]] == ["duplicate_key"]
        upsert = push(server, "people", [{"tenant": "t1", "id": 1, "score": -1.0}])
        assert (upsert["stats"]["inserted"], upsert["stats"]["updated"]) == (0, 1)
        deleted = push(server, "people", [{"tenant": "t2", "id": 2}], method="delete")
        assert deleted["stats"]["deleted"] == 1
        assert push(server, "empty", [{"k": "a"}, {"k": "a"}])["stats"]["updated"] == 1
        assert server.get("/v1/datasets/people").json()["row_count"] == PEOPLE_ROWS
        assert rows_of(server, "people", tenant="t1", id=1)[0] | {"score": 0} == person(1) | {
            "score": 0, "note": "n1"
        }  # fmt: skip
    after = layout(data)
    assert after["primary_keys"] == []
    assert after["hashed"] == ["ds_empty", "ds_people"]  # keyless tables need none
    assert after["version"] == len(MIGRATIONS)
    assert after["tables"] == ["ds_empty", "ds_log", "ds_people"]  # nothing left behind
    with make_client(data) as server:  # a second start changes nothing
        assert server.get("/v1/datasets/people").json()["row_count"] == PEOPLE_ROWS


def test_a_migration_cut_short_finishes_on_the_next_start(tmp_path: Path) -> None:
    """Each table is rebuilt in its own transaction: a crash between two leaves one
    table rebuilt, the version unrecorded; the next start rebuilds only the other."""
    data = tmp_path / "data"
    old_store(data)
    with duckdb.connect(str(data / "pushbase.duckdb")) as db:
        MIGRATIONS[1](db)  # the whole step ...
        db.execute("BEGIN")  # ... then one table back as schema 1 had it
        db.execute('DROP TABLE "ds_empty"')
        db.execute("DELETE FROM _pb_datasets WHERE id = 'empty'")
        old_create(db, "empty", [{"name": "k", "type": "string"}], ["k"])
        db.execute("INSERT INTO \"ds_empty\" VALUES ('kept')")
        db.execute("COMMIT")
    assert layout(data)["primary_keys"] == ["ds_empty"]
    with make_client(data) as server:
        assert server.get("/v1/datasets/people").json()["row_count"] == PEOPLE_ROWS
        assert rows_of(server, "empty") == [{"k": "kept"}]
        assert push(server, "empty", [{"k": "kept"}], method="insert")["stats"]["failed"] == 1
    assert layout(data)["primary_keys"] == []


def test_keys_hashed_by_another_duckdb_are_hashed_again(tmp_path: Path) -> None:
    """Stored rows are found by DuckDB's hash of their key: a DuckDB that hashes
    otherwise (a new release) must not miss them and store a key twice."""
    data = tmp_path / "data"
    with make_client(data) as server:
        create_dataset(server, "d", [{"name": "k", "type": "string"}], unique_key=["k"])
        push(server, "d", [{"k": f"k{i}"} for i in range(100)], method="insert")
    with duckdb.connect(str(data / "pushbase.duckdb")) as db:
        db.execute(f'UPDATE "ds_d" SET "{KEY_HASH}" = 0')  # as if another function made them
        db.execute("UPDATE _pb_meta SET value = 'another' WHERE key = 'key_hash'")
    with make_client(data) as server:
        job = push(server, "d", [{"k": f"k{i}"} for i in range(50, 150)])
        assert (job["stats"]["inserted"], job["stats"]["updated"]) == (50, 50)
        assert server.get("/v1/datasets/d").json()["row_count"] == 150


@pytest.mark.parametrize("method", ["insert", "upsert", "delete"])
def test_a_key_hash_collision_is_told_apart_by_the_key(tmp_path: Path, method: str) -> None:
    """The hash only gathers candidates: rows are matched on the key itself."""
    data = tmp_path / "data"
    with make_client(data) as server:
        create_dataset(server, "d", [{"name": "k", "type": "string"}], unique_key=["k"])
        push(server, "d", [{"k": "a"}, {"k": "b"}], method="insert")
    with duckdb.connect(str(data / "pushbase.duckdb")) as db:  # every stored hash alike
        dataset = Dataset.model_validate_json(
            db.execute("SELECT doc FROM _pb_datasets WHERE id = 'd'").fetchone()[0]
        )
        db.execute(f'UPDATE "ds_d" SET "{KEY_HASH}" = {key_hash(dataset, {"k": "$$c$$"})}')
    with make_client(data) as server:
        job = push(server, "d", [{"k": "c"}], method=method)
        want = {"insert": "inserted", "upsert": "inserted", "delete": "not_found"}[method]
        assert job["stats"][want] == 1, job
        assert sorted(r["k"] for r in rows_of(server, "d")) == (
            ["a", "b"] if method == "delete" else ["a", "b", "c"]
        )
