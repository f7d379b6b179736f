"""D·engage DataSpace — `/compat/dengage` (DESIGN §5.3).

    POST   {base}/rest/dataspace/async/upsert   base64 CSV + columnMapping → {"jobId"}
    POST   {base}/rest/dataspace/sync/upsert    {"columns", "rows"} (≤ max_sync_rows), applied
    DELETE {base}/rest/dataspace/async/delete   base64 CSV of key columns → {"jobId"}
    GET    {base}/rest/dataspace/async/{jobId}  status, row counts, errors

The CSV goes to the core as it came, except for its header line: each
`fileColumnHeader` is renamed to its `tableColumn` (file columns no mapping names
are renamed to placeholders the decoder drops). A mapping without
`fileColumnHeader` is a constant column; `overwriteWithEmpty: false` (the
default) makes an empty cell keep the stored value.

Errors: 400 `{"code": 1, "message"}` (FieldError: a field of the request names
something wrong) or `{"code": 11, ...}` (ValidationFails: the content cannot be
used), 401 `{"message"}`, 403 `{"code": 10, ...}`, 404 `{"code": 1, ...}` (job),
413 `{"code": 11, ...}`, 429 `{"message"}`, 500 `{"code": 999, ...}`.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from pushbase.api.deps import KeyDep, ServicesDep
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope
from pushbase.decode import DecodeOptions
from pushbase.decode.coerce import CoerceError, coerce_value
from pushbase.decode.formats import sniff_delimiter
from pushbase.dialects.common import (
    b64decode,
    dialect_route,
    openapi_body,
    read_json,
    require_scope,
    spool,
    spool_rows,
    visible_job,
    writable,
)
from pushbase.errors import PushbaseError
from pushbase.ingest import Services, Submission, submit
from pushbase.jobs.model import Job, JobStatus
from pushbase.schema import Dataset, WriteMethod

SOURCE = "dengage"
FIELD_ERROR = 1
FORBIDDEN = 10
VALIDATION_FAILS = 11
UNEXPECTED_ERROR = 999
_BOM = b"\xef\xbb\xbf"
_FIELD_CODES = {"field_error", "invalid_dataset_id", "ambiguous_dataset_name", "job_not_found"}


def field_error(message: str) -> PushbaseError:
    return PushbaseError("field_error", message, 400)


def validation_fails(message: str) -> PushbaseError:
    return PushbaseError("validation_fails", message, 400)


def render_error(request: Request, exc: PushbaseError) -> JSON:
    body: dict[str, Any] = {"message": exc.message}
    if exc.status >= 500:
        body = {"code": UNEXPECTED_ERROR, "message": exc.message}
    elif exc.status == 403:
        body = {"code": FORBIDDEN, "message": exc.message}
    elif exc.status in (400, 404, 409, 413, 415):
        code = FIELD_ERROR if exc.code in _FIELD_CODES else VALIDATION_FAILS
        body = {"code": code, "message": exc.message}
    return JSON(body, exc.status, exc.headers or None)


class DengageError(BaseModel):
    code: int | None = Field(
        None, description="1 FieldError, 10 Forbidden, 11 ValidationFails, 999 UnexpectedError"
    )
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": DengageError} for status in (400, 401, 403, 404, 413, 429, 500)
}
router = APIRouter(
    prefix="/compat/dengage/rest/dataspace",
    tags=["compat: D·engage"],
    route_class=dialect_route(render_error),
    responses=ERRORS,
)


class ColumnMapping(BaseModel):
    tableColumn: str
    fileColumnHeader: str | None = Field(None, description="absent or null: a constant column")
    value: Any = Field(None, description="the constant, when fileColumnHeader is absent")


class AsyncRequest(BaseModel):
    tableId: str | None = None
    tableName: str | None = None
    jobName: str | None = None
    columnMapping: list[ColumnMapping]
    fileContent: str = Field(description="base64 of a CSV file with a header line, `;` or `,`")
    overwriteWithEmpty: bool = False


class SyncRequest(BaseModel):
    tableId: str | None = None
    tableName: str | None = None
    columns: list[str]
    rows: list[list[Any]] = Field(description='positional rows (or {"values": [...]} objects)')


class JobAnswer(BaseModel):
    jobId: str


class JobStatusAnswer(BaseModel):
    jobId: str
    jobName: str | None
    status: str = Field(description="Waiting | Processing | Completed | Failed")
    totalRowCount: int
    successRowCount: int
    errorRowCount: int
    errors: list[dict[str, Any]]


# -- the request ---------------------------------------------------------------------------


def _table(svc: Services, key: ApiKey, body: Any) -> Dataset:
    """The table named by `tableId` (a dataset id) or `tableName` (a name, else an id)."""
    if not isinstance(body, dict):
        raise validation_fails("the request body must be a JSON object")
    table_id, table_name = body.get("tableId"), body.get("tableName")
    for field, value in (("tableId", table_id), ("tableName", table_name)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise field_error(f"{field} must be a non-empty string")
    if table_id is None and table_name is None:
        raise field_error("tableId or tableName is required")
    try:
        if table_id is not None:
            return writable(svc, key, table_id.strip(), by_name=False)
        return writable(svc, key, table_name.strip())
    except PushbaseError as exc:
        if exc.code == "dataset_not_found":
            raise field_error(f"table {table_id or table_name!r} was not found") from exc
        raise


def _mapping(
    body: dict[str, Any], dataset: Dataset, required: list[str], what: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """(file header → table column, table column → constant), every `required` column mapped."""
    items = body.get("columnMapping")
    if not isinstance(items, list) or not items:
        raise field_error("columnMapping is required: a non-empty array")
    renames: dict[str, str] = {}
    constants: dict[str, Any] = {}
    mapped: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("tableColumn"), str):
            raise field_error("each columnMapping entry needs a tableColumn")
        column = dataset.find_column(item["tableColumn"].strip())
        if column is None:
            raise field_error(
                f"tableColumn {item['tableColumn']!r} is not a column of table {dataset.id!r}"
            )
        if column.name in mapped:
            raise field_error(f"tableColumn {column.name!r} is mapped more than once")
        mapped.add(column.name)
        header = item.get("fileColumnHeader")
        if header is None or (isinstance(header, str) and not header.strip()):
            value = item.get("value")
            if value is None and (not column.nullable or column.name in dataset.unique_key):
                raise field_error(f"column {column.name!r} needs a value; the constant is null")
            try:
                coerce_value(value, column)
            except CoerceError as exc:
                raise field_error(f"value of {column.name!r}: {exc.message}") from exc
            constants[column.name] = value
        elif not isinstance(header, str):
            raise field_error(f"fileColumnHeader of {column.name!r} must be a string")
        elif header.strip() in renames:
            raise field_error(f"fileColumnHeader {header!r} is mapped to two table columns")
        else:
            renames[header.strip()] = column.name
    missing = [name for name in required if name not in mapped]
    if missing:
        raise field_error(f"{what} must be mapped; missing: {', '.join(missing)}")
    return renames, constants


def _file(body: dict[str, Any]) -> bytes:
    content = body.get("fileContent")
    if not isinstance(content, str) or not content.strip():
        raise field_error("fileContent is required: the base64 of a CSV file")
    try:
        return b64decode(content)
    except ValueError as exc:
        raise validation_fails(f"fileContent is {exc}") from exc


def rename_header(data: bytes, renames: dict[str, str], taken: set[str]) -> tuple[bytes, list[str]]:
    """The CSV with only its header line rewritten: mapped headers become table columns,
    the others placeholders (returned, for the decoder to drop). Rows are not touched."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    end = data.find(b"\n")
    # A file that is only a header still needs its line end for the CSV reader.
    line, rest = (data, b"\n") if end < 0 else (data[:end], data[end:])
    eol = b"\r" if line.endswith(b"\r") else b""
    try:
        header = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise validation_fails("the file's header line is not UTF-8") from exc
    if not header.strip():
        raise validation_fails("the file must start with a header line")
    try:
        delimiter = sniff_delimiter(header)
        names = [name.strip() for name in next(csv.reader([header], delimiter=delimiter))]
    except csv.Error as exc:  # e.g. a field longer than the csv module's limit
        raise validation_fails(f"the file's header line cannot be read: {exc}") from exc
    if len(set(names)) != len(names):
        raise validation_fails("the file's header repeats a column")
    absent = [header for header in renames if header not in names]
    if absent:
        raise field_error(f"the file has no column {absent[0]!r} (fileColumnHeader)")
    taken = taken | set(renames.values())
    new_names: list[str] = []
    dropped: list[str] = []
    for name in names:
        if name in renames:
            new_names.append(renames[name])
            continue
        placeholder = f"__unmapped_{len(dropped)}"
        while placeholder in taken:
            placeholder = f"_{placeholder}"
        taken.add(placeholder)
        dropped.append(placeholder)
        new_names.append(placeholder)
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="").writerow(
        new_names
    )
    return out.getvalue().encode() + eol + rest, dropped


