"""PostgreSQL writes whose cost follows the batch, not the table (issue 21, spread keys).

The HTTP test runs on both backends (semantics of spread upserts and deletes in one group);
the others look at what PostgreSQL did: the table's fillfactor, and whether a write probed
the key index or scanned the whole table (`pg_stat_xact_user_tables`, this transaction only).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from conftest import (
    StoreFactory,
    create_dataset,
    finished_job,
    make_client,
    postgres_or_skip,
    push,
    rows_of,
)
from pushbase.decode import PayloadFormat, decode_payload
from pushbase.jobs.model import Job
from pushbase.schema import Dataset, WriteMethod
from pushbase.storage.postgres import PostgresWriter
from pushbase.storage.writer import Work

COLUMNS = [
    {"name": "tenant", "type": "string"},
    {"name": "id", "type": "integer"},
    {"name": "name", "type": "string"},
    {"name": "score", "type": "number"},
]
KEY = ["tenant", "id"]
LOADED = 3000


def _row(i: int, name: str = "v1") -> dict[str, Any]:
    return {"tenant": f"t{i % 7}", "id": i, "name": f"{name}-{i}", "score": i / 2}


def test_spread_upserts_and_deletes_in_one_group(client: TestClient) -> None:
    """Keys anywhere in the table, shuffled, over several jobs: each job's stats exact."""
    create_dataset(client, "spread", COLUMNS, unique_key=KEY)
    push(client, "spread", [_row(i) for i in range(LOADED)], "insert")
    rng = random.Random(21)
    existing = rng.sample(range(LOADED), 400)
    keys = existing + list(range(LOADED, LOADED + 400))
    rng.shuffle(keys)
    jobs = [
        client.post(
            "/v1/datasets/spread/records",
            params={"method": "upsert"},
            content=orjson.dumps([_row(i, "v2") for i in keys[start : start + 200]]),
            headers={"content-type": "application/json"},
        ).json()["job_id"]
        for start in range(0, len(keys), 200)
    ]
    old = set(existing)
    for n, job_id in enumerate(jobs):
        job = finished_job(client, job_id)
        part = keys[n * 200 : (n + 1) * 200]
        assert job["status"] == "succeeded", job
        assert job["stats"]["updated"] == sum(k in old for k in part)
        assert job["stats"]["inserted"] == sum(k not in old for k in part)
    gone = rng.sample(range(LOADED + 400), 300)
    deleted = push(client, "spread", [{"tenant": f"t{i % 7}", "id": i} for i in gone], "delete")
    assert deleted["stats"]["deleted"] == 300 and deleted["stats"]["not_found"] == 0
    again = push(client, "spread", [{"tenant": f"t{i % 7}", "id": i} for i in gone[:10]], "delete")
    assert again["stats"]["deleted"] == 0 and again["stats"]["not_found"] == 10
    stored = {r["id"]: r["name"] for r in rows_of(client, "spread")}
    expected = {i: f"v{2 if i in set(keys) else 1}-{i}" for i in range(LOADED + 400)}
    assert stored == {i: v for i, v in expected.items() if i not in set(gone)}


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    postgres_or_skip()
    stores = StoreFactory("postgres", tmp_path)
    settings = stores.new()
    with make_client(settings) as test_client:
        yield test_client, settings
    stores.cleanup()


def _table(settings: dict[str, Any], dataset_id: str) -> tuple[str, str]:
    with psycopg.connect(settings["database_url"]) as conn:
        conn.execute(f'SET search_path TO "{settings["database_schema"]}"')
        (table,) = conn.execute(
            "SELECT tbl FROM _pb_datasets WHERE id = %s", [dataset_id]
        ).fetchone()
        (options,) = conn.execute(
            "SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class"
            " WHERE oid = %s::regclass",
            [f'"{table}"'],
        ).fetchone()
    return table, options


def test_keyed_tables_leave_room_for_hot_updates(pg: tuple[TestClient, dict[str, Any]]) -> None:
    client, settings = pg
    create_dataset(client, "keyed", COLUMNS, unique_key=KEY)
    create_dataset(client, "log", COLUMNS)
    assert _table(settings, "keyed")[1] == "fillfactor=90"
    assert _table(settings, "log")[1] == ""  # appended only: no update needs the room


def _write(settings: dict[str, Any], dataset_id: str, method: WriteMethod, rows: list) -> dict:
    """Run one write with PostgresWriter and return how this transaction read the table."""
    client_doc = orjson.dumps(rows)
    with psycopg.connect(settings["database_url"]) as conn:
        conn.execute(f'SET search_path TO "{settings["database_schema"]}"')
        (doc, table) = conn.execute(
            "SELECT doc, tbl FROM _pb_datasets WHERE id = %s", [dataset_id]
        ).fetchone()
        dataset = Dataset.model_validate_json(doc) if isinstance(doc, str) else Dataset(**doc)
        batch = decode_payload(client_doc, PayloadFormat.json, False, dataset, method, 1 << 26)
        works = [Work(Job(dataset_id=dataset_id, method=method), batch)]
        writer = PostgresWriter(conn, dataset, works, f'"{table}"')
        (stats, errors), = writer.run(method)  # fmt: skip
        scans = conn.execute(
            "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relid = %s::regclass",
            [f'"{table}"'],
        ).fetchone()
        conn.rollback()
    return {"stats": stats, "errors": errors, "seq_scan": scans[0], "idx_scan": scans[1]}


@pytest.mark.parametrize(
    ("method", "make"),
    [
        ("upsert", lambda i: _row(i, "v2")),  # whole rows: one INSERT ... ON CONFLICT
        # some records omit a field (it keeps its stored value): the general merge
        ("upsert", lambda i: {"tenant": f"t{i % 7}", "id": i, **({"name": "x"} if i % 2 else {})}),
        ("delete", lambda i: {"tenant": f"t{i % 7}", "id": i}),
        ("insert", lambda i: _row(i)),  # the careful insert, after a conflict
    ],
)
def test_writes_probe_the_key_index(pg: tuple[TestClient, dict[str, Any]], method, make) -> None:
    """A write of staged keys looks each up in the index: hashing the whole table instead
    made spread upserts 3x slower at 10M rows than at 1M."""
    client, settings = pg
    create_dataset(client, "big", COLUMNS, unique_key=KEY)
    push(client, "big", [_row(i) for i in range(LOADED)], "insert")
    with psycopg.connect(settings["database_url"], autocommit=True) as conn:
        conn.execute(f'ANALYZE "{settings["database_schema"]}"."ds_big"')
    keys = random.Random(3).sample(range(LOADED * 2), 1500)
    rows = [make(i) for i in keys]
    if method == "delete":
        rows.append(rows[0])  # a repeated key: the general path, through the index too
    out = _write(settings, "big", WriteMethod(method), rows)
    assert out["seq_scan"] == 0, out
    assert out["idx_scan"] > 0
    existing = sum(k < LOADED for k in keys)
    if method == "delete":
        assert (out["stats"].deleted, out["stats"].not_found) == (existing, 1501 - existing)
    elif method == "insert":
        assert out["stats"].inserted == 1500 - existing and len(out["errors"]) == existing
    else:
        assert (out["stats"].updated, out["stats"].inserted) == (existing, 1500 - existing)
