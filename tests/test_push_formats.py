"""Every body format a push accepts, plain or gzip (DESIGN §4)."""

from __future__ import annotations

import json

import orjson
import pytest

from conftest import create_dataset, push, rows_of

EXPECTED = [
    {"id": 1, "name": "Ada", "score": 1.5, "joined": "2024-01-02T03:04:05Z"},
    {"id": 2, "name": "Linus", "score": None, "joined": None},
]


@pytest.fixture
def people(client):
    create_dataset(
        client,
        "people",
        [
            {"name": "id", "type": "integer"},
            {"name": "name"},
            {"name": "score", "type": "number"},
            {"name": "joined", "type": "datetime"},
        ],
        unique_key=["id"],
    )
    return client


ARRAY = (
    b'[{"id": 1, "name": "Ada", "score": 1.5, "joined": "2024-01-02T03:04:05Z"},'
    b' {"id": 2, "name": "Linus"}]'
)
NDJSON = (
    b'{"id": 1, "name": "Ada", "score": 1.5, "joined": "2024-01-02T03:04:05Z"}\n'
    b"\n"
    b'{"id": 2, "name": "Linus"}\n'
)
CSV = b"id,name,score,joined\r\n1,Ada,1.5,2024-01-02T03:04:05Z\r\n2,Linus,,\r\n"

BODIES = {
    "json array": (ARRAY, "application/json"),
    "data envelope": (b'{"data": ' + ARRAY + b"}", "application/json"),
    "rows envelope": (b'{"rows": ' + ARRAY + b"}", "application/json"),
    "json with charset": (ARRAY, "application/json; charset=utf-8"),
    "ndjson": (NDJSON, "application/x-ndjson"),
    "ndjson no trailing newline": (NDJSON.rstrip(), "application/x-ndjson"),
    "csv comma": (CSV, "text/csv"),
    "csv semicolon": (CSV.replace(b",", b";"), "text/csv"),
    "csv tab": (CSV.replace(b",", b"\t"), "text/csv"),
    "csv pipe": (CSV.replace(b",", b"|"), "text/csv"),
    "csv with BOM": (b"\xef\xbb\xbf" + CSV, "text/csv; charset=utf-8"),
    "csv LF only": (CSV.replace(b"\r\n", b"\n"), "text/csv"),
}


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", list(BODIES))
def test_each_format_lands_the_same_rows(people, name, gzip):
    body, content_type = BODIES[name]
    job = push(people, "people", body, content_type=content_type, gzip=gzip)
    assert job["status"] == "succeeded", job
    assert job["stats"]["inserted"] == 2 and job["stats"]["failed"] == 0, job
    assert rows_of(people, "people") == EXPECTED


def test_csv_quoting_follows_rfc_4180(client):
    create_dataset(client, "notes", [{"name": "id", "type": "integer"}, {"name": "text"}])
    body = b'id,text\n1,"a, b"\n2,"she said ""hi"""\n3,"two\nlines"\n4,""\n5,\n6,"semi;colon"\n'
    job = push(client, "notes", body, content_type="text/csv")
    assert job["stats"]["inserted"] == 6, job
    assert [r["text"] for r in rows_of(client, "notes", order_by="id")] == [
        "a, b",
        'she said "hi"',
        "two\nlines",
        "",
        None,
        "semi;colon",
    ]


def test_csv_header_with_quoted_names_and_utf8(client):
    create_dataset(client, "t", [{"name": "full name"}, {"name": "ville"}])
    body = '"full name";ville\n"Zoë, B";Tromsø\n'.encode()
    job = push(client, "t", body, content_type="text/csv")
    assert job["stats"]["inserted"] == 1, job
    assert rows_of(client, "t") == [{"full name": "Zoë, B", "ville": "Tromsø"}]


def test_csv_values_are_coerced_from_text(client):
    create_dataset(
        client,
        "t",
        [
            {"name": "n", "type": "integer"},
            {"name": "b", "type": "boolean"},
            {"name": "d", "type": "date"},
        ],
    )
    job = push(
        client, "t", b"n,b,d\n1,yes,2024-01-01\nx,maybe,2024-13-01\n", content_type="text/csv"
    )
    assert job["stats"]["inserted"] == 1 and job["stats"]["failed"] == 1
    assert {(e["row"], e["column"]) for e in job["errors"]} == {(1, "n"), (1, "b"), (1, "d")}
    assert rows_of(client, "t") == [{"n": 1, "b": True, "d": "2024-01-01"}]


def test_csv_unknown_header_follows_the_dataset_policy(client):
    create_dataset(client, "t", [{"name": "a"}])
    job = push(client, "t", b"a,zzz\n1,2\n", content_type="text/csv")
    assert job["errors"][0]["code"] == "unknown_column" and job["errors"][0]["column"] == "zzz"


