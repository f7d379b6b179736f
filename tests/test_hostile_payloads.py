"""Generated hostile payloads through every content type and dialect (DESIGN §10.1, issue 20).

Each example is a payload that mixes good records with bad ones: huge integers, NaN, deep
nesting, invalid UTF-8, NUL, lone surrogates, ragged CSV lines, cut JSON lines, long and
reserved field names, values of the wrong type, non-objects. Whatever arrives:
- the server never answers 5xx;
- every job document is readable, alone and in the job lists;
- exactly the records the job did not report as row errors are stored, every record meant
  to be valid is stored as sent, every record meant to be bad is reported;
- the server is ready afterwards.

One server per backend serves every example of this module (a fresh dataset per example).
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADMIN_KEY, BACKENDS, StoreFactory, make_client, postgres_or_skip

COLUMNS = [
    {"name": "id", "type": "integer"},
    {"name": "name", "type": "string"},
    {"name": "n", "type": "number"},
]
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples in CI as here
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ids = itertools.count(1)


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if request.param == "postgres":
        postgres_or_skip()
    factory = StoreFactory(request.param, tmp_path_factory.mktemp(f"hostile-{request.param}"))
    with make_client(factory.new()) as client:
        yield client
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
    factory.cleanup()


def fresh_dataset(client: TestClient, **extra: Any) -> str:
    dataset_id = f"hostile{next(_ids)}"
    body = {"id": dataset_id, "columns": COLUMNS, "unique_key": ["id"], **extra}
    response = client.post("/v1/datasets", json=body)
    assert response.status_code == 201, response.text
    return dataset_id


# -- records ----------------------------------------------------------------------------------
# A record is (verdict, content): "good" must be stored as sent, "bad" must be a row error,
# "either" may go both ways (NaN, NUL: a backend may refuse to store them) but the job must say.


@dataclass
class Record:
    verdict: str
    value: Any = None  # a JSON value (for JSON, NDJSON and dialects)
    line: bytes | None = None  # raw bytes instead of a value (NDJSON and CSV only)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=30)
HUGE = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1))
NESTED = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=30,
)
RESERVED = st.sampled_from(["__row", "_existed", "_first", "_bad", "xmin", "ctid", "rowid", "ID"])
LONG_NAME = st.text(st.characters(codec="ascii", categories=["L"]), min_size=129, max_size=3000)


def good() -> st.SearchStrategy[Record]:
    number = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-999, 999)
    return st.builds(
        lambda name, n: Record("good", {"name": name, "n": n}), TEXT, number | st.none()
    )


def bad() -> st.SearchStrategy[Record]:
    def with_field(name: str, value: Any, verdict: str = "bad") -> Record:
        return Record(verdict, {"name": "x", name: value})

    return st.one_of(
        st.builds(lambda h: Record("bad", {"id": h, "name": "huge id"}), HUGE),
        st.builds(lambda h: Record("either", {"name": "huge n", "n": h}), HUGE),  # a float
        st.builds(lambda t: Record("bad", {"name": "n is text", "n": t + "!"}), TEXT),
        st.builds(with_field, LONG_NAME, TEXT),
        st.builds(with_field, RESERVED, TEXT),
        # Unknown fields holding only nulls or empty objects are no error: "either".
        st.builds(lambda v: with_field("deep", v, "either"), NESTED),
        st.builds(lambda v: Record("either", {"name": {"nested": v}}), NESTED),
        st.builds(lambda v: Record("bad", v), st.integers() | TEXT | st.lists(st.integers())),
    )


def either() -> st.SearchStrategy[Record]:
    return st.one_of(
        st.builds(lambda t: Record("either", {"name": f"nul\x00{t}"}), TEXT),
        st.just(Record("either", {"name": "surrogate \ud800 here"})),
    )


def broken_line() -> st.SearchStrategy[Record]:
    def verdict(raw: bytes) -> Record:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Record("bad", line=raw)
        return Record("either" if isinstance(value, dict) else "bad", line=raw)

    cut = st.just(b'{"id": 1, "name": "cut here')
    return st.builds(verdict, st.binary(min_size=1, max_size=40).map(_one_line) | cut)


def _one_line(raw: bytes) -> bytes:
    return raw.replace(b"\n", b" ").replace(b"\r", b" ").strip() or b"?"


def mixed(*kinds: st.SearchStrategy[Record]) -> st.SearchStrategy[list[Record]]:
    return st.lists(st.one_of(good(), *kinds), min_size=1, max_size=12)


def with_ids(records: list[Record]) -> dict[int, tuple[int, Record]]:
    """Give each object record that lacks an id the next one; id → (row, record)."""
    by_id: dict[int, tuple[int, Record]] = {}
    for row, record in enumerate(records):
        if isinstance(record.value, dict) and "id" not in record.value:
            record.value = {"id": row + 1, **record.value}
            by_id[row + 1] = (row, record)
    return by_id


# -- bodies -----------------------------------------------------------------------------------


def json_text(value: Any) -> bytes:
    # The standard library writes integers of any size, as a client in another language would.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def ndjson_body(records: list[Record]) -> bytes:
    return b"\n".join(r.line if r.line is not None else json_text(r.value) for r in records)


def csv_body(records: list[Record]) -> bytes:
    """Records as CSV rows of id,name,n; a non-object becomes a ragged line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "name", "n"])
    lines = [out.getvalue().encode()]
    for record in records:
        if record.line is not None:
            lines.append(record.line.replace(b'"', b"'") + b"\n")
            continue
        value = record.value
        if not isinstance(value, dict):
            lines.append(b"ragged\n")  # one field where three are expected
            continue
        row = [_cell(value.get("id")), _cell(value.get("name")), _cell(value.get("n"))]
        if set(value) - {"id", "name", "n"}:
            row.append("extra")  # an unknown field has no header: a ragged line
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(row)
        lines.append(out.getvalue().encode("utf-8", "surrogatepass"))
    return b"".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def csv_verdict(record: Record) -> str:
    """What a record becomes as a CSV row: text cells change what counts as bad."""
    value = record.value
    if record.line is not None:
        return "either"  # raw bytes may even form a valid row
    if not isinstance(value, dict) or set(value) - {"id", "name", "n"}:
        return "bad"
    if isinstance(value.get("name"), dict):
        return "either"  # a JSON text cell is a string like any other
    return record.verdict


