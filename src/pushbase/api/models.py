"""Request and response models: what /openapi.json shows for each route."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pushbase.auth import Scope
from pushbase.jobs.model import JobError, JobPhase, JobStats, JobStatus
from pushbase.schema import Column, Dataset, UnknownFields, WriteMethod


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class DatasetCreate(Strict):
    id: str | None = Field(
        None, description="^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$; generated when absent"
    )
    name: str | None = Field(None, max_length=256)
    description: str | None = Field(None, max_length=4096)
    columns: list[Column] | None = None
    sample: Any = Field(None, description="a record or array of records to infer columns from")
    unique_key: list[str] = []
    unknown_fields: UnknownFields = UnknownFields.reject


class DatasetPatch(Strict):
    name: str | None = Field(None, max_length=256)
    description: str | None = Field(None, max_length=4096)
    unknown_fields: UnknownFields | None = None
    add_columns: list[Column] = []


class DatasetList(BaseModel):
    datasets: list[Dataset]


class InferRequest(Strict):
    sample: Any


class InferResponse(BaseModel):
    columns: list[Column]


class Instructions(BaseModel):
    dataset_id: str
    base_url: str
    commands: dict[str, str]


class JobDocument(BaseModel):
    id: str
    dataset_id: str
    method: WriteMethod
    status: JobStatus
    phase: JobPhase | None
    progress: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    bytes: int
    source: str
    idempotency_key: str | None
    stats: JobStats
    errors: list[dict[str, Any]]
    errors_total: int
    error: JobError | None
    outcome: Literal["complete", "partial", "rejected"] | None = Field(
        description="complete: no row failed; partial: some rows failed, others were written;"
        " rejected: the job failed or every row failed; null until the job has ended"
    )


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    status_url: str


class JobList(BaseModel):
    jobs: list[JobDocument]


class Rows(BaseModel):
    rows: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=256)
    scopes: list[Scope] = Field(min_length=1)
    datasets: list[str] | None = None


class KeyInfo(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    datasets: list[str] | None
    created_at: datetime


class KeyCreated(KeyInfo):
    key: str = Field(description="the secret; shown in this answer only")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    store: bool
    workers: bool


class Limits(BaseModel):
    max_body_bytes: int
    max_inflated_bytes: int
    max_sync_rows: int
    queue_max_bytes: int
    optimal_batch_bytes: int


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope}
    for status in (400, 401, 403, 404, 408, 409, 413, 415, 422, 429)
}
