"""API keys and scopes, through HTTP only (DESIGN §1 "API key", §4).

Covers: presenting a key (x-api-key and Authorization: Bearer), the 401s, creating,
listing and revoking keys, hashing at rest, every native route against every scope,
keys limited to datasets, PUSHBASE_ADMIN_KEY and the first-start bootstrap key.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from conftest import ADMIN_KEY, create_dataset, make_client, push, rows_of
from pushbase.api import create_app
from pushbase.settings import Settings

COLUMNS = [{"name": "k", "type": "string"}, {"name": "v", "type": "integer"}]
SCOPES = ("admin", "write", "read")


# -- helpers -------------------------------------------------------------------------------


def auth(secret: str) -> dict[str, str]:
    return {"x-api-key": secret}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"}, response.text
    assert isinstance(body["error"].get("message"), str), response.text
    return body["error"]["code"]


def new_key(client: TestClient, scopes: list[str], datasets: list[str] | None = None) -> dict:
    body: dict[str, Any] = {"name": f"{'+'.join(scopes)} key", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body, headers=auth(ADMIN_KEY))
    assert response.status_code == 201, response.text
    return response.json()


def api_routes(app) -> Iterator[tuple[str, str]]:
    """(METHOD, path) of every FastAPI route of the app, including included routers."""
    try:  # FastAPI >= 0.16x keeps included routers lazily; this walks them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI flattens routes itself
        contexts = [(r, r.path, r.methods) for r in app.routes]
    else:
        contexts = [(c.original_route, c.path, c.methods) for c in iter_route_contexts(app.routes)]
    for route, path, methods in contexts:
        if isinstance(route, APIRoute):
            for method in methods or ():
                if method != "HEAD":
                    yield method, path


@pytest.fixture
def anon(client: TestClient) -> TestClient:
    """The per-test client without its default admin key header."""
    client.headers.pop("x-api-key", None)
    return client


# -- presenting a key ----------------------------------------------------------------------


def test_no_key_is_401_unauthorized(anon):
    response = anon.get("/v1/datasets")
    assert response.status_code == 401, response.text
    assert error_code(response) == "unauthorized"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "not-a-key"},
        {"Authorization": "Bearer not-a-key"},
        {"x-api-key": ADMIN_KEY + "x"},
        {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"},
    ],
    ids=["x-api-key", "bearer", "admin-plus-one", "admin-minus-one"],
)
def test_wrong_key_is_401_invalid_key(anon, headers):
    response = anon.get("/v1/datasets", headers=headers)
    assert response.status_code == 401, response.text
    assert error_code(response) == "invalid_key"


def test_non_bearer_authorization_is_not_a_key(anon):
    response = anon.get("/v1/datasets", headers={"Authorization": f"Basic {ADMIN_KEY}"})
    assert response.status_code == 401, response.text
    assert error_code(response) in ("unauthorized", "invalid_key")


@pytest.mark.parametrize("style", [auth, bearer], ids=["x-api-key", "bearer"])
def test_both_header_styles_work(anon, style):
    response = anon.get("/v1/datasets", headers=style(ADMIN_KEY))
    assert response.status_code == 200, response.text
    secret = new_key(anon, ["read"])["key"]
    response = anon.get("/v1/datasets", headers=style(secret))
    assert response.status_code == 200, response.text


def test_admin_env_key_is_admin(anon):
    headers = auth(ADMIN_KEY)
    create = anon.post("/v1/datasets", json={"id": "d", "columns": COLUMNS}, headers=headers)
    assert create.status_code == 201, create.text
    assert anon.get("/v1/keys", headers=headers).status_code == 200
    job = push(anon, "d", [{"k": "a", "v": 1}], headers=headers)
    assert job["status"] == "succeeded"
    assert anon.get("/v1/datasets/d/records", headers=headers).json()["rows"] == [
        {"k": "a", "v": 1}
    ]
    assert anon.delete("/v1/datasets/d", headers=headers).status_code == 204


def test_service_routes_need_no_key(anon):
    for path in ("/healthz", "/readyz"):
        response = anon.get(path)
        assert response.status_code == 200, (path, response.text)
    assert anon.get("/metrics").status_code == 401  # unless PUSHBASE_PUBLIC_METRICS


# -- creating, listing and revoking keys ---------------------------------------------------


def test_create_key_shows_secret_once(client):
    response = client.post(
        "/v1/keys", json={"name": "loader", "scopes": ["write", "read"], "datasets": ["a"]}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert {"id", "name", "scopes", "datasets", "created_at", "key"} <= set(created)
    assert created["name"] == "loader"
    assert sorted(created["scopes"]) == ["read", "write"]
    assert created["datasets"] == ["a"]
    secret = created["key"]
    assert isinstance(secret, str) and len(secret) >= 20
    assert not any("hash" in name for name in created)

    listing = client.get("/v1/keys")
    assert listing.status_code == 200, listing.text
    keys = listing.json()["keys"]
    mine = [k for k in keys if k["id"] == created["id"]]
    assert len(mine) == 1, keys
    assert mine[0]["name"] == "loader"
    assert sorted(mine[0]["scopes"]) == ["read", "write"]
    assert mine[0]["datasets"] == ["a"]
    for listed in keys:
        assert "key" not in listed and "secret" not in listed
        assert not any("hash" in name for name in listed), listed
    text = listing.text
    assert secret not in text
    assert hashlib.sha256(secret.encode()).hexdigest() not in text
    assert hashlib.sha256(secret.encode()).hexdigest().upper() not in text

    # the shown key is the one that works
    assert client.get("/v1/datasets", headers=auth(secret)).status_code == 200


def test_each_key_has_its_own_secret(client):
    first, second = new_key(client, ["read"]), new_key(client, ["read"])
    assert first["id"] != second["id"]
    assert first["key"] != second["key"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": ["superuser"]},
        {"name": "x", "scopes": []},
        {"scopes": ["read"]},
        {"name": "x"},
        {"name": "x", "scopes": "read"},
    ],
    ids=["unknown-scope", "no-scope", "no-name", "no-scopes", "scopes-not-list"],
)
def test_bad_key_request_is_422_envelope(client, body):
    response = client.post("/v1/keys", json=body)
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"
    assert not [k for k in client.get("/v1/keys").json()["keys"] if k["name"] == "x"]


def test_keys_are_hashed_at_rest(tmp_path: Path):
    data_dir = tmp_path / "d"
    with make_client(data_dir) as client:
        created = [new_key(client, scopes) for scopes in (["admin"], ["read"], ["write"])]
        created.append(new_key(client, ["read"], datasets=["a"]))
        secrets = [k["key"] for k in created]
        key_ids = [k["id"] for k in created]
        for secret in secrets:  # used at least once: lookups must not write it either
            assert client.get("/v1/limits", headers=auth(secret)).status_code == 200
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files, "the server wrote nothing under its data dir"
    stored = b"".join(p.read_bytes() for p in files)
    for key_id in key_ids:  # the scan sees the key records, so it would see a secret too
        assert key_id.encode() in stored
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"secret found in {path.relative_to(data_dir)}"
    # and the keys survive the restart (they are stored, as hashes)
    with make_client(data_dir) as client:
        for secret in secrets:
            assert client.get("/v1/limits", headers=auth(secret)).status_code == 200


def test_revoke_key(anon):
    admin = auth(ADMIN_KEY)
    created = new_key(anon, ["read"])
    secret = created["key"]
    assert anon.get("/v1/datasets", headers=auth(secret)).status_code == 200

    response = anon.delete(f"/v1/keys/{created['id']}", headers=admin)
    assert response.status_code == 204, response.text
    assert response.content == b""

    for headers in (auth(secret), bearer(secret)):
        refused = anon.get("/v1/datasets", headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert error_code(refused) == "invalid_key"
    listed = anon.get("/v1/keys", headers=admin).json()["keys"]
    assert created["id"] not in [k["id"] for k in listed]

    again = anon.delete(f"/v1/keys/{created['id']}", headers=admin)
    assert again.status_code == 404, again.text
    assert error_code(again).endswith("not_found")


def test_revoke_unknown_key_is_404(client):
    response = client.delete("/v1/keys/key_doesnotexist")
    assert response.status_code == 404, response.text
    assert error_code(response).endswith("not_found")


def test_revoking_one_key_leaves_the_others(client):
    first, second = new_key(client, ["read"]), new_key(client, ["read"])
    assert client.delete(f"/v1/keys/{first['id']}").status_code == 204
    assert client.get("/v1/datasets", headers=auth(first["key"])).status_code == 401
    assert client.get("/v1/datasets", headers=auth(second["key"])).status_code == 200


# -- every route x every scope -------------------------------------------------------------


@dataclass
class World:
    """One server (no workers: jobs stay queued) with a key per scope and a dataset `m`."""

    client: TestClient
    secrets: dict[str, str]
    job_id: str
    serial: Iterator[int] = field(default_factory=itertools.count)

    def fresh_dataset(self) -> str:
        dataset_id = f"tmp{next(self.serial)}"
        response = self.client.post(
            "/v1/datasets",
            json={"id": dataset_id, "columns": COLUMNS, "unique_key": ["k"]},
            headers=auth(ADMIN_KEY),
        )
        assert response.status_code == 201, response.text
        return dataset_id

    def queued_job(self) -> str:
        response = self.client.post(
            "/v1/datasets/m/records",
            params={"wait": 0},
            content=orjson.dumps([{"k": f"j{next(self.serial)}", "v": 1}]),
            headers={**auth(ADMIN_KEY), "content-type": "application/json"},
        )
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def fresh_key(self) -> str:
        return new_key(self.client, ["read"])["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    with make_client(tmp_path_factory.mktemp("scopes"), workers=0) as client:
        client.headers.pop("x-api-key", None)
        response = client.post(
            "/v1/datasets",
            json={"id": "m", "columns": COLUMNS, "unique_key": ["k"]},
            headers=auth(ADMIN_KEY),
        )
        assert response.status_code == 201, response.text
        secrets = {scope: new_key(client, [scope])["key"] for scope in SCOPES}
        world = World(client=client, secrets=secrets, job_id="")
        world.job_id = world.queued_job()
        yield world


Request = Callable[[World], dict[str, Any]]
JSON_BODY = {"content-type": "application/json"}

# (method, route path, scopes allowed, request builder)
ROUTES: list[tuple[str, str, set[str], Request]] = [
    ("POST", "/v1/datasets", {"admin"},
     lambda w: {"url": "/v1/datasets",
                "json": {"id": f"new{next(w.serial)}", "columns": COLUMNS}}),
    ("GET", "/v1/datasets", {"admin", "read"}, lambda w: {"url": "/v1/datasets"}),
    ("GET", "/v1/datasets/{dataset_id}", {"admin", "read"}, lambda w: {"url": "/v1/datasets/m"}),
    ("PATCH", "/v1/datasets/{dataset_id}", {"admin"},
     lambda w: {"url": f"/v1/datasets/{w.fresh_dataset()}", "json": {"name": "renamed"}}),
    ("DELETE", "/v1/datasets/{dataset_id}", {"admin"},
     lambda w: {"url": f"/v1/datasets/{w.fresh_dataset()}"}),
    ("POST", "/v1/schema/infer", {"admin", "read"},
     lambda w: {"url": "/v1/schema/infer", "json": {"sample": {"a": 1, "b": "x"}}}),
    ("GET", "/v1/datasets/{dataset_id}/instructions", {"admin", "read"},
     lambda w: {"url": "/v1/datasets/m/instructions"}),
    ("POST", "/v1/datasets/{dataset_id}/records", {"admin", "write"},
     lambda w: {"url": "/v1/datasets/m/records", "params": {"wait": 0}, "headers": JSON_BODY,
                "content": orjson.dumps([{"k": f"p{next(w.serial)}", "v": 2}])}),
    ("DELETE", "/v1/datasets/{dataset_id}/records", {"admin", "write"},
     lambda w: {"url": f"/v1/datasets/{w.fresh_dataset()}/records"}),
    ("GET", "/v1/datasets/{dataset_id}/records", {"admin", "read"},
     lambda w: {"url": "/v1/datasets/m/records"}),
    ("GET", "/v1/datasets/{dataset_id}/export", {"admin", "read"},
     lambda w: {"url": "/v1/datasets/m/export", "params": {"format": "csv"}}),
    ("GET", "/v1/jobs/{job_id}", {"admin", "read", "write"},
     lambda w: {"url": f"/v1/jobs/{w.job_id}"}),
    ("GET", "/v1/jobs", {"admin", "read", "write"}, lambda w: {"url": "/v1/jobs"}),
    ("POST", "/v1/jobs/{job_id}/cancel", {"admin", "write"},
     lambda w: {"url": f"/v1/jobs/{w.queued_job()}/cancel"}),
    ("POST", "/v1/keys", {"admin"},
     lambda w: {"url": "/v1/keys", "json": {"name": "made", "scopes": ["read"]}}),
    ("GET", "/v1/keys", {"admin"}, lambda w: {"url": "/v1/keys"}),
    ("DELETE", "/v1/keys/{key_id}", {"admin"}, lambda w: {"url": f"/v1/keys/{w.fresh_key()}"}),
    # not in the DESIGN table: limits are for any client sizing its batches
    ("GET", "/v1/limits", {"admin", "read", "write"}, lambda w: {"url": "/v1/limits"}),
]  # fmt: skip


def test_scope_table_covers_every_v1_route(world):
    table = {(method, path) for method, path, _, _ in ROUTES}
    served = {(m, p) for m, p in api_routes(world.client.app) if p.startswith("/v1/")}
    assert served - table == set(), "routes missing from the scope table"
    assert table - served == set(), "scope table names routes the app does not serve"


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize(
    ("method", "path", "allowed", "build"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_route_scope(world, method, path, allowed, build, scope):
    request = build(world)
    headers = {**request.pop("headers", {}), **auth(world.secrets[scope])}
    response = world.client.request(method, headers=headers, **request)
    if scope in allowed:
        assert response.status_code not in (401, 403), (scope, response.text)
        assert response.status_code < 500, (scope, response.text)
    else:
        assert response.status_code == 403, (scope, response.status_code, response.text)
        assert error_code(response) == "forbidden"


def test_write_key_cannot_read_rows_and_read_key_cannot_push(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    push(client, "d", [{"k": "a", "v": 1}])
    write = new_key(client, ["write"])["key"]
    read = new_key(client, ["read"])["key"]

    for url in ("/v1/datasets/d/records", "/v1/datasets/d/export"):
        refused = client.get(url, headers=auth(write))
        assert refused.status_code == 403, refused.text
        assert error_code(refused) == "forbidden"

    refused = client.post(
        "/v1/datasets/d/records",
        content=orjson.dumps([{"k": "a", "v": 99}, {"k": "b", "v": 2}]),
        headers={**auth(read), "content-type": "application/json"},
        params={"wait": 5},
    )
    assert refused.status_code == 403, refused.text
    assert error_code(refused) == "forbidden"
    refused = client.delete("/v1/datasets/d/records", headers=auth(read), params={"wait": 5})
    assert refused.status_code == 403, refused.text

    assert rows_of(client, "d") == [{"k": "a", "v": 1}]
    assert len(client.get("/v1/jobs", params={"dataset": "d"}).json()["jobs"]) == 1

    # while each does what it is for
    job = push(client, "d", [{"k": "b", "v": 2}], headers=auth(write))
    assert job["status"] == "succeeded"
    assert client.get("/v1/datasets/d/records", headers=auth(read)).status_code == 200


def test_multi_scope_key_has_the_union(client):
    create_dataset(client, "d", COLUMNS)
    both = new_key(client, ["read", "write"])["key"]
    job = push(client, "d", [{"k": "a", "v": 1}], headers=auth(both))
    assert job["status"] == "succeeded"
    assert client.get("/v1/datasets/d/records", headers=auth(both)).json()["rows"] == [
        {"k": "a", "v": 1}
    ]
    refused = client.get("/v1/keys", headers=auth(both))
    assert refused.status_code == 403, refused.text
    assert error_code(refused) == "forbidden"


# -- keys limited to datasets --------------------------------------------------------------


@pytest.fixture
def two_datasets(client) -> dict[str, str]:
    """Datasets a and b with one row and one job each; returns their job ids."""
    jobs = {}
    for dataset_id in ("a", "b"):
        create_dataset(client, dataset_id, COLUMNS, unique_key=["k"])
        jobs[dataset_id] = push(client, dataset_id, [{"k": dataset_id, "v": 1}])["id"]
    return jobs


def test_dataset_limited_read_key(client, two_datasets):
    secret = new_key(client, ["read"], datasets=["a"])["key"]
    headers = auth(secret)
    for suffix in ("", "/records", "/export", "/instructions"):
        allowed = client.get(f"/v1/datasets/a{suffix}", headers=headers)
        assert allowed.status_code == 200, (suffix, allowed.text)
        refused = client.get(f"/v1/datasets/b{suffix}", headers=headers)
        assert refused.status_code == 403, (suffix, refused.text)
        assert error_code(refused) == "forbidden"

    listed = client.get("/v1/datasets", headers=headers)
    assert listed.status_code == 200, listed.text
    assert [d["id"] for d in listed.json()["datasets"]] == ["a"]


def test_dataset_limited_write_key(client, two_datasets):
    secret = new_key(client, ["write"], datasets=["a"])["key"]
    headers = auth(secret)
    job = push(client, "a", [{"k": "a2", "v": 2}], headers=headers)
    assert job["status"] == "succeeded"

    body = orjson.dumps([{"k": "b", "v": 99}])
    refused = client.post(
        "/v1/datasets/b/records",
        content=body,
        params={"wait": 5},
        headers={**headers, "content-type": "application/json"},
    )
    assert refused.status_code == 403, refused.text
    assert error_code(refused) == "forbidden"
    refused = client.delete("/v1/datasets/b/records", headers=headers, params={"wait": 5})
    assert refused.status_code == 403, refused.text
    assert error_code(refused) == "forbidden"

    assert rows_of(client, "b") == [{"k": "b", "v": 1}]
    assert len(client.get("/v1/jobs", params={"dataset": "b"}).json()["jobs"]) == 1


def test_dataset_limited_key_sees_only_its_jobs(client, two_datasets):
    for scopes in (["read"], ["write"]):
        headers = auth(new_key(client, scopes, datasets=["a"])["key"])
        listed = client.get("/v1/jobs", headers=headers)
        assert listed.status_code == 200, listed.text
        jobs = listed.json()["jobs"]
        assert [j["id"] for j in jobs] == [two_datasets["a"]], (scopes, jobs)

        own = client.get(f"/v1/jobs/{two_datasets['a']}", headers=headers)
        assert own.status_code == 200, own.text
        other = client.get(f"/v1/jobs/{two_datasets['b']}", headers=headers)
        assert other.status_code in (403, 404), other.text
        assert error_code(other) == "forbidden" or error_code(other).endswith("not_found")

        filtered = client.get("/v1/jobs", params={"dataset": "b"}, headers=headers)
        assert filtered.status_code in (200, 403), filtered.text
        if filtered.status_code == 200:
            assert filtered.json()["jobs"] == []

    # the admin sees both
    assert {j["dataset_id"] for j in client.get("/v1/jobs").json()["jobs"]} == {"a", "b"}


# -- first start: the bootstrap admin key --------------------------------------------------


def _working_admin_tokens(client: TestClient, text: str) -> list[str]:
    """The whitespace-separated tokens of `text` that the server accepts as an admin key."""
    found = []
    for token in set(text.split()):
        if len(token) < 16 or token == ADMIN_KEY:
            continue
        if client.get("/v1/keys", headers=auth(token)).status_code == 200:
            found.append(token)
    return found


def test_bootstrap_admin_key_printed_once(tmp_path: Path, capsys):
    data_dir = tmp_path / "fresh"
    settings = Settings(data_dir=data_dir, admin_key=None)
    capsys.readouterr()
    with TestClient(create_app(settings)) as client:
        out = capsys.readouterr().out
        assert out.strip(), "no admin key was printed on first start"
        tokens = _working_admin_tokens(client, out)
        assert len(tokens) == 1, out
        secret = tokens[0]
        assert out.count(secret) == 1, out

        assert client.get("/v1/datasets").status_code == 401  # no key, no access
        for headers in (auth(secret), bearer(secret)):
            assert client.get("/v1/keys", headers=headers).status_code == 200
        created = client.post(
            "/v1/datasets", json={"id": "d", "columns": COLUMNS}, headers=auth(secret)
        )
        assert created.status_code == 201, created.text
        other = client.post(
            "/v1/keys", json={"name": "ops", "scopes": ["admin"]}, headers=auth(secret)
        )
        assert other.status_code == 201, other.text
        keys_before = client.get("/v1/keys", headers=auth(secret)).json()["keys"]
        assert len(keys_before) == 2

    capsys.readouterr()
    with TestClient(create_app(Settings(data_dir=data_dir, admin_key=None))) as client:
        out = capsys.readouterr().out
        assert secret not in out
        assert _working_admin_tokens(client, out) == [], out
        assert client.get("/v1/keys", headers=auth(secret)).status_code == 200
        keys_after = client.get("/v1/keys", headers=auth(secret)).json()["keys"]
        assert [k["id"] for k in keys_after] == [k["id"] for k in keys_before]


def test_no_bootstrap_key_when_admin_key_is_set(tmp_path: Path, capsys):
    capsys.readouterr()
    with make_client(tmp_path / "d") as client:
        out = capsys.readouterr().out
        assert _working_admin_tokens(client, out) == [], out
        assert client.get("/v1/keys").json()["keys"] == []
