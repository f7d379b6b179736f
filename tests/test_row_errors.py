"""Row-level errors all the way down (DESIGN §10.1, issue 20 items 1, 2, 8, 9, 12, 13).

One malformed record never costs the others; a job document is bounded and JSON-safe
whatever was pushed; user columns never meet the writer's helper columns; an `evolve`
push adds a bounded number of valid columns. Every test runs on DuckDB and PostgreSQL.
"""

from __future__ import annotations

import orjson
import pytest

from conftest import create_dataset, push, rows_of
from pushbase.jobs.model import JobError

NDJSON = "application/x-ndjson"
CSV = "text/csv"


def keyed(client, dataset_id: str = "t", **extra) -> None:
    columns = [{"name": "id", "type": "integer"}, {"name": "s"}]
    create_dataset(client, dataset_id, columns, unique_key=["id"], **extra)


def codes(job: dict) -> list[tuple[int, str]]:
    return [(e["row"], e["code"]) for e in job["errors"]]


# -- one malformed record costs only itself ------------------------------------------


def test_a_malformed_ndjson_line_fails_alone_and_later_rows_keep_their_index(client):
    keyed(client)
    body = (
        b'{"id": 1, "s": "a"}\n'
        b'{"id": 2, "s": \n'  # cut line
        b"\n"  # blank lines are not records
        b"[1, 2]\n"  # JSON, not an object
        b'{"id": 4, "s": "d"}\n'
        b'{"id": "x", "s": "e"}\n'  # a coercion error after the malformed ones
    )
    job = push(client, "t", body, content_type=NDJSON)
    assert job["status"] == "succeeded" and job["outcome"] == "partial"
    assert job["stats"]["received"] == 5
    assert job["stats"]["inserted"] == 2 and job["stats"]["failed"] == 3
    assert codes(job) == [(1, "malformed_row"), (2, "malformed_row"), (4, "invalid_value")]
    assert job["errors"][0]["value"] == '{"id": 2, "s": '
    assert job["errors"][1]["value"] == "[1, 2]"
    assert rows_of(client, "t", order_by="id") == [{"id": 1, "s": "a"}, {"id": 4, "s": "d"}]


def test_non_object_elements_of_a_json_array_are_malformed_rows(client):
    keyed(client)
    job = push(client, "t", [{"id": 1}, 5, "text", None, {"id": 2}], "insert")
    assert job["stats"]["received"] == 5 and job["stats"]["inserted"] == 2
    assert codes(job) == [(1, "malformed_row"), (2, "malformed_row"), (3, "malformed_row")]
    assert [e["value"] for e in job["errors"]] == ["5", '"text"', "null"]


def test_ragged_csv_records_fail_alone_and_indices_count_records_not_lines(client):
    keyed(client)
    body = (
        b"id,s\n"
        b'1,"two\nlines"\n'  # record 0 spans two lines
        b"2\n"  # record 1: too few fields
        b"\n"  # a blank line is no record
        b"3,c,extra\n"  # record 2: too many fields
        b'4,"d, quoted"\n'  # record 3
        b"x,e\n"  # record 4: a coercion error, index after the malformed ones
        b"6,f\n"  # record 5
    )
    job = push(client, "t", body, "insert", content_type=CSV)
    assert job["status"] == "succeeded" and job["outcome"] == "partial"
    assert job["stats"]["received"] == 6 and job["stats"]["inserted"] == 3
    assert codes(job) == [(1, "malformed_row"), (2, "malformed_row"), (4, "invalid_value")]
    assert [e["value"] for e in job["errors"][:2]] == ["2", "3,c,extra"]
    assert rows_of(client, "t", order_by="id") == [
        {"id": 1, "s": "two\nlines"},
        {"id": 4, "s": "d, quoted"},
        {"id": 6, "s": "f"},
    ]


