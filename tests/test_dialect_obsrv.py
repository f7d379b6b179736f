"""Obsrv Data In dialect, `/compat/obsrv` (DESIGN §5.2), driven as an Obsrv client would.

Covers: the documented envelope (one event, an array, `{"events": [...]}`), the
dataset named by id or by name, upsert on a keyed dataset and append otherwise,
`params.msgid` as the idempotency key, the success envelope, every envelope rule
failing with Obsrv's wording, 404/401/403 in Obsrv's error envelope, and that an
Obsrv push leaves the same dataset and job as the same push through /v1.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from conftest import ADMIN_KEY, create_dataset, finished_job, push, rows_of

URL = "/compat/obsrv/v2/data/in"
MSGID = "e180ecac-8f41-4f21-9a21-0b3a1a368917"
EVENT = {
    "eid": "INTERACT",
    "ets": 1711966306164,
    "ver": "3.0",
    "mid": "INTERACT:4d7b4a6b9b7d1b7e2a2c3f6f",
    "actor": {"id": "f:5a8a3f2b-3409-42e0-9001-f913bc0fde31", "type": "User"},
    "context": {"channel": "01268904781886259221", "env": "home"},
    "edata": {"type": "CLICK", "id": "dashboard-load"},
}
EXAMPLE = {
    "id": "api.data.in",
    "ver": "v2",
    "ts": "1711966306164",
    "params": {"msgid": MSGID},
    "data": EVENT,
}
COLUMNS = [
    {"name": "mid", "type": "string"},
    {"name": "eid", "type": "string"},
    {"name": "ets", "type": "datetime"},
    {"name": "ver", "type": "string"},
    {"name": "actor.id", "type": "string"},
    {"name": "actor.type", "type": "string"},
    {"name": "context.channel", "type": "string"},
    {"name": "context.env", "type": "string"},
    {"name": "edata.type", "type": "string"},
    {"name": "edata.id", "type": "string"},
]
STORED = {
    "mid": EVENT["mid"],
    "eid": "INTERACT",
    "ets": "2024-04-01T10:11:46.164000Z",
    "ver": "3.0",
    "actor.id": EVENT["actor"]["id"],
    "actor.type": "User",
    "context.channel": "01268904781886259221",
    "context.env": "home",
    "edata.type": "CLICK",
    "edata.id": "dashboard-load",
}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def telemetry(client, dataset_id: str = "telemetry", keyed: bool = True, **extra: Any) -> str:
    unique_key = ["mid"] if keyed else []
    create_dataset(client, dataset_id, COLUMNS, unique_key=unique_key, **extra)
    return dataset_id


def envelope(data: Any = None, msgid: str = MSGID) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    body["params"]["msgid"] = msgid
    if data is not None:
        body["data"] = data
    return body


def event(n: int, **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(EVENT), "mid": f"INTERACT:{n}", **changes}


def data_in(client, dataset: str, body: Any, **headers: str):
    return client.post(f"{URL}/{dataset}", json=body, headers=headers or None)


def success(response, msgid: str = MSGID) -> str:
    """The job id of a success envelope, after checking the envelope field by field."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "ver", "ts", "params", "responseCode", "result"}, body
    assert (body["id"], body["ver"], body["responseCode"]) == ("api.data.in", "v2", "OK")
    assert TS.match(body["ts"]), body["ts"]
    assert set(body["params"]) == {"status", "msgid", "resmsgid"}
    assert body["params"]["status"] == "SUCCESS" and body["params"]["msgid"] == msgid
    assert re.fullmatch(r"[0-9a-f-]{36}", body["params"]["resmsgid"])
    assert set(body["result"]) == {"message", "jobId"}
    assert body["result"]["message"] == "Data ingested successfully"
    return body["result"]["jobId"]


def failure(response, status_code: int, response_code: str, code: str) -> str:
    """The error message of a failure envelope, after checking its exact shape."""
    assert response.status_code == status_code, response.text
    body = response.json()
    assert set(body) >= {"id", "ver", "ts", "params", "responseCode", "result", "error"}, body
    assert set(body) <= {"id", "ver", "ts", "params", "responseCode", "result", "error"}, body
    assert (body["id"], body["ver"]) == ("api.data.in", "v2")
    assert TS.match(body["ts"]), body["ts"]
    assert body["params"]["status"] == "FAILED"
    assert set(body["params"]) <= {"status", "msgid", "resmsgid"} and body["params"]["resmsgid"]
    assert body["responseCode"] == response_code
    assert body["result"] == {}
    assert set(body["error"]) == {"code", "message", "trace"}, body["error"]
    assert body["error"]["code"] == code and body["error"]["trace"] == ""
    return body["error"]["message"]


