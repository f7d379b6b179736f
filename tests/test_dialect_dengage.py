"""D·engage DataSpace dialect, `/compat/dengage` (DESIGN §5.3), driven as a D·engage client would.

Covers: async upsert of a base64 CSV (`;` and `,`, BOM and CRLF) through
`columnMapping` with a constant column and an unmapped file column,
`overwriteWithEmpty`, append on a table without key, the sync upsert (answered
after the write, at most `max_sync_rows` rows), async delete by a key file, the
job status call, every documented error with its code, and that a D·engage push
leaves the same dataset and job as the same push through /v1.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from conftest import ADMIN_KEY, create_dataset, push, rows_of

BASE = "/compat/dengage/rest/dataspace"
BEARER = {"Authorization": f"Bearer {ADMIN_KEY}"}
COLUMNS = [
    {"name": "product_id", "type": "integer"},
    {"name": "name", "type": "string"},
    {"name": "price", "type": "number"},
    {"name": "currency", "type": "string"},
    {"name": "updated_at", "type": "datetime"},
]
MAPPING = [
    {"tableColumn": "product_id", "fileColumnHeader": "ProductId"},
    {"tableColumn": "name", "fileColumnHeader": "ProductName"},
    {"tableColumn": "price", "fileColumnHeader": "Price"},
    {"tableColumn": "currency", "value": "EUR"},  # no fileColumnHeader: a constant
    {"tableColumn": "updated_at", "fileColumnHeader": "LastUpdate"},
]
CSV = (
    "ProductId;ProductName;Price;LastUpdate;Warehouse\n"
    "1;Blue shirt;19.90;2024-03-01 10:15:00;north\n"
    "2;Red shirt;21.5;2024-03-02T08:00:00;south\n"
    '3;"Socks; wool";4;2024-03-03;north\n'
)
STORED = [
    {"product_id": 1, "name": "Blue shirt", "price": 19.9, "currency": "EUR",
     "updated_at": "2024-03-01T10:15:00Z"},
    {"product_id": 2, "name": "Red shirt", "price": 21.5, "currency": "EUR",
     "updated_at": "2024-03-02T08:00:00Z"},
    {"product_id": 3, "name": "Socks; wool", "price": 4.0, "currency": "EUR",
     "updated_at": "2024-03-03T00:00:00Z"},
]  # fmt: skip
FINAL = ("Completed", "Failed")


def products(client, dataset_id: str = "products", keyed: bool = True, **extra: Any) -> str:
    create_dataset(client, dataset_id, COLUMNS, unique_key=["product_id"] if keyed else [], **extra)
    return dataset_id


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def upsert_body(csv_text: str | bytes = CSV, table: str = "products", **extra: Any) -> dict:
    return {
        "tableName": table, "jobName": "nightly products", "columnMapping": MAPPING,
        "fileContent": b64(csv_text), **extra,
    }  # fmt: skip


def async_upsert(client, body: dict[str, Any], headers: dict[str, str] | None = BEARER):
    return client.post(f"{BASE}/async/upsert", json=body, headers=headers)


def async_delete(client, body: dict[str, Any]):
    return client.request("DELETE", f"{BASE}/async/delete", json=body, headers=BEARER)


def accepted(response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"jobId"}, body
    return body["jobId"]


def job_status(client, job_id: str) -> dict[str, Any]:
    response = client.get(f"{BASE}/async/{job_id}", headers=BEARER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "jobId", "jobName", "status", "totalRowCount", "successRowCount", "errorRowCount",
        "errors",
    }, body  # fmt: skip
    return body


def wait_status(client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = job_status(client, job_id)
        if body["status"] in FINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def dengage_error(response, status_code: int, code: int | None) -> str:
    assert response.status_code == status_code, response.text
    body = response.json()
    if code is None:
        assert set(body) == {"message"}, body
    else:
        assert set(body) == {"code", "message"}, body
        assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body["message"]


def as_bearer(client) -> None:
    """Make the test client send the admin key as D·engage/Graphite clients do, as a Bearer
    token, so that a per-request Authorization header (another key) takes its place."""
    client.headers.pop("x-api-key", None)
    client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"


def new_key(client, scopes: list[str], datasets: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": "dengage", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


# -- async upsert --------------------------------------------------------------------------


def test_csv_with_a_constant_mapping_is_upserted_and_read_back(client):
    products(client)
    job_id = accepted(async_upsert(client, upsert_body()))
    assert wait_status(client, job_id) == {
        "jobId": job_id, "jobName": "nightly products", "status": "Completed",
        "totalRowCount": 3, "successRowCount": 3, "errorRowCount": 0, "errors": [],
    }  # fmt: skip
    assert rows_of(client, "products", order_by="product_id") == STORED
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["source"], job["method"], job["stats"]["inserted"]) == ("dengage", "upsert", 3)


def test_table_named_by_id(client):
    products(client, "tbl-0f3e", name="Products")
    body = {**upsert_body(), "tableId": "tbl-0f3e"}
    del body["tableName"]
    wait_status(client, accepted(async_upsert(client, body)))
    assert len(rows_of(client, "tbl-0f3e")) == 3
    body = upsert_body(table="Products")  # tableName is the dataset's name
    assert wait_status(client, accepted(async_upsert(client, body)))["status"] == "Completed"


def test_comma_delimiter_bom_and_crlf(client):
    products(client)
    text = "\ufeffProductId,ProductName,Price,LastUpdate\r\n"
    text += "1,Blue shirt,19.90,2024-03-01 10:15:00\r\n"
    answer = wait_status(client, accepted(async_upsert(client, upsert_body(text))))
    assert answer["successRowCount"] == 1
    assert rows_of(client, "products") == STORED[:1]


def test_upsert_merges_and_empty_cells_keep_the_stored_value(client):
    products(client)
    wait_status(client, accepted(async_upsert(client, upsert_body())))
    update = "ProductId;ProductName;Price;LastUpdate\n1;Blue shirt XL;;2024-04-01 00:00:00\n"
    answer = wait_status(client, accepted(async_upsert(client, upsert_body(update))))
    assert answer["successRowCount"] == 1
    row = rows_of(client, "products", product_id=1)[0]
    assert row["name"] == "Blue shirt XL" and row["price"] == 19.9  # empty: kept
    assert row["updated_at"] == "2024-04-01T00:00:00Z"


def test_overwrite_with_empty_writes_null(client):
    products(client)
    wait_status(client, accepted(async_upsert(client, upsert_body())))
    update = "ProductId;ProductName;Price;LastUpdate\n1;;;2024-04-01\n"
    body = upsert_body(update, overwriteWithEmpty=True)
    wait_status(client, accepted(async_upsert(client, body)))
    row = rows_of(client, "products", product_id=1)[0]
    assert (row["name"], row["price"], row["currency"]) == (None, None, "EUR")


def test_table_without_key_appends(client):
    products(client, keyed=False)
    wait_status(client, accepted(async_upsert(client, upsert_body())))
    answer = wait_status(client, accepted(async_upsert(client, upsert_body())))
    assert answer["status"] == "Completed"
    assert len(rows_of(client, "products")) == 6
    assert client.get(f"/v1/jobs/{answer['jobId']}").json()["method"] == "insert"


def test_bad_cells_are_row_errors_on_the_job(client):
    products(client)
    text = "ProductId;ProductName;Price;LastUpdate\n1;a;cheap;2024-01-01\n2;b;3;2024-01-01\n"
    answer = wait_status(client, accepted(async_upsert(client, upsert_body(text))))
    assert answer["status"] == "Completed"
    assert (answer["totalRowCount"], answer["successRowCount"], answer["errorRowCount"]) == (
        2, 1, 1,
    )  # fmt: skip
    assert [(e["row"], e["column"], e["code"]) for e in answer["errors"]] == [
        (0, "price", "invalid_value")
    ]
    assert [r["product_id"] for r in rows_of(client, "products")] == [2]


def test_unmapped_file_column_named_like_a_constant_column_is_ignored(client):
    products(client)
    text = "ProductId;ProductName;Price;LastUpdate;currency\n1;a;1;2024-01-01;USD\n"
    wait_status(client, accepted(async_upsert(client, upsert_body(text))))
    assert rows_of(client, "products")[0]["currency"] == "EUR"


def test_undecodable_file_fails_the_job(client):
    products(client)
    text = 'ProductId;ProductName;Price;LastUpdate\n1;"open;1;2024-01-01\n'
    answer = wait_status(client, accepted(async_upsert(client, upsert_body(text))))
    assert answer["status"] == "Failed"
    assert answer["errors"][-1]["code"] == "invalid_payload"
    assert rows_of(client, "products") == []


# -- sync upsert ---------------------------------------------------------------------------


def sync_upsert(client, body: dict[str, Any]):
    return client.post(f"{BASE}/sync/upsert", json=body, headers=BEARER)


def test_sync_upsert_is_applied_before_the_answer(client):
    products(client)
    body = {
        "tableName": "products",
        "columns": ["product_id", "name", "price", "currency", "updated_at"],
        "rows": [
            [1, "Blue shirt", "19.90", "EUR", "2024-03-01 10:15:00"],
            {"values": ["2", "Red shirt", 21.5, "EUR", "2024-03-02T08:00:00"]},
        ],
    }
    response = sync_upsert(client, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "Completed" and answer["jobName"] is None
    assert (answer["totalRowCount"], answer["successRowCount"], answer["errorRowCount"]) == (
        2, 2, 0,
    )  # fmt: skip
    assert rows_of(client, "products", order_by="product_id") == STORED[:2]


def test_sync_upsert_row_of_wrong_width_is_a_row_error(client):
    products(client)
    columns = ["product_id", "name", "price", "currency", "updated_at"]
    rows = [[1, "a", 1, "EUR", "2024-01-01"], [2, "b"]]
    answer = sync_upsert(client, {"tableName": "products", "columns": columns, "rows": rows}).json()
    assert answer["errorRowCount"] == 1 and answer["errors"][0]["code"] == "wrong_shape"


def test_sync_upsert_takes_at_most_max_sync_rows(client):
    products(client)
    columns = ["product_id", "name", "price", "currency", "updated_at"]
    rows = [[i, "x", 1, "EUR", "2024-01-01"] for i in range(1001)]
    body = {"tableName": "products", "columns": columns, "rows": rows}
    message = dengage_error(sync_upsert(client, body), 400, 11)
    assert "1000" in message
    assert rows_of(client, "products") == []
    body["rows"] = rows[:1000]
    assert sync_upsert(client, body).json()["successRowCount"] == 1000


def test_sync_upsert_needs_every_table_column(client):
    products(client)
    body = {"tableName": "products", "columns": ["product_id", "name"], "rows": [[1, "a"]]}
    message = dengage_error(sync_upsert(client, body), 400, 1)
    assert "price" in message and "currency" in message
    body["columns"] = ["product_id", "nope"]
    assert "nope" in dengage_error(sync_upsert(client, body), 400, 1)


# -- async delete --------------------------------------------------------------------------


def test_delete_by_a_key_file(client):
    products(client)
    wait_status(client, accepted(async_upsert(client, upsert_body())))
    body = {
        "tableName": "products",
        "jobName": "remove discontinued",
        "columnMapping": [{"tableColumn": "product_id", "fileColumnHeader": "Id"}],
        "fileContent": b64("Id\n2\n99\n"),
    }
    answer = wait_status(client, accepted(async_delete(client, body)))
    assert answer["status"] == "Completed" and answer["jobName"] == "remove discontinued"
    assert answer["totalRowCount"] == 2 and answer["errorRowCount"] == 0
    job = client.get(f"/v1/jobs/{answer['jobId']}").json()
    assert job["method"] == "delete"
    assert (job["stats"]["deleted"], job["stats"]["not_found"]) == (1, 1)
    assert [r["product_id"] for r in rows_of(client, "products", order_by="product_id")] == [1, 3]


def test_delete_needs_the_key_columns_mapped_and_a_key(client):
    products(client)
    body = {
        "tableName": "products",
        "columnMapping": [{"tableColumn": "name", "fileColumnHeader": "Name"}],
        "fileContent": b64("Name\nx\n"),
    }
    assert "product_id" in dengage_error(async_delete(client, body), 400, 1)
    products(client, "log", keyed=False)
    body["tableName"] = "log"
    dengage_error(async_delete(client, body), 400, 11)


# -- status --------------------------------------------------------------------------------


def test_status_of_a_waiting_job(make_server):
    server = make_server(workers=0)
    products(server)
    job_id = accepted(async_upsert(server, upsert_body()))
    answer = job_status(server, job_id)
    assert (answer["status"], answer["totalRowCount"]) == ("Waiting", 0)
    server.post(f"/v1/jobs/{job_id}/cancel")
    assert job_status(server, job_id)["status"] == "Failed"


def test_status_needs_read_or_write(client):
    as_bearer(client)
    products(client)
    job_id = accepted(async_upsert(client, upsert_body()))
    for scopes in (["read"], ["write"]):
        key = new_key(client, scopes)
        response = client.get(f"{BASE}/async/{job_id}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text


def test_unknown_job_is_404(client):
    response = client.get(f"{BASE}/async/job_nope", headers=BEARER)
    assert "job_nope" in dengage_error(response, 404, 1)


# -- errors --------------------------------------------------------------------------------


def _mapping_without(column: str) -> list[dict[str, Any]]:
    return [m for m in MAPPING if m["tableColumn"] != column]


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"columnMapping": _mapping_without("price")}, 1, "every table column must be mapped"),
        ({"columnMapping": [*MAPPING, {"tableColumn": "color", "fileColumnHeader": "C"}]}, 1,
         "color"),
        ({"columnMapping": [*MAPPING[:2], {"tableColumn": "price", "fileColumnHeader": "Cost"},
                            *MAPPING[3:]]}, 1, "Cost"),
        ({"columnMapping": [*MAPPING, MAPPING[0]]}, 1, "more than once"),
        ({"columnMapping": [*MAPPING[:3], {"tableColumn": "currency", "value": [1]},
                            *MAPPING[4:]]}, 1, "currency"),
        ({"columnMapping": []}, 1, "columnMapping"),
        ({"tableName": "nope"}, 1, "nope"),
        ({"tableName": None}, 1, "tableId or tableName"),
        ({"fileContent": "@@not base64@@"}, 11, "base64"),
        ({"fileContent": None}, 1, "fileContent"),
        ({"fileContent": b64("\n1;2\n")}, 11, "header"),
        ({"overwriteWithEmpty": "yes"}, 1, "overwriteWithEmpty"),
    ],
    ids=[
        "unmapped-table-column", "unknown-table-column", "header-not-in-file", "mapped-twice",
        "bad-constant", "empty-mapping", "unknown-table", "no-table", "bad-base64", "no-file",
        "no-header", "bad-flag",
    ],
)  # fmt: skip
def test_bad_request_is_400_with_its_code(client, change, code, words):
    products(client)
    body = {**upsert_body(), **change}
    message = dengage_error(async_upsert(client, body), 400, code)
    assert words in message, message
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_body_that_is_not_json_is_400_validation_fails(client):
    response = client.post(
        f"{BASE}/async/upsert", content=b"{", headers={**BEARER, "content-type": "application/json"}
    )
    dengage_error(response, 400, 11)


def test_missing_and_wrong_keys_are_401(client):
    products(client)
    client.headers.pop("x-api-key")
    dengage_error(async_upsert(client, upsert_body(), headers=None), 401, None)
    response = async_upsert(client, upsert_body(), headers={"Authorization": "Bearer nope"})
    dengage_error(response, 401, None)


def test_scopes_are_403_code_10(client):
    as_bearer(client)
    products(client)
    products(client, "other")
    read = new_key(client, ["read"])
    limited = new_key(client, ["write"], datasets=["other"])
    for key in (read, limited):
        response = async_upsert(client, upsert_body(), headers={"Authorization": f"Bearer {key}"})
        dengage_error(response, 403, 10)
    response = async_upsert(
        client, upsert_body(table="other"), headers={"Authorization": f"Bearer {limited}"}
    )
    accepted(response)


def test_full_queue_is_429(make_server):
    server = make_server(workers=0, queue_max_bytes=300)
    products(server)
    accepted(async_upsert(server, upsert_body()))
    response = async_upsert(server, upsert_body())
    dengage_error(response, 429, None)
    assert response.headers["retry-after"] == "1"


def test_unexpected_failure_is_500_code_999(client, monkeypatch):
    products(client)
    job_id = accepted(async_upsert(client, upsert_body()))
    wait_status(client, job_id)  # the worker is done with the store before it breaks

    def broken(job_id: str):
        raise RuntimeError("store is down")

    monkeypatch.setattr(client.app.state.services.store, "get_job", broken)
    response = client.get(f"{BASE}/async/{job_id}", headers=BEARER)
    assert dengage_error(response, 500, 999) == "internal server error"


def test_too_large_body_is_413(make_server):
    server = make_server(max_body_bytes=300)
    products(server)
    dengage_error(async_upsert(server, upsert_body()), 413, 11)


# -- the same push through /v1 -------------------------------------------------------------


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("method", "status", "stats", "errors", "errors_total", "error")}


def test_same_push_through_v1_leaves_the_same_dataset_and_job(client):
    products(client, "via_dengage")
    products(client, "via_v1")
    text = (
        "ProductId;ProductName;Price;LastUpdate\n1;a;1.5;2024-01-01\n2;b;cheap;2024-01-02\n"
        "x;c;3;2024-01-03\n1;a2;;2024-01-04\n"
    )
    answer = wait_status(client, accepted(async_upsert(client, upsert_body(text, "via_dengage"))))
    dialect = client.get(f"/v1/jobs/{answer['jobId']}").json()
    native_csv = (
        "product_id;name;price;currency;updated_at\n1;a;1.5;EUR;2024-01-01\n"
        "2;b;cheap;EUR;2024-01-02\nx;c;3;EUR;2024-01-03\n1;a2;1.5;EUR;2024-01-04\n"
    )
    native = push(client, "via_v1", native_csv.encode(), "upsert", content_type="text/csv")
    assert comparable(dialect) == comparable(native)
    assert dialect["stats"]["failed"] == 2
    assert (dialect["source"], native["source"]) == ("dengage", "v1")
    assert rows_of(client, "via_dengage", order_by="product_id") == rows_of(
        client, "via_v1", order_by="product_id"
    )


def test_sync_upsert_and_v1_leave_the_same_dataset_and_job(client):
    products(client, "via_dengage")
    products(client, "via_v1")
    names = ["product_id", "name", "price", "currency", "updated_at"]
    rows = [[1, "a", 1.5, "EUR", "2024-01-01"], [2, "b", "cheap", "EUR", "2024-01-02"]]
    body = {"tableName": "via_dengage", "columns": names, "rows": rows}
    dialect = client.get(f"/v1/jobs/{sync_upsert(client, body).json()['jobId']}").json()
    native = push(client, "via_v1", [dict(zip(names, r, strict=True)) for r in rows])
    assert comparable(dialect) == comparable(native)
    assert rows_of(client, "via_dengage") == rows_of(client, "via_v1")
