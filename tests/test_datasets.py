"""Datasets: create from columns or from a sample, list, show, change, drop (DESIGN §1, §4)."""

from __future__ import annotations

import secrets
import time

import pytest

from conftest import PG_URL, create_dataset, drop_schema, make_client, postgres_or_skip, push

USERS = [
    {"name": "id", "type": "integer"},
    {"name": "email", "type": "string"},
    {"name": "score", "type": "number"},
]


def test_create_from_columns_returns_the_dataset_document(client):
    doc = create_dataset(client, "users", USERS, name="Users", unique_key=["id"])
    assert doc["id"] == "users"
    assert doc["name"] == "Users"
    assert [c["name"] for c in doc["columns"]] == ["id", "email", "score"]
    assert doc["unique_key"] == ["id"]
    assert doc["unknown_fields"] == "reject"
    assert doc["row_count"] == 0
    assert doc["created_at"] and doc["updated_at"]
    key_column = doc["columns"][0]
    assert key_column["nullable"] is False  # key columns are never nullable


def test_create_from_a_sample_infers_types_flattens_and_never_guesses_a_key(client):
    sample = [
        {
            "id": 1,
            "name": "Ada",
            "score": 1,
            "active": True,
            "born": "1815-12-10",
            "seen": "2024-01-02T10:11:12Z",
            "address": {"city": "London", "geo": {"lat": 51.5}},
            "tags": ["a", "b"],
            "nothing": None,
        },
        {"id": 2, "score": 2.5},
    ]
    response = client.post("/v1/datasets", json={"id": "people", "sample": sample})
    assert response.status_code == 201, response.text
    columns = {c["name"]: c["type"] for c in response.json()["columns"]}
    assert columns == {
        "id": "integer",
        "name": "string",
        "score": "number",  # int and float mixed across samples
        "active": "boolean",
        "born": "date",
        "seen": "datetime",
        "address.city": "string",
        "address.geo.lat": "number",
        "tags": "json",
        "nothing": "string",
    }
    assert response.json()["unique_key"] == []


def test_schema_infer_proposes_columns_without_creating_anything(client):
    response = client.post("/v1/schema/infer", json={"sample": {"a": 1, "b": {"c": "x"}}})
    assert response.status_code == 200
    assert response.json()["columns"] == [
        {"name": "a", "type": "integer", "nullable": True, "format": None, "description": None},
        {"name": "b.c", "type": "string", "nullable": True, "format": None, "description": None},
    ]
    assert client.get("/v1/datasets").json() == {"datasets": []}


def test_an_id_is_generated_when_none_is_given(client):
    response = client.post("/v1/datasets", json={"columns": [{"name": "a"}]})
    assert response.status_code == 201
    generated = response.json()["id"]
    assert client.get(f"/v1/datasets/{generated}").status_code == 200


def test_list_and_show_carry_row_counts(client):
    create_dataset(client, "users", USERS, unique_key=["id"])
    create_dataset(client, "events", [{"name": "kind"}])
    push(client, "users", [{"id": 1}, {"id": 2}])
    listed = client.get("/v1/datasets").json()["datasets"]
    assert [(d["id"], d["row_count"]) for d in listed] == [("events", 0), ("users", 2)]
    assert client.get("/v1/datasets/users").json()["row_count"] == 2


def test_existing_id_is_a_conflict(client):
    create_dataset(client, "users", USERS)
    response = client.post("/v1/datasets", json={"id": "users", "columns": USERS})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "dataset_exists"


