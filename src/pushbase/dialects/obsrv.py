"""Obsrv Data In — `/compat/obsrv` (DESIGN §5.2).

    POST {base}/v2/data/in/{dataset_id}
    {"id": "api.data.in", "ver": "v2", "ts": "...", "params": {"msgid": "..."}, "data": ...}

`data` is one event, an array of events, or an object holding an `events` array.
The envelope is checked the way Obsrv's JSON schema does, and a failure names the
rule as Obsrv does (`#required should have required property 'id'`). The dataset
is named by id or by name; `params.msgid` is the idempotency key. Every answer,
errors and authentication failures included, is Obsrv's response envelope.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from pushbase.api.deps import KeyDep, ServicesDep
from pushbase.api.responses import JSON
from pushbase.dialects.common import (
    dialect_route,
    openapi_body,
    read_json,
    spool_rows,
    writable,
)
from pushbase.errors import PushbaseError
from pushbase.ingest import Submission, submit
from pushbase.schema import WriteMethod

SOURCE = "obsrv"
API_ID = "api.data.in"
INVALID_INPUT = "DATA_INGESTION_INVALID_INPUT"

# Obsrv's own codes for what pushbase reports under another name.
_CODES = {
    "dataset_not_found": "DATASET_NOT_FOUND",
    "unauthorized": "UNAUTHORIZED",
    "invalid_key": "UNAUTHORIZED",
    "forbidden": "FORBIDDEN",
    "invalid_request": INVALID_INPUT,
    "invalid_payload": INVALID_INPUT,
    "internal_error": "INTERNAL_SERVER_ERROR",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def envelope(request: Request, status: str, response_code: str, result: dict) -> dict[str, Any]:
    params: dict[str, Any] = {"status": status}
    msgid = getattr(request.state, "obsrv_msgid", None)
    if msgid:
        params["msgid"] = msgid
    params["resmsgid"] = str(uuid.uuid4())
    return {
        "id": API_ID,
        "ver": "v2",
        "ts": _now(),
        "params": params,
        "responseCode": response_code,
        "result": result,
    }


def render_error(request: Request, exc: PushbaseError) -> JSON:
    body = envelope(request, "FAILED", HTTPStatus(exc.status).name, {})
    code = _CODES.get(exc.code, exc.code.upper())
    body["error"] = {"code": code, "message": exc.message, "trace": ""}
    return JSON(body, exc.status, exc.headers or None)


class Params(BaseModel):
    status: str
    msgid: str | None = None
    resmsgid: str


class ObsrvError(BaseModel):
    code: str
    message: str
    trace: str = ""


class ObsrvAnswer(BaseModel):
    id: str = API_ID
    ver: str = "v2"
    ts: str
    params: Params
    responseCode: str
    result: dict[str, Any]
    error: ObsrvError | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ObsrvAnswer} for status in (400, 401, 403, 404, 409, 413, 429, 500)
}
router = APIRouter(
    prefix="/compat/obsrv",
    tags=["compat: Obsrv"],
    route_class=dialect_route(render_error),
    responses=ERRORS,
)


class RequestParams(BaseModel):
    msgid: str


class DataIn(BaseModel):
    id: str = Field(API_ID, description="must be `api.data.in`")
    ver: str | None = "v2"
    ts: str | None = None
    params: RequestParams
    data: dict[str, Any] | list[dict[str, Any]] = Field(
        description='an event, an array of events, or {"events": [...]}'
    )


def invalid(message: str) -> PushbaseError:
    return PushbaseError("invalid_request", message, 400)


def _rule(path: str, message: str) -> PushbaseError:
    """A failed schema rule, worded as Obsrv words it: `<schemaPath> <message>`."""
    return invalid(f"#{path} {message}")


def validate_envelope(body: Any) -> tuple[str, list[Any]]:
    """(msgid, events) of a valid envelope; the first failing rule otherwise, as Obsrv reports.

    The rules are Obsrv's request schema, checked in the order its validator checks
    them: the body is an object; `id`, `params` and `data` are present; `id` is
    `api.data.in`; `ver` and `ts` are strings when given; `params` is an object with
    a string `msgid`; `data` is an object or an array of objects.
    """
    if not isinstance(body, dict):
        raise _rule("/type", "should be object")
    for name in ("id", "params", "data"):
        if name not in body:
            raise _rule("required", f"should have required property '{name}'")
    if not isinstance(body["id"], str):
        raise _rule("properties/id/type", "should be string")
    if body["id"] != API_ID:
        raise _rule("properties/id/enum", "should be equal to one of the allowed values")
    for name in ("ver", "ts"):
        if name in body and not isinstance(body[name], str):
            raise _rule(f"properties/{name}/type", "should be string")
    params = body["params"]
    if not isinstance(params, dict):
        raise _rule("properties/params/type", "should be object")
    if "msgid" not in params:
        raise _rule("properties/params/required", "should have required property 'msgid'")
    msgid = params["msgid"]
    if not isinstance(msgid, str):
        raise _rule("properties/params/properties/msgid/type", "should be string")
    data = body["data"]
    if isinstance(data, list):
        if not all(isinstance(event, dict) for event in data):
            raise _rule("properties/data/oneOf/1/items/type", "should be object")
        return msgid, data
    if not isinstance(data, dict):
        raise _rule("properties/data/oneOf", "should match exactly one schema in oneOf")
    if "events" in data:
        events = data["events"]
        if not isinstance(events, list):
            raise _rule("properties/data/properties/events/type", "should be array")
        if not all(isinstance(event, dict) for event in events):
            raise _rule("properties/data/properties/events/items/type", "should be object")
        return msgid, events
    return msgid, [data]


@router.post(
    "/v2/data/in/{dataset_id}",
    response_model=ObsrvAnswer,
    openapi_extra=openapi_body(DataIn.model_json_schema()),
)
async def data_in(dataset_id: str, request: Request, svc: ServicesDep, key: KeyDep):
    """Ingest events: upserted on a dataset with a unique key, appended otherwise."""
    # The path names the dataset: the key is judged whole before the body is read.
    dataset = await run_in_threadpool(writable, svc, key, dataset_id.strip())
    body = await read_json(request, svc, invalid)
    if isinstance(body, dict) and isinstance(body.get("params"), dict):
        msgid = body["params"].get("msgid")
        request.state.obsrv_msgid = msgid if isinstance(msgid, str) else None
    msgid, events = await run_in_threadpool(validate_envelope, body)
    method = WriteMethod.upsert if dataset.unique_key else WriteMethod.insert
    payload = await run_in_threadpool(spool_rows, svc, events)
    submission = Submission(dataset, method, payload, source=SOURCE, idempotency_key=msgid or None)
    job = await submit(svc, submission)
    result = {"message": "Data ingested successfully", "jobId": job.id}
    return JSON(envelope(request, "SUCCESS", "OK", result))
