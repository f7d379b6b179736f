"""Qrvey Data Router dialect, `/compat/qrvey` (DESIGN §5.1), driven as a Qrvey client would.

Covers: the documented Post Data call (a three-record Users push on a dataset whose
unique ID is six columns) through upsert, insert and delete, delete-all data, the
status call's exact shape and status vocabulary, every error the dialect documents,
and that a Qrvey push leaves the same dataset and job as the same push through /v1.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import ADMIN_KEY, create_dataset, push, rows_of
from pushbase.dialects.qrvey import runtime, status_name
from pushbase.jobs.model import Job, JobError, JobPhase, JobStatus
from pushbase.schema import WriteMethod

BASE = "/compat/qrvey"
UNIQUE_ID = ["tenant_id", "region", "org_id", "department", "role", "user_id"]
USERS_COLUMNS = [
    {"name": "tenant_id", "type": "string"},
    {"name": "region", "type": "string"},
    {"name": "org_id", "type": "integer"},
    {"name": "department", "type": "string"},
    {"name": "role", "type": "string"},
    {"name": "user_id", "type": "integer"},
    {"name": "first_name", "type": "string"},
    {"name": "last_name", "type": "string"},
    {"name": "email", "type": "string"},
    {"name": "signup_date", "type": "date"},
    {"name": "active", "type": "boolean"},
    {"name": "address.city", "type": "string"},
    {"name": "tags", "type": "json"},
]
USERS = [
    {
        "tenant_id": "acme", "region": "eu", "org_id": 10, "department": "sales",
        "role": "manager", "user_id": 1, "first_name": "Ada", "last_name": "Lovelace",
        "email": "ada@acme.test", "signup_date": "2023-01-15", "active": True,
        "address": {"city": "London"}, "tags": [{"name": "vip"}],
    },
    {
        "tenant_id": "acme", "region": "eu", "org_id": 10, "department": "sales",
        "role": "rep", "user_id": 2, "first_name": "Grace", "last_name": "Hopper",
        "email": "grace@acme.test", "signup_date": "2023-02-01", "active": True,
        "address": {"city": "Paris"}, "tags": [],
    },
    {
        "tenant_id": "acme", "region": "us", "org_id": 20, "department": "it",
        "role": "admin", "user_id": 3, "first_name": "Alan", "last_name": "Turing",
        "email": "alan@acme.test", "signup_date": "2023-03-10", "active": False,
        "address": {"city": "Boston"}, "tags": [{"name": "ops"}, {"name": "oncall"}],
    },
]  # fmt: skip
FINAL = ("Complete", "ErrorExit", "TerminatedExit")


def users_dataset(client, dataset_id: str = "users") -> str:
    create_dataset(client, dataset_id, USERS_COLUMNS, unique_key=UNIQUE_ID)
    return dataset_id


def filling(added: int = 0, deleted: int = 0, failed: int = 0, updated: int = 0) -> dict:
    return {"added": added, "deleted": deleted, "failed": failed, "updated": updated}


def stored(record: dict[str, Any]) -> dict[str, Any]:
    """A Users record as the native API reads it back (nested object flattened)."""
    row = {k: v for k, v in record.items() if k != "address"}
    row["address.city"] = record["address"]["city"]
    return row


def post_data(client, dataset_id: str, data: Any, method: str | None = "upsert", **headers):
    body: dict[str, Any] = {"datasetId": dataset_id, "data": data}
    if method is not None:
        body["documentUpdateMethod"] = method
    return client.post(f"{BASE}/postdata", json=body, headers=headers or None)


def status(client, job_id: str) -> dict[str, Any]:
    response = client.get(f"{BASE}/{job_id}/status")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = status(client, job_id)
        if answer["statusJob"]["status"] in FINAL or time.monotonic() > deadline:
            return answer
        time.sleep(0.02)


def accepted(response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"jobId"}, body
    return body["jobId"]


def assert_qrvey_error(response, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    body = response.json()
    assert set(body) == {"message", "code"}, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["code"] == code, body
    return body


def new_key(client, scopes: list[str], datasets: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": "qrvey", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


# -- the documented calls ------------------------------------------------------------------


def test_users_example_upserted_and_read_back(client):
    users_dataset(client)
    job_id = accepted(post_data(client, "users", USERS))
    answer = wait_status(client, job_id)
    assert answer["statusJob"]["jobId"] == job_id
    assert answer["statusJob"]["status"] == "Complete"
    assert answer["statusJob"]["approximatePercentComplete"] == 100
    assert re.fullmatch(r"\d+h \d+m \d+s", answer["statusJob"]["runtime"])
    statistics = answer["jobCompletionStatistics"]
    pump = statistics["dataSourcePumpStatistics"]["users"]
    assert isinstance(pump.pop("pumpTimeSeconds"), int | float)
    assert pump == {"failed": 0, "read": 3, "successful": 3}
    assert statistics["fillingEsStatistics"] == filling(added=3)
    assert (statistics["failed"], statistics["successful"], statistics["updated"]) == (0, 3, 0)
    assert statistics["errors"] == []
    assert rows_of(client, "users", order_by="user_id") == [stored(u) for u in USERS]


def test_status_shape_is_exactly_qrveys(client):
    users_dataset(client)
    answer = wait_status(client, accepted(post_data(client, "users", USERS)))
    assert set(answer) == {"statusJob", "jobCompletionStatistics"}
    assert set(answer["statusJob"]) == {"jobId", "status", "approximatePercentComplete", "runtime"}
    statistics = answer["jobCompletionStatistics"]
    assert set(statistics) == {
        "dataSourcePumpStatistics", "failed", "fillingEsStatistics", "successful", "updated",
        "errors",
    }  # fmt: skip
    assert set(statistics["dataSourcePumpStatistics"]) == {"users"}
    assert set(statistics["dataSourcePumpStatistics"]["users"]) == {
        "failed", "pumpTimeSeconds", "read", "successful",
    }  # fmt: skip
    assert set(statistics["fillingEsStatistics"]) == {"added", "deleted", "failed", "updated"}


def test_upsert_merges_by_the_six_unique_id_columns(client):
    users_dataset(client)
    wait_status(client, accepted(post_data(client, "users", USERS)))
    change = {k: USERS[0][k] for k in UNIQUE_ID} | {"email": "ada@new.test"}
    newcomer = dict(USERS[1], role="intern", user_id=4)  # one key column differs: a new row
    answer = wait_status(client, accepted(post_data(client, "users", [change, newcomer])))
    statistics = answer["jobCompletionStatistics"]
    assert statistics["fillingEsStatistics"] == filling(added=1, updated=1)
    assert statistics["updated"] == 1 and statistics["successful"] == 1  # successful = added
    rows = rows_of(client, "users", order_by="user_id")
    assert len(rows) == 4
    assert rows[0] == stored(USERS[0]) | {"email": "ada@new.test"}  # absent fields kept
    assert rows[3] == stored(newcomer)


def test_default_method_is_upsert(client):
    users_dataset(client)
    wait_status(client, accepted(post_data(client, "users", USERS)))
    change = {k: USERS[2][k] for k in UNIQUE_ID} | {"active": True}
    answer = wait_status(client, accepted(post_data(client, "users", [change], method=None)))
    assert answer["jobCompletionStatistics"]["updated"] == 1
    assert rows_of(client, "users", user_id=3)[0]["active"] is True
    job = client.get(f"/v1/jobs/{answer['statusJob']['jobId']}").json()
    assert job["method"] == "upsert"


def test_insert_reports_a_known_key_as_a_failed_row(client):
    users_dataset(client)
    wait_status(client, accepted(post_data(client, "users", USERS[:1])))
    answer = wait_status(client, accepted(post_data(client, "users", USERS, method="insert")))
    assert answer["statusJob"]["status"] == "Complete"
    statistics = answer["jobCompletionStatistics"]
    assert statistics["failed"] == 1 and statistics["successful"] == 2
    assert statistics["fillingEsStatistics"]["added"] == 2
    assert statistics["dataSourcePumpStatistics"]["users"]["failed"] == 1
    assert [(e["row"], e["code"]) for e in statistics["errors"]] == [(0, "duplicate_key")]
    assert len(rows_of(client, "users")) == 3


def test_delete_by_the_unique_id_columns(client):
    users_dataset(client)
    wait_status(client, accepted(post_data(client, "users", USERS)))
    keys = [{k: USERS[1][k] for k in UNIQUE_ID}]
    answer = wait_status(client, accepted(post_data(client, "users", keys, method="delete")))
    statistics = answer["jobCompletionStatistics"]
    assert statistics["fillingEsStatistics"] == filling(deleted=1)
    assert [r["user_id"] for r in rows_of(client, "users", order_by="user_id")] == [1, 3]


def test_delete_all_data(client):
    users_dataset(client)
    wait_status(client, accepted(post_data(client, "users", USERS)))
    response = client.post(f"{BASE}/deletealldata", json={"datasetId": "users"})
    answer = wait_status(client, accepted(response))
    assert answer["statusJob"]["status"] == "Complete"
    assert answer["jobCompletionStatistics"]["fillingEsStatistics"]["deleted"] == 3
    assert rows_of(client, "users") == []
    job = client.get(f"/v1/jobs/{answer['statusJob']['jobId']}").json()
    assert (job["method"], job["source"]) == ("delete_all", "qrvey")


def test_job_is_a_native_job_with_source_qrvey(client):
    users_dataset(client)
    job_id = accepted(post_data(client, "users", USERS))
    wait_status(client, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["source"] == "qrvey" and job["dataset_id"] == "users"
    assert job["status"] == "succeeded" and job["stats"]["inserted"] == 3


# -- status vocabulary ---------------------------------------------------------------------


def test_queued_job_is_initializing_and_cancelled_is_terminated(make_server):
    server = make_server(workers=0)
    users_dataset(server)
    job_id = accepted(post_data(server, "users", USERS))
    answer = status(server, job_id)
    assert answer["statusJob"]["status"] == "Initializing"
    assert answer["statusJob"]["approximatePercentComplete"] == 0
    assert answer["jobCompletionStatistics"]["dataSourcePumpStatistics"]["users"] == {
        "failed": 0, "pumpTimeSeconds": 0, "read": 0, "successful": 0,
    }  # fmt: skip
    assert server.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert status(server, job_id)["statusJob"]["status"] == "TerminatedExit"


def _job(**fields: Any) -> Job:
    return Job(dataset_id="users", method=WriteMethod.upsert, **fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": JobStatus.queued}, "Initializing"),
        ({"status": JobStatus.running, "phase": JobPhase.decoding}, "PumpingDatasources"),
        ({"status": JobStatus.running, "phase": JobPhase.writing}, "FillingEs"),
        ({"status": JobStatus.succeeded}, "Complete"),
        ({"status": JobStatus.failed, "error": JobError(code="x", message="y")}, "ErrorExit"),
        ({"status": JobStatus.cancelled}, "TerminatedExit"),
    ],
    ids=["queued", "decoding", "writing", "succeeded", "failed", "cancelled"],
)
def test_status_names_follow_the_job_phase(fields, expected):
    assert status_name(_job(**fields)) == expected


def test_runtime_is_written_as_qrvey_writes_it():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert runtime(_job(created_at=start, finished_at=start + timedelta(seconds=11.8))) == (
        "0h 0m 11s"
    )
    assert runtime(_job(created_at=start, finished_at=start + timedelta(seconds=3725))) == (
        "1h 2m 5s"
    )


def test_failed_job_reports_error_exit_with_its_error(store_settings):
    from conftest import make_client

    with make_client(store_settings, workers=0) as server:
        users_dataset(server)
        job_id = accepted(post_data(server, "users", USERS))
        assert server.delete("/v1/datasets/users").status_code == 204
    with make_client(store_settings) as server:
        answer = wait_status(server, job_id)
        assert answer["statusJob"]["status"] == "ErrorExit"
        assert answer["statusJob"]["approximatePercentComplete"] == 100
        errors = answer["jobCompletionStatistics"]["errors"]
        assert errors == [{"code": "dataset_not_found", "message": "the dataset was dropped"}]


# -- errors --------------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_401(client):
    users_dataset(client)
    client.headers.pop("x-api-key")
    assert_qrvey_error(post_data(client, "users", USERS), 401, "unauthorized")
    response = post_data(client, "users", USERS, **{"x-api-key": "nope"})
    assert_qrvey_error(response, 401, "invalid_key")
    response = client.get(f"{BASE}/job_x/status", headers={"x-api-key": "nope"})
    assert_qrvey_error(response, 401, "invalid_key")


def test_bearer_key_is_accepted_too(client):
    users_dataset(client)
    client.headers.pop("x-api-key")
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    job_id = accepted(post_data(client, "users", USERS, **bearer))
    response = client.get(f"{BASE}/{job_id}/status", headers=bearer)
    assert response.status_code == 200, response.text


def test_scopes(client):
    users_dataset(client)
    users_dataset(client, "other")
    read, write = new_key(client, ["read"]), new_key(client, ["write"])
    limited = new_key(client, ["write"], datasets=["other"])
    assert_qrvey_error(post_data(client, "users", USERS, **{"x-api-key": read}), 403, "forbidden")
    response = client.post(
        f"{BASE}/deletealldata", json={"datasetId": "users"}, headers={"x-api-key": read}
    )
    assert_qrvey_error(response, 403, "forbidden")
    response = post_data(client, "users", USERS, **{"x-api-key": limited})
    assert_qrvey_error(response, 403, "forbidden")
    response = post_data(client, "missing", USERS, **{"x-api-key": limited})
    assert_qrvey_error(response, 403, "forbidden")
    job_id = accepted(post_data(client, "users", USERS, **{"x-api-key": write}))
    for key in (read, write):  # status needs read or write
        response = client.get(f"{BASE}/{job_id}/status", headers={"x-api-key": key})
        assert response.status_code == 200, response.text
    response = client.get(f"{BASE}/{job_id}/status", headers={"x-api-key": limited})
    assert_qrvey_error(response, 404, "job_not_found")  # not one of its datasets


def test_unknown_dataset_is_404(client):
    assert_qrvey_error(post_data(client, "nope", USERS), 404, "dataset_not_found")
    response = client.post(f"{BASE}/deletealldata", json={"datasetId": "nope"})
    assert_qrvey_error(response, 404, "dataset_not_found")


def test_unknown_job_is_404(client):
    assert_qrvey_error(client.get(f"{BASE}/job_nope/status"), 404, "job_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"data": USERS},
        {"datasetId": 7, "data": USERS},
        {"datasetId": "users", "documentUpdateMethod": "merge", "data": USERS},
        {"datasetId": "users", "documentUpdateMethod": "upsert"},
        {"datasetId": "users", "data": {"user_id": 1}},
        ["users"],
    ],
    ids=["no-dataset", "dataset-not-string", "bad-method", "no-data", "data-object", "array"],
)
def test_bad_request_body_is_400(client, body):
    users_dataset(client)
    assert_qrvey_error(client.post(f"{BASE}/postdata", json=body), 400, "invalid_request")
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_body_that_is_not_json_is_400(client):
    response = client.post(
        f"{BASE}/postdata", content=b'{"datasetId": "users", "data": [',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert_qrvey_error(response, 400, "invalid_request")
    assert_qrvey_error(client.post(f"{BASE}/deletealldata", content=b""), 400, "invalid_request")


def test_delete_needs_unique_id_columns(client):
    create_dataset(client, "log", [{"name": "msg"}])
    response = post_data(client, "log", [{"msg": "x"}], method="delete")
    assert_qrvey_error(response, 400, "no_unique_key")


def test_too_large_body_is_413(make_server):
    server = make_server(max_body_bytes=200)
    users_dataset(server)
    assert_qrvey_error(post_data(server, "users", USERS), 413, "payload_too_large")


def test_full_queue_is_429_with_retry_after(make_server):
    server = make_server(workers=0, queue_max_bytes=1500)
    users_dataset(server)
    accepted(post_data(server, "users", USERS))
    response = post_data(server, "users", USERS)
    assert_qrvey_error(response, 429, "queue_full")
    assert response.headers["retry-after"] == "1"


# -- the same push through /v1 -------------------------------------------------------------


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("method", "status", "stats", "errors", "errors_total", "error")}


@pytest.mark.parametrize("method", ["upsert", "insert"])
def test_same_push_through_v1_leaves_the_same_dataset_and_job(client, method):
    users_dataset(client, "via_qrvey")
    users_dataset(client, "via_v1")
    batch = [*USERS, dict(USERS[0], org_id="not a number", user_id=9), {"user_id": 5}]
    job_id = accepted(post_data(client, "via_qrvey", batch, method=method))
    wait_status(client, job_id)
    dialect_job = client.get(f"/v1/jobs/{job_id}").json()
    native_job = push(client, "via_v1", batch, method)
    assert comparable(dialect_job) == comparable(native_job)
    assert dialect_job["stats"]["failed"] == 2
    assert (dialect_job["source"], native_job["source"]) == ("qrvey", "v1")
    assert dialect_job["bytes"] == native_job["bytes"]
    order = ",".join(UNIQUE_ID)
    assert rows_of(client, "via_qrvey", order_by=order) == rows_of(client, "via_v1", order_by=order)