def new_key(client, scopes: list[str], datasets: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": "obsrv", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


# -- the documented call -------------------------------------------------------------------


def test_example_envelope_is_ingested_and_read_back(client):
    telemetry(client)
    job = finished_job(client, success(data_in(client, "telemetry", EXAMPLE)))
    assert job["status"] == "succeeded" and job["source"] == "obsrv"
    assert job["idempotency_key"] == MSGID and job["method"] == "upsert"
    assert job["stats"]["received"] == 1 and job["stats"]["inserted"] == 1
    assert rows_of(client, "telemetry") == [STORED]


def test_dataset_named_by_its_name(client):
    telemetry(client, name="Telemetry Events")
    job = finished_job(client, success(data_in(client, "Telemetry Events", EXAMPLE)))
    assert job["dataset_id"] == "telemetry" and job["status"] == "succeeded"
    assert rows_of(client, "telemetry") == [STORED]


def test_array_of_events(client):
    telemetry(client)
    events = [event(1), event(2, eid="IMPRESSION")]
    job = finished_job(client, success(data_in(client, "telemetry", envelope(events))))
    assert job["stats"]["inserted"] == 2
    assert [r["eid"] for r in rows_of(client, "telemetry", order_by="mid")] == [
        "INTERACT", "IMPRESSION",
    ]  # fmt: skip


def test_object_holding_an_events_array(client):
    telemetry(client)
    body = envelope({"events": [event(1), event(2), event(3)]})
    job = finished_job(client, success(data_in(client, "telemetry", body)))
    assert job["stats"]["inserted"] == 3
    assert len(rows_of(client, "telemetry")) == 3


def test_keyed_dataset_upserts(client):
    telemetry(client)
    finished_job(client, success(data_in(client, "telemetry", envelope([event(1)], "m1")), "m1"))
    changed = {"mid": "INTERACT:1", "eid": "START"}
    job = finished_job(client, success(data_in(client, "telemetry", envelope(changed, "m2")), "m2"))
    assert job["stats"]["updated"] == 1 and job["method"] == "upsert"
    (row,) = rows_of(client, "telemetry")
    assert row["eid"] == "START" and row["actor.type"] == "User"  # absent fields kept


def test_dataset_without_key_appends(client):
    telemetry(client, keyed=False)
    finished_job(client, success(data_in(client, "telemetry", envelope(msgid="m1")), "m1"))
    job = finished_job(client, success(data_in(client, "telemetry", envelope(msgid="m2")), "m2"))
    assert job["method"] == "insert"
    assert rows_of(client, "telemetry") == [STORED, STORED]


def test_row_errors_are_reported_on_the_job(client):
    telemetry(client)
    body = envelope([event(1), event(2, ets="yesterday"), event(3, extra="x")])
    job = finished_job(client, success(data_in(client, "telemetry", body)))
    assert job["status"] == "succeeded"
    assert job["stats"]["inserted"] == 1 and job["stats"]["failed"] == 2
    assert [(e["row"], e["column"], e["code"]) for e in job["errors"]] == [
        (1, "ets", "invalid_value"), (2, "extra", "unknown_column"),
    ]  # fmt: skip


# -- msgid is the idempotency key ----------------------------------------------------------


def test_repeated_msgid_returns_the_first_job_and_applies_nothing(client):
    telemetry(client, keyed=False)
    first = success(data_in(client, "telemetry", EXAMPLE))
    finished_job(client, first)
    again = success(data_in(client, "telemetry", EXAMPLE))
    assert again == first
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert rows_of(client, "telemetry") == [STORED]


def test_same_msgid_with_another_payload_is_409(client):
    telemetry(client)
    success(data_in(client, "telemetry", EXAMPLE))
    response = data_in(client, "telemetry", envelope([event(7)]))
    message = failure(response, 409, "CONFLICT", "IDEMPOTENCY_CONFLICT")
    assert "different payload" in message
    assert response.json()["params"]["msgid"] == MSGID


# -- the envelope rules --------------------------------------------------------------------


def _without(name: str) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    del body[name]
    return body


def _with(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(EXAMPLE), **fields}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_without("id"), "#required should have required property 'id'"),
        (_without("params"), "#required should have required property 'params'"),
        (_without("data"), "#required should have required property 'data'"),
        (_with(id="api.data.out"), "#properties/id/enum should be equal to one of the allowed"
         " values"),
        (_with(id=7), "#properties/id/type should be string"),
        (_with(ver=2), "#properties/ver/type should be string"),
        (_with(ts=1711966306164), "#properties/ts/type should be string"),
        (_with(params={}), "#properties/params/required should have required property 'msgid'"),
        (_with(params="m"), "#properties/params/type should be object"),
        (_with(params={"msgid": 5}), "#properties/params/properties/msgid/type should be string"),
        (_with(data="event"), "#properties/data/oneOf should match exactly one schema in oneOf"),
        (_with(data=[EVENT, 3]), "#properties/data/oneOf/1/items/type should be object"),
        (_with(data={"events": {}}), "#properties/data/properties/events/type should be array"),
        (_with(data={"events": ["e"]}),
         "#properties/data/properties/events/items/type should be object"),
        (["not", "an", "object"], "#/type should be object"),
    ],
    ids=[
        "no-id", "no-params", "no-data", "wrong-id", "id-not-string", "ver-not-string",
        "ts-not-string", "no-msgid", "params-not-object", "msgid-not-string", "data-string",
        "data-array-of-non-objects", "events-not-array", "events-of-non-objects", "body-array",
    ],
)  # fmt: skip
def test_invalid_envelope_is_400_naming_the_rule(client, body, message):
    telemetry(client)
    response = data_in(client, "telemetry", body)
    assert failure(response, 400, "BAD_REQUEST", "DATA_INGESTION_INVALID_INPUT") == message
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_failure_echoes_the_msgid_it_was_given(client):
    telemetry(client)
    response = data_in(client, "telemetry", _without("id"))
    failure(response, 400, "BAD_REQUEST", "DATA_INGESTION_INVALID_INPUT")
    assert response.json()["params"]["msgid"] == MSGID
    response = data_in(client, "telemetry", _without("params"))
    failure(response, 400, "BAD_REQUEST", "DATA_INGESTION_INVALID_INPUT")
    assert "msgid" not in response.json()["params"]


