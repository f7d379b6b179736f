"""insert, upsert, replace, delete and delete-all, case by case (DESIGN §2)."""

from __future__ import annotations

import threading

import orjson
import pytest

from conftest import create_dataset, finished_job, push, rows_of

COLUMNS = [
    {"name": "id", "type": "integer"},
    {"name": "name", "type": "string"},
    {"name": "city", "type": "string"},
    {"name": "visits", "type": "integer"},
]


def keyed(client, dataset_id="people"):
    create_dataset(client, dataset_id, COLUMNS, unique_key=["id"])
    return dataset_id


def test_insert_appends_rows(client):
    keyed(client)
    job = push(client, "people", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "insert")
    assert job["stats"] == {
        "received": 2, "inserted": 2, "updated": 0, "deleted": 0,
        "not_found": 0, "failed": 0, "ignored_fields": 0,
    }  # fmt: skip
    assert [r["id"] for r in rows_of(client, "people")] == [1, 2]


def test_insert_rejects_a_key_repeated_within_the_job(client):
    keyed(client)
    job = push(client, "people", [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "insert")
    assert job["status"] == "succeeded"
    assert job["stats"]["inserted"] == 1 and job["stats"]["failed"] == 1
    assert job["errors"][0]["row"] == 1 and job["errors"][0]["code"] == "duplicate_key"
    assert rows_of(client, "people") == [{"id": 1, "name": "a", "city": None, "visits": None}]


def test_insert_rejects_a_key_already_stored(client):
    keyed(client)
    push(client, "people", [{"id": 1, "name": "a"}], "insert")
    job = push(client, "people", [{"id": 2, "name": "b"}, {"id": 1, "name": "again"}], "insert")
    assert job["stats"]["inserted"] == 1 and job["stats"]["failed"] == 1
    assert job["errors"] == [
        {"row": 1, "column": "id", "code": "duplicate_key",
         "message": "key already exists", "value": None},
    ]  # fmt: skip
    assert [r["name"] for r in rows_of(client, "people")] == ["a", "b"]


def test_insert_without_a_key_allows_repeats(client):
    create_dataset(client, "log", [{"name": "msg"}])
    push(client, "log", [{"msg": "x"}, {"msg": "x"}], "insert")
    assert len(rows_of(client, "log")) == 2


# -- upsert: merge semantics ---------------------------------------------------


def test_upsert_inserts_new_keys(client):
    keyed(client)
    job = push(client, "people", [{"id": 1, "name": "a", "city": "Oslo"}])
    assert job["stats"]["inserted"] == 1
    assert rows_of(client, "people") == [{"id": 1, "name": "a", "city": "Oslo", "visits": None}]


def test_upsert_present_fields_overwrite(client):
    keyed(client)
    push(client, "people", [{"id": 1, "name": "a", "city": "Oslo", "visits": 1}])
    job = push(client, "people", [{"id": 1, "name": "b", "city": "Rome", "visits": 2}])
    assert job["stats"]["updated"] == 1 and job["stats"]["inserted"] == 0
    assert rows_of(client, "people") == [{"id": 1, "name": "b", "city": "Rome", "visits": 2}]


def test_upsert_absent_fields_keep_their_stored_value(client):
    keyed(client)
    push(client, "people", [{"id": 1, "name": "a", "city": "Oslo", "visits": 1}])
    push(client, "people", [{"id": 1, "visits": 2}])
    assert rows_of(client, "people") == [{"id": 1, "name": "a", "city": "Oslo", "visits": 2}]


def test_upsert_explicit_null_sets_null(client):
    keyed(client)
    push(client, "people", [{"id": 1, "name": "a", "city": "Oslo", "visits": 1}])
    push(client, "people", [{"id": 1, "city": None}])
    assert rows_of(client, "people") == [{"id": 1, "name": "a", "city": None, "visits": 1}]


def test_upsert_absent_and_null_differ_within_one_batch(client):
    keyed(client)
    push(client, "people", [{"id": i, "name": f"n{i}", "city": "Oslo"} for i in (1, 2)])
    push(client, "people", [{"id": 1, "city": None}, {"id": 2, "name": "renamed"}])
    assert rows_of(client, "people") == [
        {"id": 1, "name": "n1", "city": None, "visits": None},
        {"id": 2, "name": "renamed", "city": "Oslo", "visits": None},
    ]


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_upsert_a_record_after_complete_ones_may_omit_fields(client, content_type):
    keyed(client)
    push(client, "people", [{"id": 3, "name": "c", "city": "Oslo", "visits": 1}])
    records = [{"id": i, "name": f"n{i}", "city": "Rome", "visits": 0} for i in (1, 2)]
    records.append({"id": 3, "visits": 5})  # the only record without every field
    body = orjson.dumps(records)
    if content_type == "application/x-ndjson":
        body = b"\n".join(orjson.dumps(r) for r in records)
    job = push(client, "people", body, content_type=content_type)
    assert job["stats"]["inserted"] == 2 and job["stats"]["updated"] == 1
    assert rows_of(client, "people") == [
        {"id": 1, "name": "n1", "city": "Rome", "visits": 0},
        {"id": 2, "name": "n2", "city": "Rome", "visits": 0},
        {"id": 3, "name": "c", "city": "Oslo", "visits": 5},
    ]


def test_upsert_rows_of_one_key_apply_in_order_field_by_field(client):
    keyed(client)
    push(client, "people", [{"id": 1, "name": "stored", "city": "Oslo", "visits": 0}])
    job = push(
        client,
        "people",
        [
            {"id": 1, "name": "first", "visits": 1},
            {"id": 1, "city": "Rome"},
            {"id": 1, "visits": 3},
            {"id": 1, "name": None},
        ],
    )
    assert job["stats"]["updated"] == 4 and job["stats"]["failed"] == 0
    assert rows_of(client, "people") == [{"id": 1, "name": None, "city": "Rome", "visits": 3}]


def test_upsert_rows_of_a_new_key_fold_into_one_row(client):
    keyed(client)
    job = push(client, "people", [{"id": 7, "name": "a"}, {"id": 7, "city": "Oslo"}])
    assert job["stats"]["inserted"] == 1 and job["stats"]["updated"] == 1
    assert rows_of(client, "people") == [{"id": 7, "name": "a", "city": "Oslo", "visits": None}]


def test_upsert_nested_objects_merge_by_flattened_field(client):
    create_dataset(
        client, "geo", [{"name": "id", "type": "integer"}, {"name": "a.x"}, {"name": "a.y"}],
        unique_key=["id"],
    )  # fmt: skip
    push(client, "geo", [{"id": 1, "a": {"x": "1", "y": "2"}}])
    push(client, "geo", [{"id": 1, "a": {"y": "3"}}])
    assert rows_of(client, "geo") == [{"id": 1, "a.x": "1", "a.y": "3"}]


def test_upsert_on_a_dataset_without_key_appends(client):
    create_dataset(client, "log", [{"name": "msg"}])
    push(client, "log", [{"msg": "x"}])
    job = push(client, "log", [{"msg": "x"}])
    assert job["stats"]["inserted"] == 1
    assert len(rows_of(client, "log")) == 2


def test_upsert_new_row_missing_a_required_column_fails_alone(client):
    create_dataset(
        client,
        "strict",
        [{"name": "id", "type": "integer"}, {"name": "name", "nullable": False}, {"name": "x"}],
        unique_key=["id"],
    )
    push(client, "strict", [{"id": 1, "name": "a"}])
    job = push(client, "strict", [{"id": 1, "x": "kept name"}, {"id": 2, "x": "no name"}])
    assert job["stats"]["updated"] == 1 and job["stats"]["failed"] == 1
    assert job["errors"][0]["row"] == 1 and job["errors"][0]["code"] == "missing_value"
    assert rows_of(client, "strict") == [{"id": 1, "name": "a", "x": "kept name"}]


def test_twenty_unawaited_upserts_of_one_key_end_with_the_last(client):
    keyed(client)
    job_ids = []
    for version in range(20):
        response = client.post(
            "/v1/datasets/people/records",
            json=[{"id": 1, "visits": version, "name": f"v{version}"}],
        )
        assert response.status_code == 202
        job_ids.append(response.json()["job_id"])
    for job_id in job_ids:
        assert finished_job(client, job_id)["status"] == "succeeded"
    assert rows_of(client, "people") == [{"id": 1, "name": "v19", "city": None, "visits": 19}]


def test_jobs_of_one_dataset_apply_in_acceptance_order_across_methods(client):
    keyed(client)
    accepted = [
        client.post("/v1/datasets/people/records?method=insert", json=[{"id": 1, "name": "a"}]),
        client.post("/v1/datasets/people/records?method=delete", json=[{"id": 1}]),
        client.post("/v1/datasets/people/records?method=insert", json=[{"id": 1, "name": "b"}]),
        client.delete("/v1/datasets/people/records"),
        client.post("/v1/datasets/people/records", json=[{"id": 2, "name": "c"}]),
    ]
    jobs = [finished_job(client, r.json()["job_id"]) for r in accepted]
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    assert [j["stats"]["failed"] for j in jobs] == [0] * 5
    assert rows_of(client, "people") == [{"id": 2, "name": "c", "city": None, "visits": None}]


# -- replace ---------------------------------------------------------------------


def test_replace_leaves_exactly_the_jobs_valid_rows(client):
    keyed(client)
    push(client, "people", [{"id": i, "name": "old"} for i in range(5)])
    job = push(client, "people", [{"id": 10, "name": "new"}, {"id": "bad"}, {"id": 11}], "replace")
    assert job["stats"]["inserted"] == 2 and job["stats"]["deleted"] == 5
    assert job["stats"]["failed"] == 1
    assert [r["id"] for r in rows_of(client, "people")] == [10, 11]


def test_replace_never_shows_an_empty_dataset_to_a_reader(client):
    keyed(client)
    rows = [{"id": i, "name": "x"} for i in range(2000)]
    push(client, "people", rows)
    seen: list[int] = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            seen.append(client.get("/v1/datasets/people").json()["row_count"])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(8):
            push(client, "people", rows, "replace")
    finally:
        stop.set()
        reader.join()
    assert seen, "the reader never ran"
    assert set(seen) == {2000}


def test_replace_on_a_dataset_without_key(client):
    create_dataset(client, "log", [{"name": "msg"}])
    push(client, "log", [{"msg": "a"}, {"msg": "b"}])
    push(client, "log", [{"msg": "c"}], "replace")
    assert rows_of(client, "log") == [{"msg": "c"}]


# -- delete ----------------------------------------------------------------------


def test_delete_by_key_counts_deleted_and_not_found(client):
    keyed(client)
    push(client, "people", [{"id": i} for i in range(4)])
    job = push(client, "people", [{"id": 1, "name": "ignored"}, {"id": 3}, {"id": 99}], "delete")
    assert job["stats"]["deleted"] == 2 and job["stats"]["not_found"] == 1
    assert job["stats"]["failed"] == 0
    assert [r["id"] for r in rows_of(client, "people")] == [0, 2]


def test_delete_with_a_composite_key(client):
    create_dataset(
        client, "pairs",
        [{"name": "a"}, {"name": "b", "type": "integer"}, {"name": "v"}],
        unique_key=["a", "b"],
    )  # fmt: skip
    push(client, "pairs", [{"a": "x", "b": 1, "v": "1"}, {"a": "x", "b": 2, "v": "2"}])
    job = push(client, "pairs", [{"a": "x", "b": 2}, {"a": "y", "b": 1}], "delete")
    assert job["stats"]["deleted"] == 1 and job["stats"]["not_found"] == 1
    assert rows_of(client, "pairs") == [{"a": "x", "b": 1, "v": "1"}]


def test_delete_rows_missing_the_key_are_errors(client):
    keyed(client)
    push(client, "people", [{"id": 1}])
    job = push(client, "people", [{"name": "no key"}, {"id": 1}], "delete")
    assert job["stats"]["deleted"] == 1 and job["stats"]["failed"] == 1
    assert job["errors"][0]["code"] == "missing_key"


def test_delete_needs_a_unique_key(client):
    create_dataset(client, "log", [{"name": "msg"}])
    response = client.post("/v1/datasets/log/records?method=delete", json=[{"msg": "a"}])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_unique_key"


def test_delete_all_empties_the_dataset_as_a_job(client):
    keyed(client)
    push(client, "people", [{"id": i} for i in range(10)])
    response = client.delete("/v1/datasets/people/records", params={"wait": 10})
    assert response.status_code == 200
    job = response.json()
    assert job["method"] == "delete_all" and job["stats"]["deleted"] == 10
    assert rows_of(client, "people") == []


# -- atomic ----------------------------------------------------------------------


def test_atomic_job_with_a_bad_row_writes_nothing(client):
    keyed(client)
    job = push(client, "people", [{"id": 1}, {"id": "x"}], atomic="true")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "atomic_violation"
    assert job["errors"][0]["row"] == 1
    assert rows_of(client, "people") == []


def test_atomic_job_with_a_duplicate_stored_key_writes_nothing(client):
    keyed(client)
    push(client, "people", [{"id": 1}], "insert")
    job = push(client, "people", [{"id": 2}, {"id": 1}], "insert", atomic="true")
    assert job["status"] == "failed" and job["error"]["code"] == "atomic_violation"
    assert [r["id"] for r in rows_of(client, "people")] == [1]


def test_atomic_job_without_errors_is_applied(client):
    keyed(client)
    job = push(client, "people", [{"id": 1}, {"id": 2}], atomic="true")
    assert job["status"] == "succeeded" and job["stats"]["inserted"] == 2
