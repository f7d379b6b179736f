"""Jobs: show one, list, cancel a queued one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from pushbase.api.deps import Services, ServicesDep, require
from pushbase.api.models import ERRORS, JobDocument, JobList
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope
from pushbase.errors import PushbaseError, not_found
from pushbase.jobs.model import Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)
JOB_READERS = require(Scope.read, Scope.write)  # a pusher may follow its own jobs


def _visible_job(svc: Services, key: ApiKey, job_id: str) -> Job:
    job = svc.store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None or not key.allows_dataset(job.dataset_id):
        raise not_found("job", job_id)
    return job


@router.get("/{job_id}", response_model=JobDocument, name="get_job")
def get_job(job_id: str, svc: ServicesDep, key: ApiKey = JOB_READERS):
    return JSON(_visible_job(svc, key, job_id).document())


@router.get("", response_model=JobList)
def list_jobs(
    svc: ServicesDep,
    dataset: str | None = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    key: ApiKey = JOB_READERS,
):
    """Newest first."""
    if dataset is not None and not key.allows_dataset(dataset):
        raise PushbaseError("forbidden", f"this key may not use dataset {dataset!r}", 403)
    jobs = svc.store.list_jobs(dataset, status, limit, key.datasets)
    return JSON({"jobs": [j.document() for j in jobs]})


@router.post("/{job_id}/cancel", response_model=JobDocument)
def cancel_job(job_id: str, svc: ServicesDep, key: ApiKey = require(Scope.write)):
    job = _visible_job(svc, key, job_id)
    cancelled = svc.store.cancel_job(job.id)
    if cancelled is None:
        current = svc.store.get_job(job.id) or job
        raise PushbaseError(
            "job_not_cancellable",
            f"only queued jobs can be cancelled; this one is {current.status.value}",
            409,
            {"status": current.status.value},
        )
    return JSON(cancelled.document())