def test_a_csv_record_of_invalid_utf8_fails_alone(client):
    keyed(client)
    body = b"id,s\n1,a\n2\n3,\xff\xfe\n4,\xe2\x82\xac\n5\x80\n6,f\n"
    job = push(client, "t", body, "insert", content_type=CSV)
    assert job["status"] == "succeeded" and job["outcome"] == "partial"
    assert job["stats"]["received"] == 6 and job["stats"]["inserted"] == 3
    assert codes(job) == [(1, "malformed_row"), (2, "malformed_row"), (4, "malformed_row")]
    assert job["errors"][1]["value"] == "3,\ufffd\ufffd"
    assert rows_of(client, "t", order_by="id") == [
        {"id": 1, "s": "a"},
        {"id": 4, "s": "\u20ac"},
        {"id": 6, "s": "f"},
    ]


def test_a_csv_malformed_record_under_upsert_keeps_the_stored_rows(client):
    keyed(client)
    push(client, "t", [{"id": 1, "s": "kept"}])
    job = push(client, "t", b"id,s\n1\n2,new\n", content_type=CSV)
    assert codes(job) == [(0, "malformed_row")]
    assert rows_of(client, "t", order_by="id") == [{"id": 1, "s": "kept"}, {"id": 2, "s": "new"}]


def test_a_csv_header_field_past_pythons_csv_limit_is_read(client):
    # Python's csv module refuses fields over 131,072 characters (`csv.Error`).
    create_dataset(client, "t", [{"name": "a"}], unknown_fields="ignore")
    long_name = "n" * 200_000
    job = push(client, "t", f"a,{long_name}\n1,2\n".encode(), content_type=CSV)
    assert job["status"] == "succeeded", job
    assert job["stats"]["ignored_fields"] == 1
    assert rows_of(client, "t") == [{"a": "1"}]


def test_every_record_malformed_is_outcome_rejected(client):
    keyed(client)
    job = push(client, "t", b"nope\n[]\n", content_type=NDJSON)
    assert job["status"] == "succeeded" and job["outcome"] == "rejected"
    assert job["stats"]["received"] == 2 and job["stats"]["failed"] == 2


def test_outcome_of_complete_and_failed_jobs(client):
    keyed(client)
    assert push(client, "t", [{"id": 1}])["outcome"] == "complete"
    failed = push(client, "t", b"[{", "insert")
    assert failed["status"] == "failed" and failed["outcome"] == "rejected"
    atomic = push(client, "t", [{"id": 2}, {"id": "x"}], "insert", atomic="true")
    assert atomic["status"] == "failed" and atomic["outcome"] == "rejected"


# -- JSON-safe, bounded job documents ----------------------------------------------------


def all_job_routes_answer(client, job_id: str, dataset_id: str) -> None:
    for path, params in [
        (f"/v1/jobs/{job_id}", {}),
        ("/v1/jobs", {}),
        ("/v1/jobs", {"dataset": dataset_id}),
    ]:
        response = client.get(path, params=params)
        assert response.status_code == 200, (path, response.text[:300])
        orjson.loads(response.content)


def test_values_no_json_encoder_takes_travel_as_text(client):
    create_dataset(client, "t", [{"name": "id", "type": "integer"}, {"name": "s"}])
    huge = b'[{"id": 99999999999999999999999, "s": "a"}, {"id": 1, "s": "b"}]'
    job = push(client, "t", huge, "insert")  # the answer to `wait` is a job document too
    assert codes(job) == [(0, "out_of_range")]
    assert isinstance(job["errors"][0]["value"], str | float)
    all_job_routes_answer(client, job["id"], "t")
    # Past what int() turns into text at all; no JSON reader here takes it as a number.
    digits = b"9" * 5000
    job = push(client, "t", b'{"id": ' + digits + b"}\n", content_type=NDJSON)
    assert codes(job) == [(0, "malformed_row")]
    all_job_routes_answer(client, job["id"], "t")
    job = push(client, "t", b"id,s\nnan,x\ninf,y\n" + digits + b",z\n", content_type=CSV)
    assert [e["code"] for e in job["errors"]] == ["invalid_value", "invalid_value", "out_of_range"]
    assert all(len(e["message"]) <= 200 and len(str(e["value"])) <= 200 for e in job["errors"])
    job = push(client, "t", b'{"id": 1, "s": "\\ud800"}\n{"id": "\\u0000"}\n', content_type=NDJSON)
    assert codes(job) == [(0, "malformed_row"), (1, "invalid_value")]
    assert job["errors"][1]["value"] == "\x00"
    all_job_routes_answer(client, job["id"], "t")