def _job_name(body: dict[str, Any]) -> str | None:
    name = body.get("jobName")
    if name is not None and not isinstance(name, str):
        raise field_error("jobName must be a string")
    return name or None


async def _file_job(request: Request, svc: Services, key: ApiKey, method_for: str) -> Job:
    require_scope(key, Scope.write)  # before the body is read
    body = await read_json(request, svc, validation_fails)
    # Decoding base64 and rewriting the header copy the whole file: not on the event loop.
    return await submit(svc, await run_in_threadpool(_file_submission, svc, key, body, method_for))


def _file_submission(svc: Services, key: ApiKey, body: Any, method_for: str) -> Submission:
    dataset = _table(svc, key, body)
    deleting = method_for == "delete"
    if deleting and not dataset.unique_key:
        raise validation_fails(f"table {dataset.id!r} has no primary key to delete by")
    if deleting:
        renames, constants = _mapping(body, dataset, dataset.unique_key, "every key column")
    else:
        columns = [c.name for c in dataset.columns]
        renames, constants = _mapping(body, dataset, columns, "every table column")
    overwrite = body.get("overwriteWithEmpty", False)
    if not isinstance(overwrite, bool):
        raise field_error("overwriteWithEmpty must be true or false")
    job_name = _job_name(body)
    taken = {c.name for c in dataset.columns}
    data, dropped = rename_header(_file(body), renames, taken)
    options = DecodeOptions(
        constants=constants, empty_is_absent=not overwrite and not deleting, drop=dropped
    )
    if deleting:
        method = WriteMethod.delete
    else:
        method = WriteMethod.upsert if dataset.unique_key else WriteMethod.insert
    payload = spool(svc, data, "text/csv")
    return Submission(dataset, method, payload, source=SOURCE, options=options, label=job_name)


