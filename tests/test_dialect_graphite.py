"""Graphite Note Dataset API dialect, `/compat/graphite` (DESIGN §5.4), driven as its client would.

Covers: the documented recipe (CSV → JSON rows → gzip → base64) and the plain
JSON-string `insert-data`, append and `append: false` (a replace), the answer given
after the write with its `rows-count`, `dataset-complete`, every documented error
(unknown dataset, columns that do not match, bad encodings, keys), and that a
Graphite fill leaves the same dataset and job as the same push through /v1.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
from typing import Any

import pytest

from conftest import ADMIN_KEY, create_dataset, push, rows_of

BASE = "/compat/graphite/api"
BEARER = {"Authorization": f"Bearer {ADMIN_KEY}"}
RETAIL_CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850
536365,84406B,CREAM CUPID HEARTS COAT HANGER,8,2010-12-01 08:26:00,2.75,17850
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,17850
"""
GRAPHITE_COLUMNS = [
    {"name": "InvoiceNo", "alias": "InvoiceNo", "type": "dimension", "subtype": "text"},
    {"name": "StockCode", "alias": "StockCode", "type": "dimension", "subtype": "text"},
    {"name": "Description", "alias": "Description", "type": "dimension", "subtype": "text"},
    {"name": "Quantity", "alias": "Quantity", "type": "measure", "subtype": "numeric"},
    {"name": "InvoiceDate", "alias": "InvoiceDate", "type": "dimension", "subtype": "date",
     "format": "Y-m-d H:i:s"},
    {"name": "UnitPrice", "alias": "UnitPrice", "type": "measure", "subtype": "numeric"},
    {"name": "CustomerID", "alias": "CustomerID", "type": "measure", "subtype": "integer"},
]  # fmt: skip
DATASET_COLUMNS = [
    {"name": "InvoiceNo", "type": "string"},
    {"name": "StockCode", "type": "string"},
    {"name": "Description", "type": "string"},
    {"name": "Quantity", "type": "number"},
    {"name": "InvoiceDate", "type": "datetime"},
    {"name": "UnitPrice", "type": "number"},
    {"name": "CustomerID", "type": "integer"},
]
DOC_INSERT_DATA = (
    '[["536365","85123A","WHITE HANGING HEART T-LIGHT HOLDER",6,"2010-12-01 08:26:00",2.55,17850],'
    ' ["536365","71053","WHITE METAL LANTERN",6,"2010-12-01 08:26:00",3.39,17850]]'
)


def retail(client, dataset_id: str = "eca2ad3940e3") -> str:
    create_dataset(client, dataset_id, DATASET_COLUMNS)
    return dataset_id


def recipe(csv_text: str = RETAIL_CSV) -> tuple[list[list[str]], str]:
    """Graphite Note's sample: read the CSV, rows to JSON, gzip, base64."""
    reader = csv.reader(io.StringIO(csv_text))
    next(reader)  # the header; columns are described separately
    rows = list(reader)
    encoded = base64.b64encode(gzip.compress(json.dumps(rows).encode("utf-8"))).decode("utf-8")
    return rows, encoded


def fill_body(insert_data: str, dataset: str = "eca2ad3940e3", **extra: Any) -> dict[str, Any]:
    return {
        "user-code": "0f02b4d4f9ae", "dataset-code": dataset, "columns": GRAPHITE_COLUMNS,
        "insert-data": insert_data, "append": True, "compressed": False, **extra,
    }  # fmt: skip


def fill(client, body: dict[str, Any], headers: dict[str, str] | None = BEARER):
    return client.post(f"{BASE}/dataset-fill", json=body, headers=headers)


def filled(response, dataset: str, rows: int) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {
        "data": {"status": "success", "details": {"dataset-code": dataset, "rows-count": rows}}
    }


def graphite_error(response, status_code: int, code: str) -> str:
    assert response.status_code == status_code, response.text
    body = response.json()
    assert set(body) == {"data"} and set(body["data"]) == {"status", "details"}, body
    assert body["data"]["status"] == "error"
    assert set(body["data"]["details"]) == {"code", "message"}, body
    assert body["data"]["details"]["code"] == code, body
    return body["data"]["details"]["message"]


def as_records(rows: list[list[Any]]) -> list[dict[str, Any]]:
    names = [c["name"] for c in GRAPHITE_COLUMNS]
    return [dict(zip(names, row, strict=True)) for row in rows]


