"""Reading rows back: pages, order, filters, and streaming export (DESIGN §4)."""

from __future__ import annotations

import csv
import io

import orjson
import pyarrow.parquet as pq
import pytest

from conftest import create_dataset, push, rows_of

COLUMNS = [
    {"name": "id", "type": "integer"},
    {"name": "city"},
    {"name": "score", "type": "number"},
    {"name": "active", "type": "boolean"},
    {"name": "day", "type": "date"},
    {"name": "at", "type": "datetime"},
    {"name": "meta", "type": "json"},
]
ROWS = [
    {"id": i, "city": ["Oslo", "Rome", "Lima"][i % 3], "score": i / 2, "active": i % 2 == 0,
     "day": f"2024-01-{i + 1:02d}", "at": f"2024-01-01T00:00:{i:02d}Z", "meta": {"i": [i]}}
    for i in range(25)
]  # fmt: skip


@pytest.fixture
def filled(client):
    create_dataset(client, "t", COLUMNS, unique_key=["id"])
    push(client, "t", ROWS)
    return client


def test_rows_come_in_key_order_with_total_limit_and_offset(filled):
    body = filled.get("/v1/datasets/t/records", params={"limit": 10, "offset": 20}).json()
    assert body["total"] == 25 and body["limit"] == 10 and body["offset"] == 20
    assert [r["id"] for r in body["rows"]] == [20, 21, 22, 23, 24]
    assert body["rows"][0] == ROWS[20]


def test_order_by_one_or_more_columns(filled):
    rows = rows_of(filled, "t", order_by="-score", limit=3)
    assert [r["id"] for r in rows] == [24, 23, 22]
    rows = rows_of(filled, "t", order_by="city,-id", limit=4)
    assert [(r["city"], r["id"]) for r in rows] == [
        ("Lima", 23),
        ("Lima", 20),
        ("Lima", 17),
        ("Lima", 14),
    ]


def test_strings_sort_bytewise_on_every_store(client):
    create_dataset(client, "names", [{"name": "name", "type": "string"}], unique_key=["name"])
    push(client, "names", [{"name": n} for n in ["b", "é", "B", "a", "A", "Z", "10", "9"]])
    assert [r["name"] for r in rows_of(client, "names")] == [
        "10",
        "9",
        "A",
        "B",
        "Z",
        "a",
        "b",
        "é",
    ]


def test_equality_filters_are_typed(filled):
    assert [r["id"] for r in rows_of(filled, "t", city="Rome", active="true")] == [4, 10, 16, 22]
    assert [r["id"] for r in rows_of(filled, "t", id="7")] == [7]
    assert [r["id"] for r in rows_of(filled, "t", day="2024-01-03")] == [2]
    assert [r["id"] for r in rows_of(filled, "t", at="2024-01-01T00:00:05Z")] == [5]
    body = filled.get("/v1/datasets/t/records", params={"city": "Oslo", "limit": 2}).json()
    assert body["total"] == 9 and len(body["rows"]) == 2


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"nope": "1"}, 400, "unknown_column"),
        ({"order_by": "nope"}, 400, "unknown_column"),
        ({"id": "abc"}, 400, "invalid_filter"),
        ({"meta": "x"}, 400, "invalid_filter"),
        ({"limit": 10001}, 422, "validation_error"),
        ({"limit": -1}, 422, "validation_error"),
        ({"offset": "x"}, 422, "validation_error"),
    ],
)
def test_bad_reads_are_explained(filled, params, status, code):
    response = filled.get("/v1/datasets/t/records", params=params)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_export_ndjson_round_trips(filled):
    response = filled.get("/v1/datasets/t/export", params={"format": "ndjson"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert lines == ROWS


def test_export_csv_has_a_header_and_every_row(filled):
    response = filled.get("/v1/datasets/t/export", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert len(table) == 25
    assert table[3]["city"] == "Oslo" and table[3]["score"] == "1.5"
    assert table[3]["meta"] == '{"i":[3]}'
    assert table[3]["at"].startswith("2024-01-01T00:00:03")


def test_exported_csv_can_be_pushed_back(filled):
    exported = filled.get("/v1/datasets/t/export", params={"format": "csv"}).content
    create_dataset(filled, "copy", COLUMNS, unique_key=["id"])
    job = push(filled, "copy", exported, content_type="text/csv")
    assert job["stats"]["inserted"] == 25, job
    assert rows_of(filled, "copy") == ROWS


def test_export_parquet_is_a_typed_table(filled):
    response = filled.get("/v1/datasets/t/export", params={"format": "parquet"})
    table = pq.read_table(io.BytesIO(response.content))
    assert table.num_rows == 25
    assert str(table.schema.field("id").type) == "int64"
    assert str(table.schema.field("at").type).startswith("timestamp")
    assert table.column("city").to_pylist()[:3] == ["Oslo", "Rome", "Lima"]


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
def test_export_of_an_empty_dataset(client, fmt):
    create_dataset(client, "empty", COLUMNS)
    response = client.get("/v1/datasets/empty/export", params={"format": fmt})
    assert response.status_code == 200
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(response.content))
        assert table.num_rows == 0 and table.column_names == [c["name"] for c in COLUMNS]
    elif fmt == "csv":
        assert response.text.strip().split(",")[0] == '"id"'
    else:
        assert response.content == b""


def test_export_streams_a_large_dataset(client):
    create_dataset(client, "big", [{"name": "id", "type": "integer"}, {"name": "v"}])
    for start in range(0, 120_000, 40_000):
        push(client, "big", [{"id": i, "v": "x" * 10} for i in range(start, start + 40_000)])
    with client.stream("GET", "/v1/datasets/big/export", params={"format": "ndjson"}) as response:
        chunks = list(response.iter_bytes())
    assert len(chunks) > 1
    assert b"".join(chunks).count(b"\n") == 120_000


def test_unknown_export_format(filled):
    response = filled.get("/v1/datasets/t/export", params={"format": "xml"})
    assert response.status_code == 422
