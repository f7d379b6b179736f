"""Qrvey Data Router — `/compat/qrvey` (DESIGN §5.1).

A Qrvey client keeps its calls and changes only its Post Data URL and API key:

    POST {base}/postdata        {"datasetId", "documentUpdateMethod", "data": [records]}
    POST {base}/deletealldata   {"datasetId"}
    GET  {base}/{jobId}/status

Records go to the core as one JSON array; `documentUpdateMethod` picks the
write method. Errors are `{"message", "code"}` with the HTTP status.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from pushbase.api.deps import KeyDep, ServicesDep
from pushbase.api.responses import JSON
from pushbase.auth import Scope
from pushbase.dialects.common import (
    dialect_route,
    openapi_body,
    read_json,
    require_scope,
    spool_rows,
    visible_job,
    writable,
)
from pushbase.errors import PushbaseError
from pushbase.ingest import Submission, submit
from pushbase.jobs.model import Job, JobPhase, JobStatus
from pushbase.schema import WriteMethod

SOURCE = "qrvey"
METHODS = {
    "upsert": WriteMethod.upsert,
    "insert": WriteMethod.insert,
    "delete": WriteMethod.delete,
}


class QrveyError(BaseModel):
    message: str
    code: str


def render_error(request: Request, exc: PushbaseError) -> JSON:
    return JSON({"message": exc.message, "code": exc.code}, exc.status, exc.headers or None)


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": QrveyError} for status in (400, 401, 403, 404, 409, 413, 429, 500)
}
router = APIRouter(
    prefix="/compat/qrvey",
    tags=["compat: Qrvey"],
    route_class=dialect_route(render_error),
    responses=ERRORS,
)


class PostData(BaseModel):
    datasetId: str
    documentUpdateMethod: str = Field("upsert", description="upsert | insert | delete")
    data: list[dict[str, Any]]


class DeleteAllData(BaseModel):
    datasetId: str


class JobId(BaseModel):
    jobId: str


class StatusJob(BaseModel):
    jobId: str
    status: str = Field(
        description="Initializing | PumpingDatasources | FillingEs | Complete | ErrorExit"
        " | TerminatedExit"
    )
    approximatePercentComplete: int
    runtime: str = Field(description="e.g. `0h 0m 11s`")


class PumpStatistics(BaseModel):
    failed: int
    pumpTimeSeconds: float
    read: int
    successful: int


class FillingEsStatistics(BaseModel):
    added: int
    deleted: int
    failed: int
    updated: int


class CompletionStatistics(BaseModel):
    dataSourcePumpStatistics: dict[str, PumpStatistics]
    failed: int
    fillingEsStatistics: FillingEsStatistics
    successful: int
    updated: int
    errors: list[dict[str, Any]]


class JobStatusAnswer(BaseModel):
    statusJob: StatusJob
    jobCompletionStatistics: CompletionStatistics


def invalid(message: str) -> PushbaseError:
    return PushbaseError("invalid_request", message, 400)


def _dataset_id(body: Any) -> str:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    dataset_id = body.get("datasetId")
    if not isinstance(dataset_id, str) or not dataset_id:
        raise invalid("datasetId is required (a string)")
    return dataset_id


@router.post(
    "/postdata",
    response_model=JobId,
    openapi_extra=openapi_body(PostData.model_json_schema()),
)
async def post_data(request: Request, svc: ServicesDep, key: KeyDep):
    """Push records: `upsert` (default), `insert` or `delete` by the unique key."""
    require_scope(key, Scope.write)  # before the body is read
    body = await read_json(request, svc, invalid)
    dataset_id = _dataset_id(body)
    name = body.get("documentUpdateMethod")
    if name is None:
        name = "upsert"
    if not isinstance(name, str) or name.strip().lower() not in METHODS:
        raise invalid("documentUpdateMethod must be one of upsert, insert, delete")
    method = METHODS[name.strip().lower()]
    records = body.get("data")
    if not isinstance(records, list):
        raise invalid("data is required: an array of records")
    dataset = await run_in_threadpool(writable, svc, key, dataset_id, by_name=False)
    if method is WriteMethod.delete and not dataset.unique_key:
        raise PushbaseError("no_unique_key", "delete needs a dataset with unique ID columns", 400)
    payload = await run_in_threadpool(spool_rows, svc, records)
    job = await submit(svc, Submission(dataset, method, payload, source=SOURCE))
    return JSON({"jobId": job.id})


@router.post(
    "/deletealldata",
    response_model=JobId,
    openapi_extra=openapi_body(DeleteAllData.model_json_schema()),
)
async def delete_all_data(request: Request, svc: ServicesDep, key: KeyDep):
    """A job that empties the dataset, in order with the pushes before it."""
    require_scope(key, Scope.write)
    body = await read_json(request, svc, invalid)
    dataset = await run_in_threadpool(writable, svc, key, _dataset_id(body), by_name=False)
    job = await submit(svc, Submission(dataset, WriteMethod.delete_all, None, source=SOURCE))
    return JSON({"jobId": job.id})


@router.get("/{job_id}/status", response_model=JobStatusAnswer)
def job_status(job_id: str, svc: ServicesDep, key: KeyDep):
    """The job in Qrvey's status vocabulary, with its completion statistics."""
    return JSON(status_document(visible_job(svc, key, job_id)))


def status_name(job: Job) -> str:
    if job.status is JobStatus.queued:
        return "Initializing"
    if job.status is JobStatus.running:
        return "FillingEs" if job.phase is JobPhase.writing else "PumpingDatasources"
    return {
        JobStatus.succeeded: "Complete",
        JobStatus.failed: "ErrorExit",
        JobStatus.cancelled: "TerminatedExit",
    }[job.status]


def runtime(job: Job) -> str:
    """Time since the job was accepted (until it ended), as Qrvey writes it: `0h 0m 11s`."""
    end = job.finished_at or datetime.now(UTC)
    seconds = max(0, math.floor((end - job.created_at).total_seconds()))
    return f"{seconds // 3600}h {seconds % 3600 // 60}m {seconds % 60}s"


def status_document(job: Job) -> dict[str, Any]:
    stats = job.stats
    # Qrvey's own example counts an update of three stored records as "successful": 0,
    # "updated": 3: at the top level `successful` is the records added; the pump's
    # `successful` is the records read without error.
    pumped = stats.received - stats.failed
    errors = list(job.errors)
    if job.error is not None:
        errors.append(job.error.model_dump())
    duration = job.duration_ms
    return {
        "statusJob": {
            "jobId": job.id,
            "status": status_name(job),
            "approximatePercentComplete": 100 if job.status.finished else job.progress,
            "runtime": runtime(job),
        },
        "jobCompletionStatistics": {
            "dataSourcePumpStatistics": {
                job.dataset_id: {
                    "failed": stats.failed,
                    "pumpTimeSeconds": round(duration / 1000, 3) if duration is not None else 0,
                    "read": stats.received,
                    "successful": pumped,
                }
            },
            "failed": stats.failed,
            "fillingEsStatistics": {
                "added": stats.inserted,
                "deleted": stats.deleted,
                "failed": stats.failed,
                "updated": stats.updated,
            },
            "successful": stats.inserted,
            "updated": stats.updated,
            "errors": errors,
        },
    }