def test_body_that_is_not_json_is_400(client):
    telemetry(client)
    response = client.post(
        f"{URL}/telemetry",
        content=b'{"id": "api.data.in",',
        headers={"content-type": "application/json"},
    )
    message = failure(response, 400, "BAD_REQUEST", "DATA_INGESTION_INVALID_INPUT")
    assert "not valid JSON" in message


def test_unknown_dataset_is_404(client):
    response = data_in(client, "nope", EXAMPLE)
    message = failure(response, 404, "NOT_FOUND", "DATASET_NOT_FOUND")
    assert message == "dataset 'nope' does not exist"


# -- keys ----------------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_401_in_the_envelope(client):
    telemetry(client)
    client.headers.pop("x-api-key")
    message = failure(data_in(client, "telemetry", EXAMPLE), 401, "UNAUTHORIZED", "UNAUTHORIZED")
    assert "API key" in message
    response = data_in(client, "telemetry", EXAMPLE, Authorization="Bearer nope")
    failure(response, 401, "UNAUTHORIZED", "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


def test_both_key_headers_work(client):
    telemetry(client, keyed=False)
    client.headers.pop("x-api-key")
    success(data_in(client, "telemetry", envelope(msgid="a"), Authorization=f"Bearer {ADMIN_KEY}"),
            "a")  # fmt: skip
    success(data_in(client, "telemetry", envelope(msgid="b"), **{"x-api-key": ADMIN_KEY}), "b")


def test_scopes_are_403_in_the_envelope(client):
    telemetry(client)
    telemetry(client, "other")
    read = new_key(client, ["read"])
    limited = new_key(client, ["write"], datasets=["other"])
    for key, dataset in ((read, "telemetry"), (limited, "telemetry"), (limited, "missing")):
        response = data_in(client, dataset, EXAMPLE, **{"x-api-key": key})
        failure(response, 403, "FORBIDDEN", "FORBIDDEN")
    success(data_in(client, "other", EXAMPLE, **{"x-api-key": limited}))


def test_full_queue_is_429_in_the_envelope(make_server):
    server = make_server(workers=0, queue_max_bytes=600)
    telemetry(server)
    success(data_in(server, "telemetry", envelope([event(1), event(2)], "m1")), "m1")
    response = data_in(server, "telemetry", envelope([event(3), event(4)], "m2"))
    failure(response, 429, "TOO_MANY_REQUESTS", "QUEUE_FULL")
    assert response.headers["retry-after"] == "1"


# -- the same push through /v1 -------------------------------------------------------------


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    fields = ("method", "status", "stats", "errors", "errors_total", "error", "bytes")
    return {k: job[k] for k in fields}


def test_same_push_through_v1_leaves_the_same_dataset_and_job(client):
    telemetry(client, "via_obsrv")
    telemetry(client, "via_v1")
    events = [event(1), event(2, ets="not a time"), event(3, eid=None), event(1, eid="AGAIN")]
    dialect = finished_job(client, success(data_in(client, "via_obsrv", envelope(events))))
    native = push(client, "via_v1", events, "upsert", headers={"Idempotency-Key": MSGID})
    assert comparable(dialect) == comparable(native)
    assert dialect["stats"]["failed"] == 1
    assert (dialect["source"], native["source"]) == ("obsrv", "v1")
    assert dialect["idempotency_key"] == native["idempotency_key"] == MSGID
    assert rows_of(client, "via_obsrv", order_by="mid") == rows_of(client, "via_v1", order_by="mid")
