"""Shared fixtures: a real pushbase app per test, driven over HTTP in-process.

`client` is a Starlette TestClient around `create_app`: the real routes, store and
worker threads, with the admin key sent by default. Every test that uses `client`,
`make_server` or `store_settings` runs twice: on the embedded DuckDB store and on
PostgreSQL (`PUSHBASE_TEST_DATABASE_URL`, default the local server, each test in a
schema of its own). Without a reachable PostgreSQL those runs are skipped, except
under `CI=true`, where they fail.
"""

from __future__ import annotations

import gzip as gzip_module
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from pushbase.api import create_app
from pushbase.settings import Settings

ADMIN_KEY = "test-admin-key"
PG_URL = os.environ.get("PUSHBASE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["duckdb", "postgres"]


def postgres_or_skip() -> str:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is required under CI=true: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable")
    return PG_URL


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class StoreFactory:
    """Settings for fresh stores of one backend; PostgreSQL schemas are dropped at the end."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.schemas: list[str] = []

    def new(self) -> dict[str, Any]:
        data_dir = self.root / f"data{len(self.schemas)}-{secrets.token_hex(3)}"
        if self.backend == "duckdb":
            self.schemas.append("")
            return {"data_dir": data_dir}
        schema = f"pbt_{secrets.token_hex(6)}"
        self.schemas.append(schema)
        return {"data_dir": data_dir, "database_url": PG_URL, "database_schema": schema}

    def cleanup(self) -> None:
        for schema in self.schemas:
            if schema:
                drop_schema(schema)


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param == "postgres":
        postgres_or_skip()
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def store_settings(stores: StoreFactory) -> dict[str, Any]:
    """The settings of one store for this test, to open it several times (restarts)."""
    return stores.new()


def make_client(store: dict[str, Any] | Path, workers: int = 2, **settings: Any) -> TestClient:
    if isinstance(store, Path):
        store = {"data_dir": store}
    app = create_app(Settings(admin_key=ADMIN_KEY, **store, **settings), workers=workers)
    return TestClient(app, headers={"x-api-key": ADMIN_KEY})


@pytest.fixture
def client(store_settings: dict[str, Any]) -> Iterator[TestClient]:
    with make_client(store_settings) as test_client:
        yield test_client


@pytest.fixture
def make_server(stores: StoreFactory) -> Iterator[Callable[..., TestClient]]:
    """Start a client on a fresh store with custom settings: `make_server(workers=0)`."""
    opened: list[TestClient] = []

    def start(**settings: Any) -> TestClient:
        test_client = make_client(stores.new(), **settings)
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield start
    for test_client in opened:
        test_client.__exit__(None, None, None)


def create_dataset(client: TestClient, dataset_id: str, columns: list[dict], **extra: Any) -> dict:
    response = client.post("/v1/datasets", json={"id": dataset_id, "columns": columns, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def push(
    client: TestClient,
    dataset_id: str,
    rows: Any,
    method: str = "upsert",
    *,
    content_type: str = "application/json",
    gzip: bool = False,
    wait: float = 30,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> dict:
    """Push and return the finished job document (asserting the push was accepted)."""
    body = rows if isinstance(rows, bytes) else orjson.dumps(rows)
    sent = {"content-type": content_type, **(headers or {})}
    if gzip:
        body = gzip_module.compress(body)
        sent["content-encoding"] = "gzip"
    response = client.post(
        f"/v1/datasets/{dataset_id}/records",
        params={"method": method, "wait": wait, **params},
        content=body,
        headers=sent,
    )
    assert response.status_code == 200, response.text
    return response.json()


def rows_of(client: TestClient, dataset_id: str, **params: Any) -> list[dict]:
    response = client.get(f"/v1/datasets/{dataset_id}/records", params={"limit": 10000, **params})
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def finished_job(client: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    """Poll a job until it has ended; its document (any client: in-process or over HTTP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")
