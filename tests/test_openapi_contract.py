"""The API against its own OpenAPI document, with schemathesis (issue 20, "How it is checked").

Every operation of `/openapi.json` gets generated requests (hypothesis, derandomized so a
run is repeatable) sent with the admin key to one in-process app on the embedded store.
Checks enabled on every response: `not_a_server_error` (no 5xx), `status_code_conformance`
(only documented statuses), `content_type_conformance`, `response_headers_conformance` and
`response_schema_conformance` (the body matches the documented schema). Waits are
bounded by `max_wait_seconds`, so the routes that wait for a job (`wait`, D·engage sync
upsert, Graphite fill) answer within half a second.

The app runs in this process (not a subprocess): schemathesis drives it through the same
TestClient the other tests use, so the whole run stays under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from conftest import ADMIN_KEY, make_client
from pushbase.api import create_app
from pushbase.settings import Settings

EXAMPLES_PER_OPERATION = 12  # x 31 operations: a few hundred requests in all
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.unsupported_method,
    checks.negative_data_rejection,
    checks.missing_required_header,
]
COLUMNS = [{"name": "k", "type": "string"}, {"name": "v", "type": "integer"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir: Path = tmp_path_factory.mktemp("contract")
    with make_client(
        {"data_dir": data_dir}, workers=1, decode_processes=0, max_wait_seconds=0.5
    ) as client:
        # Something for generated ids to find now and then: hypothesis likes short strings.
        for dataset_id in ("0", "a", "00"):
            response = client.post(
                "/v1/datasets", json={"id": dataset_id, "columns": COLUMNS, "unique_key": ["k"]}
            )
            assert response.status_code == 201, response.text
        yield client


# The document depends on the routes only, not on a running store: built at import time so
# that each operation becomes a test of its own (schemathesis's fixture-based loader does
# not work with pytest 9).
schema = schemathesis.openapi.from_dict(create_app(Settings(admin_key=ADMIN_KEY)).openapi())


@pytest.fixture(scope="module")
def api_schema(api: TestClient) -> Any:
    """The document the running app serves (the same as `schema`)."""
    served = api.get("/openapi.json").json()
    assert served == schema.raw_schema
    return schema


def _httpx_kwargs(case: Any) -> dict[str, Any]:
    """A schemathesis case as arguments for the TestClient (requests-style → httpx)."""
    kwargs = case.as_transport_kwargs(
        base_url="http://testserver", headers={"x-api-key": ADMIN_KEY}
    )
    kwargs.pop("cookies", None)
    data = kwargs.pop("data", None)
    if isinstance(data, str | bytes):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    return kwargs


# One test per operation, named by it (`schema.parametrize()` gives every item the same
# node id, which pytest-xdist folds into one: a parallel run would check one operation).
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[o.label for o in OPERATIONS])
def test_every_operation_honours_its_documented_contract(operation: Any, api: TestClient) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def honours(case: Any) -> None:
        response = api.request(**_httpx_kwargs(case))
        case.validate_response(response, checks=CHECKS)

    honours()


def test_wrong_method_is_405_with_allow_header(api: TestClient) -> None:
    for method, path, allowed in (
        ("PUT", "/v1/datasets", {"GET", "POST"}),
        ("POST", "/v1/jobs/job_x", {"GET"}),
        ("PATCH", "/compat/qrvey/postdata", {"POST"}),
    ):
        response = api.request(method, path)
        assert response.status_code == 405, response.text
        assert set(response.headers["allow"].replace(" ", "").split(",")) >= allowed


def test_dataset_id_pattern_is_in_the_path_parameters(api_schema: Any) -> None:
    raw = api_schema.raw_schema
    for path, item in raw["paths"].items():
        if "{dataset_id}" not in path or path.startswith("/compat/obsrv/"):
            continue  # Obsrv names a dataset by id or by its free-text name
        for operation in item.values():
            (param,) = [p for p in operation["parameters"] if p["name"] == "dataset_id"]
            assert param["schema"].get("pattern"), (path, param)


def test_job_documents_declare_outcome(api_schema: Any) -> None:
    job = api_schema.raw_schema["components"]["schemas"]["JobDocument"]
    assert "outcome" in job["properties"]
