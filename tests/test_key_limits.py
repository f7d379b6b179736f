"""Keys limited to datasets stay inside their datasets (issue 20 items 4 and 11).

Covers: an admin key limited to datasets can mint only keys limited to some of its own
datasets, lists and revokes only those keys, and creates, changes and drops only its own
datasets; dialect lookups by name (Obsrv path, D·engage `tableName`) look only among the
key's datasets, so neither a match nor an ambiguity reveals another dataset's id.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import ADMIN_KEY, create_dataset

COLUMNS = [{"name": "k", "type": "string"}, {"name": "v", "type": "integer"}]


def new_key(client: TestClient, scopes: list[str], datasets: list[str] | None = None,
            by: str = ADMIN_KEY) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"name": "k", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body, headers={"x-api-key": by})
    assert response.status_code == 201, response.text
    return response.json()


def as_key(secret: str) -> dict[str, str]:
    return {"x-api-key": secret}


def forbidden(response) -> str:
    assert response.status_code == 403, response.text
    return response.json()["error"]["code"]


@pytest.fixture
def limited(client: TestClient) -> str:
    """An admin key limited to datasets `a` and `b` (`a` exists, `b` not yet; `x` exists)."""
    for dataset_id in ("a", "x"):
        create_dataset(client, dataset_id, COLUMNS, unique_key=["k"])
    return new_key(client, ["admin"], ["a", "b"])["key"]


# -- item 4: keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"scopes": ["admin"]},
        {"scopes": ["read"]},
        {"scopes": ["admin"], "datasets": ["x"]},
        {"scopes": ["write"], "datasets": ["a", "x"]},
    ],
    ids=["unlimited-admin", "unlimited-read", "other-dataset", "partly-other"],
)
def test_limited_admin_cannot_mint_a_key_reaching_further(client, limited, body):
    response = client.post("/v1/keys", json={"name": "escalate", **body}, headers=as_key(limited))
    assert forbidden(response) == "forbidden"
    assert [k["name"] for k in client.get("/v1/keys").json()["keys"]].count("escalate") == 0


def test_limited_admin_mints_keys_inside_its_datasets(client, limited):
    made = new_key(client, ["admin"], ["b"], by=limited)
    assert made["datasets"] == ["b"] and made["scopes"] == ["admin"]
    made = new_key(client, ["read", "write"], ["a", "b"], by=limited)
    # the new key works, within its datasets only
    assert client.get("/v1/datasets/a", headers=as_key(made["key"])).status_code == 200
    assert client.get("/v1/datasets/x", headers=as_key(made["key"])).status_code == 403


def test_limited_admin_lists_and_revokes_only_keys_inside_its_datasets(client, limited):
    unlimited = new_key(client, ["read"])
    elsewhere = new_key(client, ["write"], ["a", "x"])
    inside = new_key(client, ["write"], ["a"])
    listed = {k["id"] for k in client.get("/v1/keys", headers=as_key(limited)).json()["keys"]}
    assert inside["id"] in listed
    assert unlimited["id"] not in listed and elsewhere["id"] not in listed
    everything = {k["id"] for k in client.get("/v1/keys").json()["keys"]}
    assert {unlimited["id"], elsewhere["id"], inside["id"]} <= everything

    for other in (unlimited, elsewhere):
        response = client.delete(f"/v1/keys/{other['id']}", headers=as_key(limited))
        assert response.status_code == 404, response.text
        assert client.get("/v1/limits", headers=as_key(other["key"])).status_code == 200
    response = client.delete(f"/v1/keys/{inside['id']}", headers=as_key(limited))
    assert response.status_code == 204, response.text
    assert client.get("/v1/limits", headers=as_key(inside["key"])).status_code == 401


# -- item 4: datasets -----------------------------------------------------------------------


def test_limited_admin_creates_only_its_datasets(client, limited):
    headers = as_key(limited)
    body = {"columns": COLUMNS}
    assert forbidden(client.post("/v1/datasets", json={"id": "y", **body}, headers=headers))
    assert forbidden(client.post("/v1/datasets", json=body, headers=headers))  # generated id
    created = client.post("/v1/datasets", json={"id": "b", **body}, headers=headers)
    assert created.status_code == 201, created.text
    ids = {d["id"] for d in client.get("/v1/datasets").json()["datasets"]}
    assert ids == {"a", "b", "x"}


def test_limited_admin_drops_and_changes_only_its_datasets(client, limited):
    headers = as_key(limited)
    assert forbidden(client.delete("/v1/datasets/x", headers=headers))
    assert forbidden(client.delete("/v1/datasets/nope", headers=headers))
    patch = {"name": "mine now"}
    assert forbidden(client.patch("/v1/datasets/x", json=patch, headers=headers))
    assert client.get("/v1/datasets/x").json()["name"] == "x"
    assert client.patch("/v1/datasets/a", json=patch, headers=headers).status_code == 200
    assert client.delete("/v1/datasets/a", headers=headers).status_code == 204
    assert {d["id"] for d in client.get("/v1/datasets").json()["datasets"]} == {"x"}


# -- item 11: dialect name lookups ----------------------------------------------------------


@pytest.fixture
def hidden(client: TestClient) -> str:
    """Datasets hid_1 and hid_2 named "shared", hid_3 named "secret", and the key's own
    dataset `mine`, also named "shared"; returns a write key limited to `mine`."""
    for dataset_id, name in (("hid_1", "shared"), ("hid_2", "shared"), ("hid_3", "secret"),
                             ("mine", "shared")):  # fmt: skip
        create_dataset(client, dataset_id, COLUMNS, unique_key=["k"], name=name)
    return new_key(client, ["write"], ["mine"])["key"]


def obsrv(client: TestClient, ident: str, key: str):
    body = {"id": "api.data.in", "params": {"msgid": "m"}, "data": [{"k": "a", "v": 1}]}
    return client.post(f"/compat/obsrv/v2/data/in/{ident}", json=body, headers=as_key(key))


def dengage(client: TestClient, table_name: str, key: str):
    body = {
        "tableName": table_name,
        "columnMapping": [
            {"tableColumn": "k", "fileColumnHeader": "k"},
            {"tableColumn": "v", "fileColumnHeader": "v"},
        ],
        "fileContent": base64.b64encode(b"k;v\na;1\n").decode(),
    }
    return client.post(
        "/compat/dengage/rest/dataspace/async/upsert",
        json=body,
        headers={"Authorization": f"Bearer {key}", "x-api-key": ""},
    )


@pytest.mark.parametrize("send", [obsrv, dengage], ids=["obsrv", "dengage"])
def test_name_lookup_reveals_no_other_dataset(client, hidden, send):
    for name in ("secret", "hid_3", "shared-not", "hid_1"):
        response = send(client, name, hidden)
        assert response.status_code == 403, response.text
        assert "hid_" not in response.text.replace(name, ""), response.text
    # "shared" names three datasets, but only one the key may use: no ambiguity, no ids
    response = send(client, "shared", hidden)
    assert response.status_code == 200, response.text
    job_id = response.json().get("jobId") or response.json()["result"]["jobId"]
    assert client.get(f"/v1/jobs/{job_id}").json()["dataset_id"] == "mine"


def test_unlimited_key_still_hears_of_an_ambiguous_name(client, hidden):
    response = obsrv(client, "shared", ADMIN_KEY)
    assert response.status_code == 400, response.text
    assert "hid_1" in response.text  # the caller may use all of them: the ids help it