def test_a_job_stored_with_an_unencodable_error_still_renders(client):
    """Documents stored before errors were made safe may hold a huge integer."""
    keyed(client)
    job_id = push(client, "t", [{"id": 1}])["id"]
    store = client.app.state.services.store
    job = store.get_job(job_id)
    job.errors = [{"row": 0, "column": "id", "code": "out_of_range", "message": "m",
                   "value": 10**30}]  # fmt: skip
    store.fail_job(job, JobError(code="internal_error", message="x" * 100_000))
    all_job_routes_answer(client, job_id, "t")
    shown = client.get(f"/v1/jobs/{job_id}").json()
    assert shown["errors"][0]["value"] == str(10**30)
    assert len(shown["error"]["message"]) <= 1000


def test_row_errors_cut_long_names_and_values(client):
    keyed(client)
    names = [f"{i:03d}" + "n" * 50_000 for i in range(20)]
    records = [{"id": i, names[i]: "v" * 50_000} for i in range(20)]
    response = client.post(
        "/v1/datasets/t/records", params={"wait": 30}, content=orjson.dumps(records)
    )
    assert response.status_code == 200
    job = response.json()
    assert job["stats"]["failed"] == 20 and job["errors_total"] == 20
    for error in job["errors"]:
        assert error["code"] == "unknown_column"
        assert len(error["column"]) <= 200 and len(error["message"]) <= 200
        assert len(error["value"]) <= 200
    assert len(response.content) < 64 * 1024


def test_a_job_document_stays_under_its_size_cap(make_server):
    client = make_server(max_job_document_bytes=16 * 1024, max_row_errors=100)
    keyed(client)
    records = [{"id": i, "s": "ok", "x" * 150: "v" * 500} for i in range(100)]
    response = client.post(
        "/v1/datasets/t/records", params={"wait": 30}, content=orjson.dumps(records)
    )
    job = response.json()
    assert job["errors_total"] == 100 and job["stats"]["failed"] == 100
    assert 0 < len(job["errors"]) < 100
    assert len(client.get(f"/v1/jobs/{job['id']}").content) <= 16 * 1024


# -- reserved names: helper columns never meet user columns --------------------------------

HELPER_NAMES = ["__row", "_existed", "_first", "_bad", "j", "r", "o", "c0", "p0", "d0",
                "_stored", "n", "nj"]  # fmt: skip


@pytest.mark.parametrize("with_key", [True, False], ids=["keyed", "keyless"])
def test_columns_named_like_helper_columns_store_what_was_pushed(client, with_key):
    columns = [{"name": "k", "type": "integer"}] + [{"name": n} for n in HELPER_NAMES]
    create_dataset(client, "t", columns, unique_key=["k"] if with_key else [])

    def row(k: int, tag: str) -> dict:
        return {"k": k, **{n: f"{tag}-{n}" for n in HELPER_NAMES}}

    job = push(client, "t", [row(1, "a"), row(2, "a")], "insert")
    assert job["stats"]["inserted"] == 2 and not job["errors"], job["errors"]
    assert rows_of(client, "t", order_by="k") == [row(1, "a"), row(2, "a")]
    job = push(client, "t", [row(1, "b"), row(3, "b")], "upsert")
    assert not job["errors"], job["errors"]
    if with_key:  # an upsert merges, a partial record keeps the other fields
        push(client, "t", [{"k": 2, "_first": "partial", "j": None}], "upsert")
        expected = [row(1, "b"), {**row(2, "a"), "_first": "partial", "j": None}, row(3, "b")]
        assert rows_of(client, "t", order_by="k") == expected
        job = push(client, "t", [{"k": 2}, {"k": 9}], "delete")
        assert job["stats"]["deleted"] == 1 and job["stats"]["not_found"] == 1
        assert rows_of(client, "t", order_by="k") == [row(1, "b"), row(3, "b")]
    else:  # no key: upsert appends
        assert len(rows_of(client, "t")) == 4
    job = push(client, "t", [row(7, "c"), row(8, "c")], "replace")
    assert not job["errors"], job["errors"]
    assert rows_of(client, "t", order_by="k") == [row(7, "c"), row(8, "c")]


