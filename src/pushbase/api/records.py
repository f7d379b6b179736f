"""Rows of a dataset: push (every write method), delete-all, read, export."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from pushbase.api.datasets import base_url
from pushbase.api.deps import DatasetIdPath, ServicesDep, dataset_for, dataset_to_push, require
from pushbase.api.intake import receive_body
from pushbase.api.models import ERRORS, JobAccepted, JobDocument, Rows
from pushbase.api.responses import JSON, table_rows
from pushbase.auth import ApiKey, Scope
from pushbase.decode.coerce import ARROW_TYPES, CoerceError, coerce_value
from pushbase.errors import PushbaseError
from pushbase.ingest import Services, Submission, check_queue_async, finished_within, submit
from pushbase.jobs.model import Job
from pushbase.schema import ColumnType, Dataset, WriteMethod
from pushbase.storage.base import RowQuery

router = APIRouter(prefix="/v1", tags=["records"], responses=ERRORS)

MAX_PAGE = 10_000
MAX_OFFSET = 2**63 - 1  # the stores take a signed 64-bit offset
RESERVED = {"limit", "offset", "order_by"}
PushMethod = Annotated[
    WriteMethod, Query(description="insert | upsert | replace | delete (delete_all: DELETE route)")
]


def job_answer(request: Request, svc: Services, job: Job) -> JSON:
    """200 with the document when the job finished, else 202 with where to look (under
    `PUBLIC_URL` when set, never a Host header a client made up)."""
    if job.status.finished:
        return JSON(job.document(), status_code=200)
    status_url = f"{base_url(request, svc)}/v1/jobs/{job.id}"
    return JSON({"job_id": job.id, "status": job.status.value, "status_url": status_url}, 202)


@router.post(
    "/datasets/{dataset_id}/records",
    status_code=202,
    response_model=JobAccepted,
    responses={200: {"model": JobDocument, "description": "done within `wait`"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def push(
    dataset_id: DatasetIdPath,
    request: Request,
    svc: ServicesDep,
    method: PushMethod = WriteMethod.upsert,
    wait: Annotated[float, Query(ge=0, le=3600, description="seconds to wait for the result")] = 0,
    atomic: bool = False,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    key: ApiKey = require(Scope.write),
):
    """Push rows. The body is stored durably before the answer; a worker applies it."""
    if method is WriteMethod.delete_all:
        raise PushbaseError("invalid_method", "use DELETE /v1/datasets/{id}/records", 400)
    dataset = await dataset_to_push(svc, key, dataset_id)
    if method is WriteMethod.delete and not dataset.unique_key:
        raise PushbaseError("no_unique_key", "delete needs a dataset with a unique key", 400)
    declared = request.headers.get("content-length", "")
    # A full queue refuses the push before its body is read; then the body is read with
    # no slot held, so a slow sender delays only itself (admission.py).
    await check_queue_async(svc, int(declared) if declared.isdigit() else 0)
    payload = await receive_body(request, svc.settings, svc.store.incoming_path())
    submission = Submission(
        dataset, method, payload, idempotency_key=idempotency_key, atomic=atomic
    )
    try:
        async with svc.admission.slot(dataset.id):
            await check_queue_async(svc, payload.size)  # pushes received meanwhile count too
            job = await submit(svc, submission)  # durable: the slot is free for the next push
    except BaseException:
        payload.discard()  # a spilled body no job took (queue full, client gone)
        raise
    return job_answer(request, svc, await finished_within(svc, job, wait))


@router.delete(
    "/datasets/{dataset_id}/records",
    status_code=202,
    response_model=JobAccepted,
    responses={200: {"model": JobDocument}},
)
async def delete_all(
    dataset_id: DatasetIdPath,
    request: Request,
    svc: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=3600)] = 0,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    key: ApiKey = require(Scope.write),
):
    """A job that empties the dataset, in order with the pushes before it."""
    dataset = await dataset_to_push(svc, key, dataset_id)
    submission = Submission(dataset, WriteMethod.delete_all, None, idempotency_key=idempotency_key)
    return job_answer(request, svc, await submit(svc, submission, wait))


def _row_query(request: Request, dataset: Dataset, limit: int, offset: int, order_by: str | None):
    order: list[tuple[str, bool]] = []
    for part in (order_by or "").split(","):
        part = part.strip()
        if not part:
            continue
        descending = part.startswith("-")
        name = part.lstrip("-+")
        if dataset.column(name) is None:
            raise PushbaseError("unknown_column", f"cannot order by {name!r}: no such column", 400)
        order.append((name, descending))
    filters: dict[str, Any] = {}
    for name, raw in request.query_params.multi_items():
        if name in RESERVED:
            continue
        column = dataset.column(name)
        if column is None:
            raise PushbaseError("unknown_column", f"cannot filter on {name!r}: no such column", 400)
        if column.type is ColumnType.json:
            raise PushbaseError("invalid_filter", f"json column {name!r} cannot be filtered", 400)
        try:
            filters[name] = coerce_value(raw, column)
        except CoerceError as exc:
            raise PushbaseError("invalid_filter", f"{name}: {exc.message}", 400) from exc
    return RowQuery(limit=limit, offset=offset, order_by=order, filters=filters)


@router.get("/datasets/{dataset_id}/records", response_model=Rows)
def read_rows(
    dataset_id: DatasetIdPath,
    request: Request,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    order_by: Annotated[str | None, Query(description="col or -col, comma-separated")] = None,
    key: ApiKey = require(Scope.read),
):
    """A page of rows; any other query parameter `col=value` is an equality filter."""
    dataset = dataset_for(svc, key, dataset_id, Scope.read)
    query = _row_query(request, dataset, limit, offset, order_by)
    page, total = svc.store.read_rows(dataset, query)
    return JSON(
        {"rows": table_rows(page, dataset), "total": total, "limit": limit, "offset": offset}
    )


_EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


@router.get(
    "/datasets/{dataset_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "every row, in the chosen format",
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in _EXPORT_TYPES.values()
            },
        }
    },
)
def export(
    dataset_id: DatasetIdPath,
    svc: ServicesDep,
    format: Annotated[str, Query(pattern="^(csv|ndjson|parquet)$")] = "ndjson",
    key: ApiKey = require(Scope.read),
):
    """Every row, streamed as CSV, NDJSON or Parquet."""
    dataset = dataset_for(svc, key, dataset_id, Scope.read)
    writer = {"csv": _csv_chunks, "ndjson": _ndjson_chunks, "parquet": _parquet_chunks}[format]
    filename = f"{dataset.id}.{format}"
    return StreamingResponse(
        writer(svc.store.export_batches(dataset), dataset),
        media_type=_EXPORT_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _iso_timestamps(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Datetimes as ISO-8601 text with Z, the form pushbase accepts back."""
    arrays = [
        pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ") if pa.types.is_timestamp(col.type) else col
        for col in batch.columns
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _csv_chunks(batches: Iterator[pa.RecordBatch], dataset: Dataset) -> Iterator[bytes]:
    first = True
    for batch in batches:
        buffer = io.BytesIO()
        options = pacsv.WriteOptions(include_header=first)
        pacsv.write_csv(_iso_timestamps(batch), buffer, write_options=options)
        first = False
        yield buffer.getvalue()
    if first:  # empty dataset: still a header
        yield (",".join(_csv_header(c.name) for c in dataset.columns) + "\n").encode()


def _csv_header(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ndjson_chunks(batches: Iterator[pa.RecordBatch], dataset: Dataset) -> Iterator[bytes]:
    for batch in batches:
        rows = table_rows(pa.Table.from_batches([batch]), dataset)
        yield b"".join(orjson.dumps(r, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z) + b"\n"
                       for r in rows)  # fmt: skip


class _ChunkSink:
    """A write-only file for ParquetWriter that hands out what was written so far."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _parquet_chunks(batches: Iterator[pa.RecordBatch], dataset: Dataset) -> Iterator[bytes]:
    sink = _ChunkSink()
    writer: pq.ParquetWriter | None = None
    for batch in batches:
        if writer is None:
            writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), batch.schema)
        writer.write_batch(batch)
        yield sink.take()
    if writer is None:
        schema = pa.schema([(c.name, ARROW_TYPES[c.type]) for c in dataset.columns])
        writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema)
    writer.close()
    yield sink.take()