def test_a_ragged_csv_record_fails_alone(client):
    # DESIGN §10.1: a record with the wrong number of fields is a row error of its own.
    create_dataset(client, "t", [{"name": "a"}, {"name": "b"}])
    job = push(client, "t", b"a,b\n1,2\n3,4,5\n", content_type="text/csv")
    assert job["status"] == "succeeded" and job["outcome"] == "partial"
    assert [(e["row"], e["code"], e["value"]) for e in job["errors"]] == [
        (1, "malformed_row", "3,4,5")
    ]
    assert rows_of(client, "t") == [{"a": "1", "b": "2"}]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'[{"a": 1}', "application/json"),
        (b'{"data": 5}', "application/json"),
        (b"42", "application/json"),
        (b"\xff\xfe[]", "application/json"),
    ],
)
def test_undecodable_payloads_fail_the_job_with_invalid_payload(client, body, content_type):
    create_dataset(client, "t", [{"name": "a"}])
    job = push(client, "t", body, content_type=content_type)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_payload"
    assert job["error"]["message"]


def test_a_single_object_is_one_record(client):
    create_dataset(client, "t", [{"name": "a"}])
    job = push(client, "t", {"a": "x"})
    assert job["stats"]["inserted"] == 1


def test_corrupt_gzip_is_refused_at_once(client):
    create_dataset(client, "t", [{"name": "a"}])
    response = client.post(
        "/v1/datasets/t/records",
        content=b"\x1f\x8b\x08\x00garbage-not-deflate",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_payload"
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_a_body_of_several_mib_lands_whole_and_keeps_its_idempotency(people):
    """Bodies over 1 MiB are spilled to disk in pieces while they arrive; none is lost."""
    rows = [{"id": i, "name": f"person {i:07d} " + "x" * 40} for i in range(60_000)]
    body = orjson.dumps(rows)
    assert len(body) > 3 * 2**20

    def pieces(data: bytes):
        for start in range(0, len(data), 200_000):  # not a multiple of the spill size
            yield data[start : start + 200_000]

    def send(data: bytes):
        return people.post(
            "/v1/datasets/people/records",
            params={"method": "insert", "wait": 30},
            content=pieces(data),
            headers={"content-type": "application/json", "idempotency-key": "big-1"},
        )

    first = send(body)
    assert first.status_code == 200, first.text
    assert first.json()["stats"]["inserted"] == 60_000
    again = send(body)
    assert again.json()["id"] == first.json()["id"]
    for changed in (b"person 0000000", b"person 0059999"):  # in the spilled part, in the last
        response = send(body.replace(changed, b"person 0000007"))
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "idempotency_conflict"
    stored = rows_of(people, "people", limit=1, order_by="-id")
    assert stored == [{"id": 59_999, "name": "person 0059999 " + "x" * 40,
                       "score": None, "joined": None}]  # fmt: skip


def test_flat_records_and_the_same_records_enveloped_decode_alike(client):
    """An array of flat records of known fields takes a fast decoder; `{"data": [...]}`
    takes the general one. Values, row errors and stats must not tell them apart."""
    columns = [
        {"name": "id", "type": "integer"},
        {"name": "name"},
        {"name": "score", "type": "number"},
        {"name": "ok", "type": "boolean"},
        {"name": "at", "type": "datetime"},
        {"name": "must", "nullable": False},
    ]
    big = 123456789012345678901234567890  # beyond 64 bits: read as a float, like orjson
    rows = [
        {"id": 1, "name": "a", "score": 1, "ok": True, "at": "2024-01-01T00:00:00Z", "must": "x"},
        {"id": 2, "name": 5, "score": "2.5", "ok": "yes", "must": "y"},
        {"id": 3, "score": "abc", "must": "z"},
        {"id": None, "must": "w"},
        {"id": 4, "must": None},
        {"id": 5, "name": big, "score": big, "must": "q"},
        {"id": 6, "ok": 2, "at": "yesterday", "must": "r"},
    ]
    jobs = {}
    for dataset, body in (("flat", rows), ("wrapped", {"data": rows})):
        create_dataset(client, dataset, columns, unique_key=["id"])
        jobs[dataset] = push(client, dataset, json.dumps(body).encode())  # orjson: no big ints
    flat, wrapped = jobs["flat"], jobs["wrapped"]
    assert flat["stats"] == wrapped["stats"]
    assert flat["stats"]["inserted"] == 3 and flat["stats"]["failed"] == 4
    assert flat["errors"] == wrapped["errors"]
    assert [(e["row"], e["code"]) for e in flat["errors"]] == [
        (2, "invalid_value"),
        (3, "missing_key"),
        (4, "null_not_allowed"),
        (6, "invalid_value"),
        (6, "invalid_value"),
    ]
    stored = rows_of(client, "flat", order_by="id")
    assert stored == rows_of(client, "wrapped", order_by="id")
    assert [(r["id"], r["name"], r["score"], r["ok"]) for r in stored] == [
        (1, "a", 1.0, True),
        (2, "5", 2.5, True),
        (5, "1.2345678901234568e+29", float(big), None),
    ]