def stored(rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [
        {
            "InvoiceNo": str(r[0]), "StockCode": str(r[1]), "Description": r[2],
            "Quantity": float(r[3]), "InvoiceDate": str(r[4]).replace(" ", "T") + "Z",
            "UnitPrice": float(r[5]), "CustomerID": int(r[6]),
        }
        for r in rows
    ]  # fmt: skip


def as_bearer(client) -> None:
    """Make the test client send the admin key as D·engage/Graphite clients do, as a Bearer
    token, so that a per-request Authorization header (another key) takes its place."""
    client.headers.pop("x-api-key", None)
    client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"


def new_key(client, scopes: list[str], datasets: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": "graphite", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


# -- the documented calls ------------------------------------------------------------------


def test_recipe_csv_json_gzip_base64_is_written_before_the_answer(client):
    retail(client)
    rows, encoded = recipe()
    filled(fill(client, fill_body(encoded, compressed=True)), "eca2ad3940e3", 4)
    assert rows_of(client, "eca2ad3940e3") == stored(rows)  # no polling: already written
    (job,) = client.get("/v1/jobs").json()["jobs"]
    assert (job["source"], job["method"], job["status"]) == ("graphite", "insert", "succeeded")


def test_documented_json_string_insert_data(client):
    retail(client)
    filled(fill(client, fill_body(DOC_INSERT_DATA)), "eca2ad3940e3", 2)
    assert rows_of(client, "eca2ad3940e3") == stored(json.loads(DOC_INSERT_DATA))


def test_append_true_adds_rows(client):
    retail(client)
    filled(fill(client, fill_body(DOC_INSERT_DATA)), "eca2ad3940e3", 2)
    filled(fill(client, fill_body(DOC_INSERT_DATA)), "eca2ad3940e3", 2)
    assert len(rows_of(client, "eca2ad3940e3")) == 4


def test_append_false_replaces_the_contents(client):
    retail(client)
    filled(fill(client, fill_body(recipe()[1], compressed=True)), "eca2ad3940e3", 4)
    filled(fill(client, fill_body(DOC_INSERT_DATA, append=False)), "eca2ad3940e3", 2)
    assert rows_of(client, "eca2ad3940e3") == stored(json.loads(DOC_INSERT_DATA))
    jobs = client.get("/v1/jobs").json()["jobs"]
    assert [j["method"] for j in jobs] == ["replace", "insert"]


def test_columns_may_come_in_another_order(client):
    retail(client)
    order = [4, 0, 1, 2, 3, 5, 6]
    columns = [GRAPHITE_COLUMNS[i] for i in order]
    rows = [[row[i] for i in order] for row in json.loads(DOC_INSERT_DATA)]
    body = fill_body(json.dumps(rows), columns=columns)
    filled(fill(client, body), "eca2ad3940e3", 2)
    assert rows_of(client, "eca2ad3940e3") == stored(json.loads(DOC_INSERT_DATA))


def test_dataset_complete_gives_the_total_row_count(client):
    retail(client)
    _, encoded = recipe()
    for _ in range(3):  # the recipe's batches
        filled(fill(client, fill_body(encoded, compressed=True)), "eca2ad3940e3", 4)
    response = client.post(
        f"{BASE}/dataset-complete",
        json={"user-code": "0f02b4d4f9ae", "dataset-code": "eca2ad3940e3"},
        headers=BEARER,
    )
    filled(response, "eca2ad3940e3", 12)


def test_rejected_rows_are_reported_with_the_count_of_rows_written(client):
    retail(client)
    rows = [*json.loads(DOC_INSERT_DATA), ["1", "2", "3", "many", "2010-12-01", 1, 2], ["short"]]
    response = fill(client, fill_body(json.dumps(rows)))
    assert response.status_code == 200, response.text
    details = response.json()["data"]["details"]
    assert (details["rows-count"], details["rows-failed"]) == (2, 2)
    assert [(e["row"], e["code"]) for e in details["errors"]] == [
        (2, "invalid_value"), (3, "wrong_shape"),
    ]  # fmt: skip
    assert len(rows_of(client, "eca2ad3940e3")) == 2


# -- errors --------------------------------------------------------------------------------


def test_unknown_dataset_is_404(client):
    message = graphite_error(fill(client, fill_body(DOC_INSERT_DATA)), 404, "dataset_not_found")
    assert "eca2ad3940e3" in message
    response = client.post(
        f"{BASE}/dataset-complete", json={"dataset-code": "nope"}, headers=BEARER
    )
    graphite_error(response, 404, "dataset_not_found")


def test_column_missing_from_the_dataset_is_400_naming_it(client):
    retail(client)
    columns = [*GRAPHITE_COLUMNS, {"name": "Country", "type": "dimension", "subtype": "text"}]
    response = fill(client, fill_body(DOC_INSERT_DATA, columns=columns))
    assert "'Country'" in graphite_error(response, 400, "column_mismatch")


def test_column_of_another_type_is_400_naming_it(client):
    retail(client)
    columns = [dict(c) for c in GRAPHITE_COLUMNS]
    columns[2] = {"name": "Description", "type": "measure", "subtype": "numeric"}
    message = graphite_error(fill(client, fill_body(DOC_INSERT_DATA, columns=columns)), 400,
                             "column_mismatch")  # fmt: skip
    assert "'Description'" in message and "string" in message
    columns = [dict(c) for c in GRAPHITE_COLUMNS]
    columns[0] = {"name": "InvoiceNo", "type": "dimension", "subtype": "geo"}
    message = graphite_error(fill(client, fill_body(DOC_INSERT_DATA, columns=columns)), 400,
                             "unsupported_column_type")  # fmt: skip
    assert "dimension/geo" in message


def test_date_format_with_a_time_needs_a_datetime_column(client):
    create_dataset(client, "d", [{"name": "day", "type": "date"}])
    columns = [{"name": "day", "type": "dimension", "subtype": "date", "format": "Y-m-d H:i:s"}]
    body = fill_body('[["2024-01-01 10:00:00"]]', dataset="d", columns=columns)
    graphite_error(fill(client, body), 400, "column_mismatch")
    columns[0]["format"] = "Y-m-d"
    filled(fill(client, fill_body('[["2024-01-01"]]', dataset="d", columns=columns)), "d", 1)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"insert-data": "%%%not-base64%%%", "compressed": True}, "invalid_request"),
        ({"insert-data": base64.b64encode(b"[[1]]").decode(), "compressed": True},
         "invalid_request"),
        ({"insert-data": base64.b64encode(gzip.compress(b"[[1]]"))[:-8].decode(),
          "compressed": True}, "invalid_payload"),
        ({"insert-data": ""}, "invalid_request"),
        ({"insert-data": [[1]]}, "invalid_request"),
        ({"columns": []}, "invalid_request"),
        ({"dataset-code": None}, "invalid_request"),
        ({"append": "no"}, "invalid_request"),
    ],
    ids=[
        "bad-base64", "not-gzip", "truncated-gzip", "empty-data", "data-not-string", "no-columns",
        "no-dataset-code", "bad-append",
    ],
)  # fmt: skip
def test_bad_request_is_400(client, change, code):
    retail(client)
    graphite_error(fill(client, {**fill_body(DOC_INSERT_DATA), **change}), 400, code)
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_insert_data_that_is_not_json_fails_with_400(client):
    retail(client)
    message = graphite_error(fill(client, fill_body("[[1, 2")), 400, "invalid_payload")
    assert "JSON" in message
    assert rows_of(client, "eca2ad3940e3") == []


