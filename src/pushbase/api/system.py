"""Health, readiness, limits and metrics."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from pushbase.api.deps import ServicesDep, require
from pushbase.api.models import Health, Limits, Readiness
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope
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


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(svc: ServicesDep):
    """Prometheus text format: jobs by status, bytes waiting, datasets."""
    statuses = Counter(j.status for j in svc.store.list_jobs(None, None, 10_000, None))
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
