"""Graphite Note Dataset API — `/compat/graphite` (DESIGN §5.4).

    POST {base}/api/dataset-fill      positional rows into an existing dataset, applied
                                      before the answer
    POST {base}/api/dataset-complete  the dataset's total row count

`insert-data` is a JSON array of rows in `columns` order, as a JSON string or,
with `compressed`, gzip+base64 of it; it reaches the core as those JSON bytes
(still gzipped when they came so) with the request's column order as the
positional column list. `append: false` is a replace (the dataset is emptied in
the same transaction), `append: true` an insert.

Answers are `{"data": {"status": "success", "details": {...}}}`; errors keep the
shape with `"status": "error"` and `details: {"code", "message"}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from pushbase.api.deps import KeyDep, ServicesDep
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope
from pushbase.decode import DecodeOptions
from pushbase.decode.formats import Inflater
from pushbase.dialects.common import (
    b64decode,
    dialect_route,
    openapi_body,
    read_json,
    require_scope,
    spool,
    usable,
    writable,
)
from pushbase.errors import PushbaseError
from pushbase.ingest import Services, Submission, submit
from pushbase.jobs.model import JobStatus
from pushbase.schema import ColumnType, Dataset, WriteMethod

SOURCE = "graphite"
_GZIP_MAGIC = b"\x1f\x8b"
_TIME_MARKS = set("HhisS:")  # a date format with any of these carries a time of day


def render_error(request: Request, exc: PushbaseError) -> JSON:
    details = {"code": exc.code, "message": exc.message}
    return JSON({"data": {"status": "error", "details": details}}, exc.status, exc.headers or None)


class ErrorDetails(BaseModel):
    code: str
    message: str


class ErrorData(BaseModel):
    status: str = "error"
    details: ErrorDetails


class GraphiteError(BaseModel):
    data: ErrorData


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": GraphiteError} for status in (400, 401, 403, 404, 413, 429, 500)
}
router = APIRouter(
    prefix="/compat/graphite/api",
    tags=["compat: Graphite Note"],
    route_class=dialect_route(render_error),
    responses=ERRORS,
)


class GraphiteColumn(BaseModel):
    name: str
    alias: str | None = None
    type: str = Field(description="dimension | measure")
    subtype: str = Field(description="text | date (dimension); numeric | number | integer")
    format: str | None = None


class FillRequest(BaseModel):
    user_code: str | None = Field(None, alias="user-code")
    dataset_code: str = Field(alias="dataset-code")
    columns: list[GraphiteColumn]
    insert_data: str = Field(
        alias="insert-data", description="JSON array of positional rows, or gzip+base64 of it"
    )
    append: bool = True
    compressed: bool = False


class CompleteRequest(BaseModel):
    user_code: str | None = Field(None, alias="user-code")
    dataset_code: str = Field(alias="dataset-code")


class Details(BaseModel):
    dataset_code: str = Field(alias="dataset-code")
    rows_count: int = Field(alias="rows-count")


class Data(BaseModel):
    status: str = "success"
    details: Details


class Answer(BaseModel):
    data: Data


def invalid(message: str) -> PushbaseError:
    return PushbaseError("invalid_request", message, 400)


def success(dataset_code: str, rows: int, **extra: Any) -> JSON:
    details = {"dataset-code": dataset_code, "rows-count": rows, **extra}
    return JSON({"data": {"status": "success", "details": details}})


def _dataset_code(body: Any) -> str:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    code = body.get("dataset-code")
    if not isinstance(code, str) or not code.strip():
        raise invalid("dataset-code is required")
    user = body.get("user-code")
    if user is not None and not isinstance(user, str):
        raise invalid("user-code must be a string")
    return code.strip()


def accepted_types(column: dict[str, Any]) -> set[ColumnType]:
    """The dataset column types a Graphite Note column type fits (DESIGN §5.4)."""
    kind = str(column.get("type") or "").strip().lower()
    subtype = str(column.get("subtype") or "").strip().lower()
    if kind == "dimension" and subtype in ("text", "string"):
        return {ColumnType.string}
    if kind == "dimension" and subtype in ("date", "datetime"):
        fmt = column.get("format")
        if subtype == "datetime" or (isinstance(fmt, str) and _TIME_MARKS & set(fmt)):
            return {ColumnType.datetime}
        return {ColumnType.date, ColumnType.datetime}
    if kind == "measure" and subtype in ("numeric", "number"):
        return {ColumnType.number}
    if kind == "measure" and subtype == "integer":
        return {ColumnType.integer}
    raise PushbaseError(
        "unsupported_column_type",
        f"column {column.get('name')!r}: type {kind or '-'}/{subtype or '-'} is not supported"
        " (dimension/text, dimension/date, measure/numeric, measure/integer)",
        400,
    )


def check_columns(columns: Any, dataset: Dataset) -> list[str]:
    """The dataset's names for the request's columns, in order; 400 naming any mismatch."""
    if not isinstance(columns, list) or not columns:
        raise invalid("columns is required: a non-empty array")
    names: list[str] = []
    for column in columns:
        if not isinstance(column, dict) or not isinstance(column.get("name"), str):
            raise invalid("each column needs a name")
        stored = dataset.find_column(column["name"])
        if stored is None:
            raise PushbaseError(
                "column_mismatch",
                f"column {column['name']!r} is not a column of dataset {dataset.id!r}"
                f" (its columns: {', '.join(c.name for c in dataset.columns)})",
                400,
                {"column": column["name"]},
            )
        if stored.name in names:
            raise invalid(f"column {stored.name!r} is listed twice")
        accepted = accepted_types(column)
        if stored.type not in accepted:
            wanted = " or ".join(sorted(t.value for t in accepted))
            raise PushbaseError(
                "column_mismatch",
                f"column {stored.name!r} is {column.get('type')}/{column.get('subtype')}"
                f" ({wanted}) but the dataset column is {stored.type.value}",
                400,
                {"column": stored.name},
            )
        names.append(stored.name)
    return names


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false")
    return value


def insert_bytes(svc: Services, text: Any, compressed: bool) -> tuple[bytes, str | None]:
    """(payload bytes, content encoding): the JSON text, or the gzip it was sent as.

    The gzip stream is checked through the inflate limit here, as the native intake
    does, so a bad or oversized stream is a 400/413 now rather than a failed job.
    """
    if not isinstance(text, str) or not text.strip():
        raise invalid("insert-data is required: a JSON array of rows as a string")
    if not compressed:
        return text.encode("utf-8"), None
    try:
        data = b64decode(text)
    except ValueError as exc:
        raise invalid(f"insert-data is compressed but {exc}") from exc
    if not data.startswith(_GZIP_MAGIC):
        raise invalid("insert-data is compressed but is not gzip data")
    inflater = Inflater(svc.settings.max_inflated_bytes)
    inflater.feed(data, keep=False)
    inflater.finish()
    return data, "gzip"


@router.post(
    "/dataset-fill",
    response_model=Answer,
    openapi_extra=openapi_body(FillRequest.model_json_schema(by_alias=True)),
)
async def dataset_fill(request: Request, svc: ServicesDep, key: KeyDep):
    """Append (or, with `append: false`, replace) rows; answered once they are written."""
    require_scope(key, Scope.write)  # before the body is read
    body = await read_json(request, svc, invalid)
    code = _dataset_code(body)
    dataset = await run_in_threadpool(writable, svc, key, code, by_name=False)
    names = check_columns(body.get("columns"), dataset)
    append = _flag(body, "append", True)
    compressed = _flag(body, "compressed", False)
    data, encoding = await run_in_threadpool(insert_bytes, svc, body.get("insert-data"), compressed)
    payload = await run_in_threadpool(spool, svc, data, "application/json")
    payload.content_encoding = encoding
    method = WriteMethod.insert if append else WriteMethod.replace
    submission = Submission(
        dataset, method, payload, source=SOURCE, options=DecodeOptions(columns=names)
    )
    job = await submit(svc, submission, wait=svc.settings.max_wait_seconds)
    if job.status is JobStatus.succeeded:
        if job.stats.failed:
            return success(
                code, job.stats.inserted, **{"rows-failed": job.stats.failed, "errors": job.errors}
            )
        return success(code, job.stats.inserted)
    if job.status is JobStatus.failed and job.error is not None:
        status = 500 if job.error.code == "internal_error" else 400
        if job.error.code == "dataset_not_found":
            status = 404
        raise PushbaseError(job.error.code, job.error.message, status, {"job_id": job.id})
    if job.status is JobStatus.cancelled:
        raise PushbaseError("job_cancelled", "the fill was cancelled", 409, {"job_id": job.id})
    details = {"dataset-code": code, "job-id": job.id}
    return JSON({"data": {"status": "processing", "details": details}}, 202)


@router.post(
    "/dataset-complete",
    response_model=Answer,
    openapi_extra=openapi_body(CompleteRequest.model_json_schema(by_alias=True)),
)
async def dataset_complete(request: Request, svc: ServicesDep, key: KeyDep):
    """The end of a fill sequence: the dataset's total row count."""
    require_scope(key, Scope.write, Scope.read)
    body = await read_json(request, svc, invalid)
    code = _dataset_code(body)
    rows = await run_in_threadpool(_row_count, svc, key, code)
    return success(code, rows)


def _row_count(svc: Services, key: ApiKey, code: str) -> int:
    dataset = usable(svc, key, code, Scope.write, Scope.read, by_name=False)
    return svc.store.row_count(dataset.id)