# -- routes --------------------------------------------------------------------------------


@router.post(
    "/async/upsert",
    response_model=JobAnswer,
    openapi_extra=openapi_body(AsyncRequest.model_json_schema()),
)
async def async_upsert(request: Request, svc: ServicesDep, key: KeyDep):
    """Upsert a base64 CSV through `columnMapping` (append when the table has no key)."""
    job = await _file_job(request, svc, key, "upsert")
    return JSON({"jobId": job.id})


@router.delete(
    "/async/delete",
    response_model=JobAnswer,
    openapi_extra=openapi_body(AsyncRequest.model_json_schema()),
)
async def async_delete(request: Request, svc: ServicesDep, key: KeyDep):
    """Delete the rows whose keys the base64 CSV lists."""
    job = await _file_job(request, svc, key, "delete")
    return JSON({"jobId": job.id})


@router.post(
    "/sync/upsert",
    response_model=JobStatusAnswer,
    openapi_extra=openapi_body(SyncRequest.model_json_schema()),
)
async def sync_upsert(request: Request, svc: ServicesDep, key: KeyDep):
    """Upsert up to `max_sync_rows` positional rows; answered once they are written."""
    require_scope(key, Scope.write)  # before the body is read
    body = await read_json(request, svc, validation_fails)
    dataset = await run_in_threadpool(_table, svc, key, body)
    names = body.get("columns")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise field_error("columns is required: a non-empty array of column names")
    columns: list[str] = []
    for name in names:
        column = dataset.find_column(name.strip())
        if column is None:
            raise field_error(f"column {name!r} is not a column of table {dataset.id!r}")
        if column.name in columns:
            raise field_error(f"column {column.name!r} is given more than once")
        columns.append(column.name)
    missing = [c.name for c in dataset.columns if c.name not in columns]
    if missing:
        raise field_error(f"every table column must be given; missing: {', '.join(missing)}")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise field_error("rows is required: an array of rows")
    limit = svc.settings.max_sync_rows
    if len(rows) > limit:
        raise validation_fails(
            f"at most {limit} rows per synchronous call (got {len(rows)}); use async/upsert"
        )
    rows = [
        row["values"] if isinstance(row, dict) and isinstance(row.get("values"), list) else row
        for row in rows
    ]
    method = WriteMethod.upsert if dataset.unique_key else WriteMethod.insert
    payload = await run_in_threadpool(spool_rows, svc, rows)
    submission = Submission(
        dataset, method, payload, source=SOURCE, options=DecodeOptions(columns=columns)
    )
    job = await submit(svc, submission, wait=svc.settings.max_wait_seconds)
    return JSON(status_document(job))


@router.get("/async/{job_id}", response_model=JobStatusAnswer)
def async_status(job_id: str, svc: ServicesDep, key: KeyDep):
    """An async job's status and row counts."""
    return JSON(status_document(visible_job(svc, key, job_id)))


_STATUS = {
    JobStatus.queued: "Waiting",
    JobStatus.running: "Processing",
    JobStatus.succeeded: "Completed",
    JobStatus.failed: "Failed",
    JobStatus.cancelled: "Failed",
}


def status_document(job: Job) -> dict[str, Any]:
    errors = list(job.errors)
    if job.error is not None:
        errors.append(job.error.model_dump())
    stats = job.stats
    return {
        "jobId": job.id,
        "jobName": job.label,
        "status": _STATUS[job.status],
        "totalRowCount": stats.received,
        "successRowCount": stats.received - stats.failed,
        "errorRowCount": stats.failed,
        "errors": errors,
    }
