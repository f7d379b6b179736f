"""Shared fixtures: a real pushbase app per test, driven over HTTP in-process.

`client` is a Starlette TestClient around `create_app`: the real routes, store
(DuckDB in a temporary folder) and worker threads, with the admin key sent by
default. `push` sends rows and waits for the job document.
"""

from __future__ import annotations

import gzip as gzip_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from pushbase.api import create_app
from pushbase.settings import Settings

ADMIN_KEY = "test-admin-key"


def make_client(data_dir: Path, workers: int = 2, **settings: Any) -> TestClient:
    app = create_app(Settings(data_dir=data_dir, admin_key=ADMIN_KEY, **settings), workers=workers)
    return TestClient(app, headers={"x-api-key": ADMIN_KEY})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path / "data") as test_client:
        yield test_client


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Start a client with custom settings: `make_server(workers=0, max_body_bytes=...)`."""
    opened: list[TestClient] = []

    def start(**settings: Any) -> TestClient:
        test_client = make_client(tmp_path / f"data{len(opened)}", **settings)
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
