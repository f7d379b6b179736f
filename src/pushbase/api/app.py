"""The ASGI application: routers, error envelope, and the store and workers' life cycle."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from pushbase import __version__
from pushbase.admission import Admission
from pushbase.api import datasets, errors, jobs, keys, records, system
from pushbase.api.timeouts import BodyDeadline
from pushbase.auth import Scope
from pushbase.console import router as console_router
from pushbase.dialects import dengage, graphite, obsrv, qrvey
from pushbase.ingest import Services
from pushbase.jobs.runner import JobRunner
from pushbase.priority import favour_requests
from pushbase.settings import Settings
from pushbase.storage import open_store

log = logging.getLogger("pushbase")


def bootstrap_admin_key(svc: Services) -> str | None:
    """On an empty store with no PUSHBASE_ADMIN_KEY, create an admin key and return it once."""
    if svc.settings.admin_key or svc.store.list_keys():
        return None
    secret = keys.create_key(svc, "bootstrap admin", [Scope.admin], None)[1]
    return secret


def create_app(settings: Settings | None = None, workers: int | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        favour_requests()
        store = open_store(settings)
        await run_in_threadpool(store.open)
        runner = JobRunner(store, settings)
        svc = Services(settings, store, runner, Admission(settings.intake_per_dataset))
        app.state.services = svc
        secret = await run_in_threadpool(bootstrap_admin_key, svc)
        if secret:
            print(
                f"\npushbase: created an admin API key (shown only now):\n\n    {secret}\n",
                flush=True,
            )
        runner.start(settings.workers if workers is None else workers)
        # Everything loaded so far lives as long as the server: keep it out of the
        # collector, so that a full collection under load takes milliseconds, not tens.
        gc.freeze()
        try:
            yield
        finally:
            await run_in_threadpool(runner.stop)
            store.close()

    app = FastAPI(
        title="pushbase",
        version=__version__,
        summary="Push data into managed, typed datasets over HTTP.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodyDeadline, seconds=settings.http_body_timeout_seconds)
    for module in (datasets, records, jobs, keys, system, qrvey, obsrv, dengage, graphite):
        app.include_router(module.router)
    app.include_router(console_router)
    return app
