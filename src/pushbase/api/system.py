"""Health, readiness, limits and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import PlainTextResponse

from pushbase.api.deps import ServicesDep, authenticate, require
from pushbase.api.models import ErrorEnvelope, Health, Limits, Readiness
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope
from pushbase.errors import PushbaseError
from pushbase.jobs.model import JobStatus

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health)
def healthz():
    """The process answers."""
    return JSON({"status": "ok"})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(svc: ServicesDep):
    """The store is reachable and the workers of this process are alive."""
    store_ok = svc.store.ping()
    workers_ok = svc.runner.alive
    body = {"status": "ok" if store_ok and workers_ok else "unavailable",
            "store": store_ok, "workers": workers_ok}  # fmt: skip
    return JSON(body, status_code=200 if store_ok and workers_ok else 503)


@router.get("/v1/limits", response_model=Limits, tags=["limits"])
def limits(svc: ServicesDep, key: ApiKey = require(Scope.read, Scope.write, Scope.admin)):
    """What a client needs to size its batches."""
    s = svc.settings
    return JSON(
        {
            "max_body_bytes": s.max_body_bytes,
            "max_inflated_bytes": s.max_inflated_bytes,
            "max_sync_rows": s.max_sync_rows,
            "queue_max_bytes": s.queue_max_bytes,
            "optimal_batch_bytes": s.optimal_batch_bytes,
        }
    )


async def metrics_reader(
    svc: ServicesDep,
    x_api_key: Annotated[str | None, Header(description="API key")] = None,
    authorization: Annotated[str | None, Header(description="Bearer API key")] = None,
) -> None:
    """A key with read scope and no dataset limit, unless PUSHBASE_PUBLIC_METRICS is set:
    the figures cover every dataset, so a key limited to some may not see them."""
    if svc.settings.public_metrics:
        return
    key = await authenticate(svc, x_api_key, authorization)
    key.check(Scope.read)
    if key.datasets is not None:
        raise PushbaseError(
            "forbidden", "metrics cover every dataset: use a key not limited to datasets", 403
        )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(metrics_reader)],
    responses={status: {"model": ErrorEnvelope} for status in (401, 403)},
)
def metrics(svc: ServicesDep):
    """Prometheus text format: jobs by status, bytes waiting, datasets."""
    statuses = svc.store.job_counts()
    lines = [
        "# HELP pushbase_jobs Jobs kept, by status.",
        "# TYPE pushbase_jobs gauge",
        *(f'pushbase_jobs{{status="{s.value}"}} {statuses.get(s, 0)}' for s in JobStatus),
        "# HELP pushbase_pending_bytes Payload bytes waiting to be applied.",
        "# TYPE pushbase_pending_bytes gauge",
        f"pushbase_pending_bytes {svc.store.pending_bytes()}",
        "# HELP pushbase_datasets Datasets in the catalog.",
        "# TYPE pushbase_datasets gauge",
        f"pushbase_datasets {len(svc.store.list_datasets())}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