# -- checks -----------------------------------------------------------------------------------


def check_job(client: TestClient, dataset_id: str, answer: Any) -> dict:
    assert answer.status_code < 500, answer.text
    job_id = answer.json().get("job_id") or answer.json().get("id")
    document = client.get(f"/v1/jobs/{job_id}", params={"wait": 0})
    assert document.status_code == 200, document.text
    for listing in ({}, {"dataset": dataset_id}):
        jobs = client.get("/v1/jobs", params=listing)
        assert jobs.status_code == 200, jobs.text
    return document.json()


def check_rows(
    client: TestClient,
    dataset_id: str,
    job: dict,
    records: dict[int, tuple[int, Record]],
    verdict: Any = lambda record: record.verdict,
    empty_is_null: bool = False,
) -> None:
    """A record is stored exactly when the job reports no error on its row; a good record
    is stored as sent, a bad one is reported."""
    assert job["status"] == "succeeded", job
    assert job["errors_total"] == len(job["errors"]), job  # fewer than the cap here
    failed_rows = {e["row"] for e in job["errors"]}
    stored = client.get(f"/v1/datasets/{dataset_id}/records", params={"limit": 1000}).json()
    stored_by_id = {row["id"]: row for row in stored["rows"]}
    for record_id, (row, record) in records.items():
        assert (record_id in stored_by_id) == (row not in failed_rows), (record, job["errors"])
        expected = verdict(record)
        if expected == "good":
            assert record_id in stored_by_id, (record, job["errors"])
            name = record.value["name"]
            assert stored_by_id[record_id]["name"] == (name or None if empty_is_null else name)
        elif expected == "bad":
            assert record_id not in stored_by_id, (record, stored_by_id.get(record_id))
    assert job["stats"]["inserted"] == len(stored_by_id), job
    assert job["stats"]["failed"] == len(failed_rows), job


def push(client: TestClient, dataset_id: str, body: bytes, content_type: str, zipped: bool):
    headers = {"content-type": content_type}
    if zipped:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    return client.post(
        f"/v1/datasets/{dataset_id}/records",
        params={"method": "insert", "wait": 30},
        content=body,
        headers=headers,
    )


# -- the properties ---------------------------------------------------------------------------


@EXAMPLES
@given(records=mixed(bad(), either(), broken_line()), zipped=st.booleans())
def test_ndjson_stores_exactly_the_valid_lines(server: TestClient, records, zipped) -> None:
    by_id = with_ids(records)
    dataset_id = fresh_dataset(server)
    job = check_job(server, dataset_id, push(server, dataset_id, ndjson_body(records),
                                             "application/x-ndjson", zipped))  # fmt: skip
    assert job["stats"]["received"] == len(records), job
    check_rows(server, dataset_id, job, by_id)


@EXAMPLES
@given(records=mixed(bad(), either()), zipped=st.booleans())
def test_json_array_stores_exactly_the_valid_records(server: TestClient, records, zipped) -> None:
    by_id = with_ids(records)
    dataset_id = fresh_dataset(server)
    body = b"[" + b",".join(json_text(r.value) for r in records) + b"]"
    job = check_job(server, dataset_id, push(server, dataset_id, body, "application/json", zipped))
    if job["status"] == "failed":
        # Only a body that is not JSON at all fails whole: a lone surrogate is not UTF-8.
        assert job["error"]["code"] == "invalid_payload", job
        assert any(b"\xed\xa0\x80" in json_text(r.value) for r in records), (job, records)
        return
    assert job["stats"]["received"] == len(records), job
    check_rows(server, dataset_id, job, by_id)