# -- evolve: valid names only, a bounded number per push -----------------------------------


def test_an_evolve_push_adds_at_most_its_share_of_columns(make_server):
    client = make_server(max_new_columns_per_push=3)
    keyed(client, unknown_fields="evolve")
    record = {"id": 1, **{f"f{i}": i for i in range(5)}}
    job = push(client, "t", [record, {"id": 2, "f0": 0}])
    assert job["status"] == "succeeded"
    assert codes(job) == [(0, "too_many_new_columns"), (0, "too_many_new_columns")]
    names = [c["name"] for c in client.get("/v1/datasets/t").json()["columns"]]
    assert names == ["id", "s", "f0", "f1", "f2"]
    assert rows_of(client, "t") == [{"id": 2, "s": None, "f0": 0, "f1": None, "f2": None}]


def test_evolve_refuses_fields_that_cannot_be_columns_as_row_errors(client):
    keyed(client, unknown_fields="evolve")
    job = push(client, "t", [{"id": 1, "ID": 5}, {"id": 2, "x" * 129: 1}, {"id": 3, "ok": 1}])
    assert job["status"] == "succeeded"
    assert codes(job) == [(0, "duplicate_column"), (1, "invalid_column_name")]
    names = [c["name"] for c in client.get("/v1/datasets/t").json()["columns"]]
    assert names == ["id", "s", "ok"]
    assert rows_of(client, "t") == [{"id": 3, "s": None, "ok": 1}]
    job = push(client, "t", [{"id": 4, "Ok": 1, "ID": 1, "new": "n"}, {"id": 5}])
    assert codes(job) == [(0, "duplicate_column"), (0, "duplicate_column")]
    assert [r["id"] for r in rows_of(client, "t", order_by="id")] == [3, 5]


def test_three_thousand_new_fields_add_the_bounded_number(client):
    keyed(client, unknown_fields="evolve")
    job = push(client, "t", [{"id": 1, **{f"f{i:04d}": i for i in range(3000)}}, {"id": 2}])
    assert job["stats"]["inserted"] == 1 and job["errors_total"] == 2900
    assert len(client.get("/v1/datasets/t").json()["columns"]) == 102


# -- records without fields --------------------------------------------------------------


def test_an_empty_record_in_a_keyless_dataset_is_a_row_of_nulls(client):
    create_dataset(client, "t", [{"name": "a"}, {"name": "b", "type": "integer"}])
    for method in ("insert", "upsert", "replace"):
        job = push(client, "t", [{}], method)
        assert job["status"] == "succeeded" and job["stats"]["inserted"] == 1, job
    assert rows_of(client, "t") == [{"a": None, "b": None}]
    create_dataset(client, "req", [{"name": "a"}, {"name": "b", "nullable": False}])
    assert codes(push(client, "req", [{}], "insert")) == [(0, "missing_value")]
    job = push(client, "req", [{}, {"b": "x"}], "insert")
    assert codes(job) == [(0, "null_not_allowed")]
    assert rows_of(client, "req") == [{"a": None, "b": "x"}]
