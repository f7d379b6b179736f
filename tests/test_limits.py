"""Limits and service routes (DESIGN §4): body size, inflated size, content type and
encoding, /v1/limits, health, readiness, metrics, the OpenAPI document and the error
envelope on framework-level errors.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from conftest import create_dataset, push, rows_of

COLUMNS = [{"name": "k", "type": "string"}, {"name": "v", "type": "integer"}]
SEED = [{"k": f"s{i}", "v": i} for i in range(5)]
PUSH_URL = "/v1/datasets/d/records"


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"}, response.text
    assert isinstance(body["error"].get("code"), str), response.text
    assert isinstance(body["error"].get("message"), str), response.text
    return body["error"]["code"]


def api_routes(app) -> Iterator[tuple[APIRoute, str, set[str]]]:
    """(route, path, methods) of every FastAPI route, walking included routers."""
    try:  # FastAPI >= 0.16x keeps included routers lazily
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI flattens routes itself
        contexts = [(r, getattr(r, "path", None), getattr(r, "methods", None)) for r in app.routes]
    else:
        contexts = [(c.original_route, c.path, c.methods) for c in iter_route_contexts(app.routes)]
    for route, path, methods in contexts:
        if isinstance(route, APIRoute) and route.include_in_schema:
            yield route, path, {m for m in methods or () if m != "HEAD"}


def overwriting_rows(count: int = 1) -> list[dict[str, Any]]:
    """Rows that would change every seeded row (and add new ones) if they were applied."""
    return [{"k": f"s{i % 5}" if i < 5 else f"n{i}", "v": 1000 + i} for i in range(count)]


def seeded(server: TestClient) -> list[dict]:
    """Create dataset `d` with SEED; return the jobs list after seeding."""
    create_dataset(server, "d", COLUMNS, unique_key=["k"])
    assert push(server, "d", SEED)["status"] == "succeeded"
    jobs = server.get("/v1/jobs").json()["jobs"]
    assert len(jobs) == 1
    return jobs


def assert_untouched(server: TestClient, jobs_before: list[dict]) -> None:
    jobs = server.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [j["id"] for j in jobs_before], "a job was created"
    assert sorted(rows_of(server, "d"), key=lambda r: r["k"]) == SEED
    assert server.get("/v1/datasets/d").json()["row_count"] == len(SEED)
    metrics = server.get("/metrics").text
    assert "pushbase_pending_bytes 0" in metrics


# -- body size -----------------------------------------------------------------------------


def test_body_over_max_is_413(make_server):
    server = make_server(max_body_bytes=1000)
    before = seeded(server)
    body = orjson.dumps(overwriting_rows(100))
    assert len(body) > 1000
    response = server.post(PUSH_URL, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert error_code(response) == "payload_too_large"
    assert_untouched(server, before)


def test_body_just_under_max_is_accepted(make_server):
    server = make_server(max_body_bytes=1000)
    seeded(server)
    body = orjson.dumps([{"k": "n1", "v": 1}])
    body += b" " * (1000 - len(body))
    assert len(body) == 1000
    job = push(server, "d", body)
    assert job["status"] == "succeeded"
    assert job["stats"]["inserted"] == 1


def test_chunked_body_over_max_is_413(make_server):
    server = make_server(max_body_bytes=1000)
    before = seeded(server)
    body = orjson.dumps(overwriting_rows(100))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = server.post(PUSH_URL, content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers.get("content-length") is None  # really chunked
    assert response.status_code == 413, response.text
    assert error_code(response) == "payload_too_large"
    assert_untouched(server, before)


def test_lying_content_length_does_not_pass_the_limit(make_server):
    """A small declared length with a larger chunked body is still judged by its bytes."""
    server = make_server(max_body_bytes=1000)
    before = seeded(server)
    body = orjson.dumps(overwriting_rows(100))

    def chunks() -> Iterator[bytes]:
        yield body[:500]
        yield body[500:]

    response = server.post(
        PUSH_URL,
        content=chunks(),
        headers={"content-type": "application/json", "content-length": "500"},
    )
    assert response.status_code == 413, response.text
    assert_untouched(server, before)


def test_gzip_inflating_over_max_is_413(make_server):
    server = make_server(max_inflated_bytes=10_000)
    before = seeded(server)
    raw = orjson.dumps(overwriting_rows(2000))
    assert len(raw) > 10_000
    body = gzip.compress(raw)
    assert len(body) < 10_000
    response = server.post(
        PUSH_URL,
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 413, response.text
    assert error_code(response) == "payload_too_large"
    assert_untouched(server, before)


def test_gzip_under_max_inflated_is_accepted(make_server):
    server = make_server(max_inflated_bytes=10_000)
    seeded(server)
    job = push(server, "d", [{"k": "n1", "v": 1}], gzip=True)
    assert job["status"] == "succeeded"
    assert job["stats"]["inserted"] == 1


# -- content type and encoding -------------------------------------------------------------


def test_unknown_content_type_is_415(make_server):
    server = make_server()
    before = seeded(server)
    body = b"<rows><row><k>s0</k><v>99</v></row></rows>"
    response = server.post(PUSH_URL, content=body, headers={"content-type": "application/xml"})
    assert response.status_code == 415, response.text
    assert error_code(response) == "unsupported_media_type"
    assert_untouched(server, before)


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd"])
def test_unknown_content_encoding_is_415(make_server, encoding):
    server = make_server()
    before = seeded(server)
    response = server.post(
        PUSH_URL,
        content=orjson.dumps(overwriting_rows(10)),
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert response.status_code == 415, response.text
    error_code(response)  # the envelope
    assert_untouched(server, before)


# -- /v1/limits ----------------------------------------------------------------------------


def test_limits_advertises_configured_values(make_server):
    configured = {
        "max_body_bytes": 12_345,
        "max_inflated_bytes": 67_890,
        "max_sync_rows": 321,
        "queue_max_bytes": 999_999,
        "optimal_batch_bytes": 4_321,
    }
    server = make_server(**configured)
    response = server.get("/v1/limits")
    assert response.status_code == 200, response.text
    assert response.json() == configured


def test_limits_defaults(client):
    mib = 1024 * 1024
    limits = client.get("/v1/limits").json()
    assert set(limits) == {
        "max_body_bytes",
        "max_inflated_bytes",
        "max_sync_rows",
        "queue_max_bytes",
        "optimal_batch_bytes",
    }
    assert limits["max_body_bytes"] == 50 * mib
    assert limits["max_inflated_bytes"] == 512 * mib
    assert all(isinstance(v, int) and v > 0 for v in limits.values())


# -- health, readiness, metrics ------------------------------------------------------------


def test_healthz_and_readyz(client):
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_metrics_is_prometheus_text(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    push(client, "d", SEED)
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "pushbase_jobs" in text
    assert "# TYPE pushbase_jobs" in text
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        assert name, line
        float(value)  # every sample line ends with a number
    assert any(
        line.startswith("pushbase_jobs") and 'status="succeeded"' in line and line.endswith(" 1")
        for line in text.splitlines()
    ), text


# -- the OpenAPI document ------------------------------------------------------------------


@pytest.fixture
def openapi(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


def _success_responses(operation: dict) -> dict[str, dict]:
    return {code: r for code, r in operation["responses"].items() if code.startswith("2")}


def test_openapi_lists_every_route(client, openapi):
    paths = openapi["paths"]
    routes = list(api_routes(client.app))
    assert routes, "no API routes found"
    missing = [
        f"{method} {path}"
        for _, path, methods in routes
        for method in methods
        if method.lower() not in paths.get(path, {})
    ]
    assert missing == []


def test_openapi_json_bodies_are_documented(client, openapi):
    missing = []
    for route, path, methods in api_routes(client.app):
        for method in methods & {"POST", "PATCH", "PUT"}:
            if route.body_field is None:
                continue
            operation = openapi["paths"][path][method.lower()]
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content or not content["application/json"].get("schema"):
                missing.append(f"{method} {path}")
    assert missing == []


def test_openapi_success_responses_have_schemas(client, openapi):
    problems = []
    for _, path, methods in api_routes(client.app):
        for method in methods:
            operation = openapi["paths"][path][method.lower()]
            success = _success_responses(operation)
            if not success:
                problems.append(f"{method} {path}: no 2xx response documented")
                continue
            for code, response in success.items():
                content = response.get("content") or {}
                if code == "204":
                    continue
                if not content:
                    problems.append(f"{method} {path} {code}: no content documented")
                if "application/json" in content:
                    schema = content["application/json"].get("schema") or {}
                    if not schema:
                        problems.append(f"{method} {path} {code}: application/json without schema")
    assert problems == [], "\n".join(problems)


def test_openapi_push_route_documents_three_formats(openapi):
    operation = openapi["paths"]["/v1/datasets/{dataset_id}/records"]["post"]
    content = operation["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson", "text/csv"} <= set(content)
    parameters = {p["name"] for p in operation.get("parameters", [])}
    assert {"method", "wait", "atomic"} <= parameters
    assert {"200", "202"} <= set(operation["responses"])


def test_docs_page(client):
    response = client.get("/docs")
    assert response.status_code == 200, response.text
    assert "text/html" in response.headers["content-type"]


# -- the error envelope on framework-level errors --


def test_unknown_route_is_404_envelope(client):
    for path in ("/nope", "/v1/nope", "/v1/datasets/d/nope"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
        error_code(response)
        assert "detail" not in response.json()


def test_wrong_method_is_405_envelope(client):
    response = client.put("/v1/datasets")
    assert response.status_code == 405, response.text
    error_code(response)


def test_bad_json_body_is_422_validation_error(client):
    response = client.post(
        "/v1/datasets",
        content=b'{"id": "d", "columns": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"
    assert "detail" not in response.json()
    assert client.get("/v1/datasets").json()["datasets"] == []


def test_body_not_matching_model_is_422_validation_error(client):
    response = client.post("/v1/datasets", json={"id": "d", "columns": "nope"})
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"
    response = client.post("/v1/datasets", json={"id": "d", "columns": COLUMNS, "bogus": 1})
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"


@pytest.mark.parametrize(
    "params",
    [{"limit": 100000}, {"limit": -1}, {"limit": "many"}, {"offset": -5}],
    ids=["limit-too-big", "limit-negative", "limit-text", "offset-negative"],
)
def test_bad_query_is_422_envelope(client, params):
    create_dataset(client, "d", COLUMNS)
    response = client.get("/v1/datasets/d/records", params=params)
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"
    assert "detail" not in response.json()


def test_limit_at_max_is_accepted(client):
    create_dataset(client, "d", COLUMNS)
    response = client.get("/v1/datasets/d/records", params={"limit": 10000})
    assert response.status_code == 200, response.text
    assert response.json()["limit"] == 10000
