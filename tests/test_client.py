"""The Python client (`pushbase.Client`, `pushbase.AsyncClient`) against a real server.

Every input kind `push` accepts (dicts, pandas, polars, Arrow), batching with row errors
mapped back to input positions, idempotency, jobs, rows, export, keys, and the mapping of
every error status to its typed exception.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pushbase
from pushbase import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PushbaseError,
    QueueFull,
    RowsFailed,
    ServerError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from pushbase.client import error_from_response

try:
    from serverproc import ServerProcess, free_port
except ImportError:  # tests/ imported as a package
    from tests.serverproc import ServerProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PEOPLE = [
    {"name": "id", "type": "integer"},
    {"name": "name", "type": "string"},
    {"name": "score", "type": "number"},
    {"name": "active", "type": "boolean"},
    {"name": "born", "type": "date"},
    {"name": "seen", "type": "datetime"},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("client-server"), workers=2)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def pb(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, server.admin_key) as client:
        yield client


@pytest.fixture
def people(pb: Client, request: pytest.FixtureRequest) -> str:
    """A fresh keyed `people` dataset named after the test."""
    dataset_id = request.node.name.replace("[", "-").replace("]", "")[-60:].strip("_-")
    pb.datasets.create(dataset_id, columns=PEOPLE, unique_key=["id"])
    return dataset_id


def by_id(pb: Client, dataset: str) -> dict[int, dict]:
    return {r["id"]: r for r in pb.rows(dataset, limit=10000)["rows"]}


def test_import_is_light_and_exports_the_client() -> None:
    assert pushbase.Client is Client and pushbase.PushbaseError is PushbaseError
    assert issubclass(NotFound, PushbaseError) and issubclass(QueueFull, PushbaseError)
    code = "import sys, pushbase; print('httpx' in sys.modules, 'pushbase.client' in sys.modules)"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- every input kind ------------------------------------------------------------------


def test_push_list_of_dicts_waits_and_reports(pb: Client, people: str) -> None:
    rows = [
        {
            "id": 1,
            "name": "Ada",
            "score": 9.5,
            "active": True,
            "born": "1815-12-10",
            "seen": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        },
        {"id": 2, "name": "Linus", "score": None, "active": "no", "born": dt.date(1969, 12, 28)},
        {"id": "three", "name": "bad"},
    ]
    result = pb.push(people, rows, wait=True)
    assert result.finished and not result.ok
    assert (result.inserted, result.failed, result.batches) == (2, 1, 1)
    assert result.errors[0].row == 2 and result.errors[0].column == "id"
    assert result.errors[0].code == "invalid_value" and result.errors[0].location == "row 3"
    with pytest.raises(RowsFailed):
        result.raise_for_errors()
    stored = by_id(pb, people)
    assert stored[1]["seen"] == "2024-01-02T03:04:05Z" and stored[2]["born"] == "1969-12-28"
    assert stored[2]["active"] is False
    single = pb.push(people, {"id": 4, "name": "Grace"}, wait=10)
    assert single.ok and single.inserted == 1


def test_push_pandas_dataframe(pb: Client, people: str) -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "name": ["a", None, ""],
            "score": [1.5, float("nan"), 3.0],
            "active": [True, False, True],
            "born": pd.to_datetime(["2000-01-01", "2000-01-02", None]).date,
            "seen": pd.to_datetime(
                ["2024-05-06 07:08:09", None, "2024-05-06T07:08:09.5Z"], utc=True, format="ISO8601"
            ),
        }
    )
    result = pb.push(people, frame, wait=True)
    assert result.ok, result.errors
    assert result.inserted == 3
    stored = by_id(pb, people)
    assert stored[1]["name"] == "a" and stored[2]["name"] is None and stored[3]["name"] == ""
    assert stored[2]["score"] is None  # NaN is a missing value, not "nan"
    assert stored[3]["born"] is None and stored[1]["born"] == "2000-01-01"
    assert stored[1]["seen"] == "2024-05-06T07:08:09Z" and stored[2]["seen"] is None


def test_push_polars_dataframe_flat_and_nested(pb: Client, people: str) -> None:
    frame = pl.DataFrame(
        {
            "id": [1, 2],
            "name": ["x", "y"],
            "score": [0.25, None],
            "active": [None, True],
            "born": [dt.date(2020, 2, 29), None],
        }
    )
    assert pb.push(people, frame, wait=True).inserted == 2
    pb.datasets.create(f"{people}-n", sample={"id": 1, "tags": ["a"]}, unique_key=["id"])
    nested = pl.DataFrame({"id": [1, 2], "tags": [["a", "b"], []]})
    result = pb.push(f"{people}-n", nested, wait=True)
    assert result.ok and result.inserted == 2
    assert by_id(pb, f"{people}-n")[1]["tags"] == ["a", "b"]
    assert by_id(pb, people)[1]["born"] == "2020-02-29"


def test_push_arrow_table_and_record_batch_in_many_batches(pb: Client, people: str) -> None:
    count = 20_000
    ids = list(range(count))
    names = [f"name-{i}" if i % 5000 != 123 else None for i in ids]
    table = pa.table({"id": ids, "name": names, "score": [i / 8 for i in ids]})
    result = pb.push(people, table, wait=True, batch_bytes="32KB", concurrency=3)
    assert result.ok and result.inserted == count and result.batches > 5
    assert pb.datasets.get(people)["row_count"] == count
    # row errors come back with their position in the whole input, whichever batch held it
    bad = pa.table(
        {
            "id": pa.array([str(i) if i != 15_000 else "x" for i in ids]),
            "score": pa.array([1.0] * count),
        }
    )
    result = pb.push(people, bad.to_batches()[0], wait=True, batch_bytes="16KB")
    assert result.updated == count - 1 and result.failed == 1
    assert result.errors[0].row == 15_000 and result.errors[0].location == "row 15001"
    assert by_id(pb, people)[42]["score"] == 1.0


def test_push_file_and_export_round_trip(pb: Client, people: str, tmp_path: Path) -> None:
    source = tmp_path / "people.ndjson"
    source.write_bytes(
        b"".join(orjson.dumps({"id": i, "name": f"n{i}", "score": i}) + b"\n" for i in range(500))
    )
    result = pb.push_file(people, source, wait=True, batch_bytes="4KB")
    assert result.ok and result.inserted == 500 and result.batches > 3
    again = pb.push_file(people, source, wait=True, batch_bytes="4KB")
    assert again.job_ids == result.job_ids  # same file, same keys: the first jobs come back
    for fmt in ("csv", "ndjson", "parquet"):
        target = tmp_path / f"out.{fmt}"
        pb.export(people, fmt, path=target)
        assert target.stat().st_size > 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 500
    assert pb.export(people, "csv").count(b"\n") == 501
    buffer = io.BytesIO()
    pb.export(people, "ndjson", file=buffer)
    assert len(buffer.getvalue().splitlines()) == 500


# -- methods, idempotency, jobs, keys -------------------------------------------------------


def test_methods_idempotency_and_jobs(pb: Client, people: str) -> None:
    rows = [{"id": i, "name": f"n{i}"} for i in range(10)]
    first = pb.push(people, rows, idempotency_key="load-1")
    second = pb.push(people, rows, idempotency_key="load-1", wait=True)
    assert first.job_ids == second.job_ids and second.inserted == 10
    with pytest.raises(Conflict) as conflict:
        pb.push(people, rows[:3], idempotency_key="load-1")
    assert conflict.value.code == "idempotency_conflict" and conflict.value.status == 409

    job = pb.jobs.wait(first.job_ids[0], timeout=30)
    assert job["status"] == "succeeded" and job["idempotency_key"] == "load-1"
    assert pb.jobs.get(job["id"])["id"] == job["id"]
    assert job["id"] in [j["id"] for j in pb.jobs.list(dataset=people)]
    with pytest.raises(Conflict) as not_cancellable:
        pb.jobs.cancel(job["id"])
    assert not_cancellable.value.code == "job_not_cancellable"

    deleted = pb.push(people, [{"id": 1}, {"id": 99}], method="delete", wait=True)
    assert (deleted.deleted, deleted.not_found) == (1, 1)
    replaced = pb.push(people, [{"id": 7, "name": "only"}], method="replace", wait=True)
    assert replaced.inserted == 1 and pb.datasets.get(people)["row_count"] == 1
    emptied = pb.delete_all(people, wait=True)
    assert emptied["status"] == "succeeded" and pb.datasets.get(people)["row_count"] == 0


def test_datasets_and_keys(pb: Client, server: ServerProcess) -> None:
    inferred = pb.datasets.infer({"id": 1, "at": "2024-01-01T00:00:00Z", "a": {"b": True}})
    assert [(c["name"], c["type"]) for c in inferred] == [
        ("id", "integer"),
        ("at", "datetime"),
        ("a.b", "boolean"),
    ]
    created = pb.datasets.create("dk", sample={"id": 1, "v": "x"}, unique_key="id", name="DK")
    assert created["unique_key"] == ["id"] and created["name"] == "DK"
    assert "dk" in [d["id"] for d in pb.datasets.list()]
    changed = pb.datasets.update("dk", add_columns=[{"name": "extra", "type": "number"}])
    assert [c["name"] for c in changed["columns"]] == ["id", "v", "extra"]
    assert "push" in pb.datasets.instructions("dk")["commands"]
    assert pb.limits()["max_body_bytes"] > 0

    key = pb.keys.create("reader", ["read"], datasets=["dk"])
    assert key["key"].startswith("pb_") and key["id"] in [k["id"] for k in pb.keys.list()]
    with Client(server.url, key["key"]) as reader:
        assert [d["id"] for d in reader.datasets.list()] == ["dk"]
        with pytest.raises(Forbidden) as forbidden:
            reader.push("dk", [{"id": 1}])
        assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"
    pb.keys.revoke(key["id"])
    with Client(server.url, key["key"]) as revoked, pytest.raises(Unauthorized) as unauthorized:
        revoked.datasets.list()
    assert unauthorized.value.code == "invalid_key"
    pb.datasets.drop("dk")
    with pytest.raises(NotFound):
        pb.datasets.get("dk")


# -- errors --------------------------------------------------------------------------------


def test_server_errors_become_typed_exceptions(pb: Client, server: ServerProcess) -> None:
    with pytest.raises(NotFound) as missing:
        pb.datasets.get("nope")
    assert (missing.value.code, missing.value.status) == ("dataset_not_found", 404)
    assert "nope" in missing.value.message
    with pytest.raises(NotFound):
        pb.push("nope", [{"a": 1}])
    with pytest.raises(NotFound) as no_job:
        pb.jobs.get("job_missing")
    assert no_job.value.code == "job_not_found"
    with pytest.raises(BadRequest) as bad_id:
        pb.datasets.create("bad id!", columns=[{"name": "a", "type": "string"}])
    assert bad_id.value.code == "invalid_dataset_id" and bad_id.value.details
    pb.datasets.create("twice", columns=[{"name": "a", "type": "string"}])
    with pytest.raises(Conflict) as exists:
        pb.datasets.create("twice", columns=[{"name": "a", "type": "string"}])
    assert exists.value.code == "dataset_exists"
    with pytest.raises(ValidationError) as invalid:
        pb.datasets.create("v", columns=[{"name": "a", "type": "no-such-type"}])
    assert invalid.value.status == 422 and invalid.value.details["problems"]
    with Client(server.url, "wrong") as stranger, pytest.raises(Unauthorized):
        stranger.datasets.list()
    with Client(server.url, "") as anonymous, pytest.raises(Unauthorized) as no_key:
        anonymous.datasets.list()
    assert no_key.value.code == "unauthorized"
    nowhere = Client(f"http://127.0.0.1:{free_port()}", "k", retries=1, backoff=0.01)
    with nowhere, pytest.raises(ConnectionFailed) as unreachable:
        nowhere.datasets.list()
    assert unreachable.value.code == "connection_error"


def test_queue_full_is_retried_then_raised(tmp_path: Path) -> None:
    env = {"PUSHBASE_QUEUE_MAX_BYTES": "64"}
    small = ServerProcess(tmp_path / "data", workers=0, env=env)
    with small, Client(small.url, small.admin_key, retries=1) as client:
        client.datasets.create("q", columns=[{"name": "a", "type": "string"}])
        rows = [{"a": "x" * 100}]
        with pytest.raises(QueueFull) as full:
            client.push("q", rows)  # refused, retried once after Retry-After, refused again
        assert full.value.status == 429 and full.value.retry_after == 1.0
        assert full.value.code == "queue_full"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (415, UnsupportedMediaType),
        (422, ValidationError),
        (429, QueueFull),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_every_status_has_its_exception(status: int, cls: type[PushbaseError]) -> None:
    envelope = {"error": {"code": "some_code", "message": "why", "details": {"k": 1}}}
    error = error_from_response(httpx.Response(status, json=envelope))
    assert type(error) is cls and isinstance(error, PushbaseError)
    assert (error.code, error.message, error.status, error.details) == (
        "some_code",
        "why",
        status,
        {"k": 1},
    )
    bare = error_from_response(httpx.Response(status, text="<html>proxy</html>"))
    assert type(bare) is cls and bare.code == f"http_{status}" and "proxy" in bare.message


# -- asyncio -------------------------------------------------------------------------------


def test_async_client(server: ServerProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, server.admin_key) as pb:
            await pb.datasets.create("asy", columns=PEOPLE, unique_key=["id"])
            frame = pd.DataFrame({"id": range(3000), "name": [f"n{i}" for i in range(3000)]})
            result = await pb.push("asy", frame, wait=True, batch_bytes="8KB", concurrency=4)
            assert result.ok and result.inserted == 3000 and result.batches > 3
            bad = await pb.push("asy", [{"id": 1}, {"id": "x"}], wait=True)
            assert bad.failed == 1 and bad.errors[0].row == 1
            accepted = await pb.push("asy", pl.DataFrame({"id": [5000]}))
            job = await pb.jobs.wait(accepted.job_ids[0], timeout=30)
            assert job["stats"]["inserted"] == 1
            assert (await pb.rows("asy", limit=1))["total"] == 3001
            assert len(await pb.jobs.list(dataset="asy")) == result.batches + 2
            target = tmp_path / "asy.parquet"
            await pb.export("asy", "parquet", path=target)
            assert pq.read_table(target).num_rows == 3001
            source = tmp_path / "more.csv"
            source.write_text("id,name\n9001,a\n9002,b\n")
            assert (await pb.push_file("asy", source, wait=True)).inserted == 2
            with pytest.raises(NotFound):
                await pb.datasets.get("missing")
            emptied = await pb.delete_all("asy", wait=True)
            assert emptied["status"] == "succeeded"

    asyncio.run(scenario())