@EXAMPLES
@given(records=mixed(bad(), either(), broken_line()), zipped=st.booleans())
def test_csv_stores_exactly_the_valid_lines(server: TestClient, records, zipped) -> None:
    by_id = with_ids(records)
    dataset_id = fresh_dataset(server)
    job = check_job(server, dataset_id, push(server, dataset_id, csv_body(records),
                                             "text/csv", zipped))  # fmt: skip
    # No record can open a quote that never closes (raw lines carry none): every line is
    # its own record, so the job runs whatever the lines hold, invalid UTF-8 included.
    assert job["stats"]["received"] == len(records), (job, records)
    check_rows(server, dataset_id, job, by_id, csv_verdict, empty_is_null=True)


@EXAMPLES
@given(body=st.binary(max_size=300), content_type=st.sampled_from(
    ["application/json", "application/x-ndjson", "text/csv"]), zipped=st.booleans())  # fmt: skip
def test_random_bytes_never_cost_a_5xx(server: TestClient, body, content_type, zipped) -> None:
    dataset_id = fresh_dataset(server)
    answer = push(server, dataset_id, body, content_type, zipped)
    if answer.status_code >= 400:
        assert answer.status_code < 500, answer.text
        assert answer.json()["error"]["code"], answer.text
        return
    job = check_job(server, dataset_id, answer)
    assert job["status"] in ("succeeded", "failed"), job


# -- dialects ---------------------------------------------------------------------------------

DIALECT_VALUES = st.one_of(NESTED, HUGE, st.lists(st.one_of(NESTED, HUGE), max_size=4))


def dialect_requests(dataset_id: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """(path, body) for each dialect's push route: hostile envelopes and hostile rows."""
    records = st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["id", "name", "n", "__row", "x" * 200]), DIALECT_VALUES, max_size=4
            ),
            DIALECT_VALUES,
        ),
        max_size=5,
    )
    csv_text = st.lists(st.binary(max_size=30).map(_one_line), max_size=4).map(
        lambda lines: b"id;name\n" + b"\n".join(lines)
    )
    qrvey = st.builds(
        lambda data, method: ("/compat/qrvey/postdata", json_text(
            {"datasetId": dataset_id, "documentUpdateMethod": method, "data": data})),
        records, st.sampled_from(["upsert", "insert", "delete", 7]),
    )  # fmt: skip
    obsrv = st.builds(
        lambda data: (f"/compat/obsrv/v2/data/in/{dataset_id}", json_text(
            {"id": "api.data.in", "ver": "v2", "ts": "now", "params": {"msgid": None},
             "data": data})),
        st.one_of(records, DIALECT_VALUES, st.builds(lambda r: {"events": r}, records)),
    )  # fmt: skip
    dengage = st.builds(
        lambda content: ("/compat/dengage/rest/dataspace/async/upsert", json_text(
            {"tableId": dataset_id, "fileContent": base64.b64encode(content).decode(),
             "columnMapping": [{"tableColumn": "id", "fileColumnHeader": "id"},
                               {"tableColumn": "name", "fileColumnHeader": "name"},
                               {"tableColumn": "n", "value": None}]})),
        csv_text,
    )  # fmt: skip
    graphite = st.builds(
        lambda rows: ("/compat/graphite/api/dataset-fill", json_text(
            {"user-code": "u", "dataset-code": dataset_id, "append": True, "compressed": False,
             "columns": [{"name": "id", "alias": "id", "type": "measure", "subtype": "integer"},
                         {"name": "name", "alias": "name", "type": "dimension",
                          "subtype": "text"}],
             "insert-data": json.dumps(rows)})),
        st.lists(st.lists(DIALECT_VALUES, max_size=3), max_size=4),
    )  # fmt: skip
    garbage = st.builds(
        lambda path, body: (path, body),
        st.sampled_from(["/compat/qrvey/postdata", f"/compat/obsrv/v2/data/in/{dataset_id}",
                         "/compat/dengage/rest/dataspace/async/upsert",
                         "/compat/dengage/rest/dataspace/sync/upsert",
                         "/compat/graphite/api/dataset-fill"]),
        st.binary(max_size=200),
    )  # fmt: skip
    return st.one_of(qrvey, obsrv, dengage, graphite, garbage)


@pytest.fixture(scope="module")
def dialect_dataset(server: TestClient) -> str:
    return fresh_dataset(server)


@EXAMPLES
@given(data=st.data())
def test_dialects_never_answer_5xx(server: TestClient, dialect_dataset: str, data) -> None:
    path, body = data.draw(dialect_requests(dialect_dataset))
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"}
    answer = server.post(path, content=body, headers=headers)
    assert answer.status_code < 500, answer.text
    document = answer.json()
    job_id = document.get("jobId") or (document.get("result") or {}).get("jobId")
    if job_id:
        job = server.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200, job.text
    listed = server.get("/v1/jobs", params={"dataset": dialect_dataset})
    assert listed.status_code == 200, listed.text