def test_missing_and_wrong_keys_are_401(client):
    retail(client)
    client.headers.pop("x-api-key")
    graphite_error(fill(client, fill_body(DOC_INSERT_DATA), headers=None), 401, "unauthorized")
    response = fill(client, fill_body(DOC_INSERT_DATA), headers={"Authorization": "Bearer x"})
    graphite_error(response, 401, "invalid_key")


def test_scopes(client):
    as_bearer(client)
    retail(client)
    read, write = new_key(client, ["read"]), new_key(client, ["write"])
    response = fill(client, fill_body(DOC_INSERT_DATA), headers={"Authorization": f"Bearer {read}"})
    graphite_error(response, 403, "forbidden")
    filled(fill(client, fill_body(DOC_INSERT_DATA), headers={"Authorization": f"Bearer {write}"}),
           "eca2ad3940e3", 2)  # fmt: skip
    for key in (read, write):
        response = client.post(
            f"{BASE}/dataset-complete", json={"dataset-code": "eca2ad3940e3"},
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        filled(response, "eca2ad3940e3", 2)


def test_full_queue_is_429(make_server):
    server = make_server(queue_max_bytes=50)
    retail(server)
    response = fill(server, fill_body(DOC_INSERT_DATA))
    graphite_error(response, 429, "queue_full")
    assert response.headers["retry-after"] == "1"


# -- the same push through /v1 -------------------------------------------------------------


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("method", "status", "stats", "errors", "errors_total", "error")}


@pytest.mark.parametrize("append", [True, False])
def test_same_push_through_v1_leaves_the_same_dataset_and_job(client, append):
    retail(client, "via_graphite")
    retail(client, "via_v1")
    rows, _ = recipe()
    rows[1][3] = "six"
    response = fill(client, fill_body(json.dumps(rows), "via_graphite", append=append))
    assert response.status_code == 200, response.text
    details = response.json()["data"]["details"]
    assert (details["rows-count"], details["rows-failed"]) == (3, 1)
    dialect = client.get("/v1/jobs", params={"dataset": "via_graphite"}).json()["jobs"][0]
    native = push(client, "via_v1", as_records(rows), "insert" if append else "replace")
    assert comparable(dialect) == comparable(native)
    assert dialect["stats"]["failed"] == 1
    assert (dialect["source"], native["source"]) == ("graphite", "v1")
    assert rows_of(client, "via_graphite") == rows_of(client, "via_v1")