def test_patch_adds_columns_and_changes_settings(client):
    create_dataset(client, "users", USERS, unique_key=["id"])
    push(client, "users", [{"id": 1, "email": "a@x"}])
    response = client.patch(
        "/v1/datasets/users",
        json={
            "name": "All users",
            "description": "everyone",
            "unknown_fields": "ignore",
            "add_columns": [{"name": "city"}, {"name": "joined", "type": "date"}],
        },
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["name"] == "All users" and doc["description"] == "everyone"
    assert doc["unknown_fields"] == "ignore"
    assert [c["name"] for c in doc["columns"]][-2:] == ["city", "joined"]
    job = push(client, "users", [{"id": 2, "city": "Oslo", "joined": "2024-05-01", "x": 1}])
    assert job["stats"]["inserted"] == 1 and job["stats"]["ignored_fields"] == 1
    rows = client.get("/v1/datasets/users/records", params={"id": 1}).json()["rows"]
    assert rows == [{"id": 1, "email": "a@x", "score": None, "city": None, "joined": None}]


def test_patch_rejects_a_clashing_or_required_new_column(client):
    create_dataset(client, "users", USERS)
    clash = client.patch("/v1/datasets/users", json={"add_columns": [{"name": "EMAIL"}]})
    assert clash.status_code == 400
    assert clash.json()["error"]["code"] == "duplicate_column"
    required = client.patch(
        "/v1/datasets/users", json={"add_columns": [{"name": "x", "nullable": False}]}
    )
    assert required.status_code == 400
    assert required.json()["error"]["code"] == "invalid_column"


def test_drop_removes_the_dataset_and_its_rows(client):
    create_dataset(client, "users", USERS)
    push(client, "users", [{"id": 1}])
    assert client.delete("/v1/datasets/users").status_code == 204
    assert client.get("/v1/datasets/users").status_code == 404
    assert client.delete("/v1/datasets/users").status_code == 404
    create_dataset(client, "users", USERS)  # the id is free again, with no old rows
    assert client.get("/v1/datasets/users").json()["row_count"] == 0


def test_pushes_see_a_drop_or_a_recreated_dataset_at_once(client):
    """The push path may use a recent copy of a dataset, never one this server changed."""
    create_dataset(client, "users", USERS, unique_key=["id"])
    push(client, "users", [{"id": 1}])
    assert client.delete("/v1/datasets/users").status_code == 204
    gone = client.post("/v1/datasets/users/records", json=[{"id": 2}])
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "dataset_not_found"
    create_dataset(client, "users", USERS)  # the same id, now without a unique key
    keyless = client.post("/v1/datasets/users/records?method=delete", json=[{"id": 1}])
    assert keyless.status_code == 400
    assert keyless.json()["error"]["code"] == "no_unique_key"


def test_a_dataset_dropped_by_another_postgresql_process_refuses_pushes_within_a_second(
    tmp_path,
):
    postgres_or_skip()
    schema = f"pbt_{secrets.token_hex(6)}"
    shared = {"database_url": PG_URL, "database_schema": schema}
    try:
        with (
            make_client({"data_dir": tmp_path / "a", **shared}, workers=0) as pusher,
            make_client({"data_dir": tmp_path / "b", **shared}, workers=0) as admin,
        ):
            create_dataset(admin, "users", USERS, unique_key=["id"])
            accepted = pusher.post("/v1/datasets/users/records", json=[{"id": 1}])
            assert accepted.status_code == 202  # the pusher has now looked the dataset up
            assert admin.delete("/v1/datasets/users").status_code == 204
            dropped_at = time.monotonic()
            while (status := pusher.post("/v1/datasets/users/records", json=[{"id": 2}])
                   .status_code) != 404:  # fmt: skip
                assert status == 202
                assert time.monotonic() - dropped_at < 1.5, "pushes still accepted after 1.5 s"
                time.sleep(0.05)
    finally:
        drop_schema(schema)


@pytest.mark.parametrize(
    "dataset_id",
    ["", "-lead", "_lead", "a" * 65, "a b", "a;drop table x", "../etc", 'a"b', "é", "a.b"],
)
def test_dataset_ids_follow_the_naming_rule(client, dataset_id):
    response = client.post("/v1/datasets", json={"id": dataset_id, "columns": [{"name": "a"}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_dataset_id"


def test_dataset_ids_may_use_the_whole_alphabet(client):
    create_dataset(client, "A-b_9" + "x" * 59, [{"name": "a"}])


@pytest.mark.parametrize(
    ("columns", "unique_key", "code"),
    [
        ([{"name": ""}], [], "invalid_column_name"),
        ([{"name": "x" * 129}], [], "invalid_column_name"),
        ([{"name": "a\nb"}], [], "invalid_column_name"),
        ([{"name": "tab\there"}], [], "invalid_column_name"),
        ([{"name": "Name"}, {"name": "name"}], [], "duplicate_column"),
        ([{"name": "a"}], ["b"], "invalid_unique_key"),
        ([{"name": "a", "type": "json"}], ["a"], "invalid_unique_key"),
        ([{"name": "a"}], ["a", "a"], "invalid_unique_key"),
        ([{"name": "a", "type": "integer", "format": "%Y"}], [], "invalid_column"),
    ],
)
def test_column_rules_give_clear_errors(client, columns, unique_key, code):
    response = client.post(
        "/v1/datasets", json={"id": "t", "columns": columns, "unique_key": unique_key}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


def test_unknown_column_type_is_a_validation_error(client):
    response = client.post(
        "/v1/datasets", json={"id": "t", "columns": [{"name": "a", "type": "blob"}]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_hostile_column_names_are_quoted_never_spliced(client):
    names = ['a"; DROP TABLE x; --', "select", "a b", "ünï", "x" * 128, "o'brien", "1st"]
    create_dataset(client, "weird", [{"name": n} for n in names], unique_key=[names[0]])
    row = {n: f"v{i}" for i, n in enumerate(names)}
    job = push(client, "weird", [row])
    assert job["stats"]["inserted"] == 1, job
    stored = client.get("/v1/datasets/weird/records", params={names[0]: "v0"}).json()["rows"]
    assert stored == [row]


def test_instructions_give_runnable_commands_for_this_dataset(client):
    create_dataset(client, "users", USERS, unique_key=["id"])
    response = client.get("/v1/datasets/users/instructions")
    assert response.status_code == 200
    commands = response.json()["commands"]
    assert set(commands) >= {"push", "delete", "delete_all", "job_status"}
    assert "/v1/datasets/users/records" in commands["push"]
    assert "x-api-key" in commands["push"]
    assert "method=delete" in commands["delete"]
    assert commands["delete_all"].startswith("curl -X DELETE")
