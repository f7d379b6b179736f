"""Hostile and malformed requests against a real server (DESIGN §4, "never a 5xx").

One server subprocess for the module, with small limits. A dataset is seeded with
known rows first; then every case below must be refused with a 4xx and the error
envelope, fast. Payload *content* problems may instead be accepted (202) if the job
then ends `failed` with `invalid_payload` (or succeeds having written nothing). After
the barrage the server is healthy and the seeded rows are exactly as they were.

Every request that must be refused carries a body that *would* change the seeded rows
if it were wrongly accepted, so a missed check shows up as changed data.
"""

from __future__ import annotations

import functools
import gzip
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

try:
    from serverproc import ServerProcess, wait_job
except ImportError:  # tests/ imported as a package
    from tests.serverproc import ServerProcess, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MIB = 1024 * 1024
MAX_BODY = 2 * MIB
MAX_INFLATED = 8 * MIB
REQUEST_SECONDS = 2.0
SEEDED = "seeded"
PUSH = f"/v1/datasets/{SEEDED}/records"

SEED_COLUMNS = [
    {"name": "k", "type": "string"},
    {"name": "n", "type": "integer"},
    {"name": "s", "type": "string"},
    {"name": "at", "type": "datetime"},
    {"name": "j", "type": "json"},
]
SEED_ROWS = [
    {
        "k": f"s{i:02d}",
        "n": i,
        "s": f"value {i}",
        "at": f"2024-01-{1 + i % 28:02d}T12:00:00Z",
        "j": {"i": i, "tags": ["a", "b"][: i % 3]},
    }
    for i in range(50)
]

# Valid rows that change every seeded row: a request carrying them that should have
# been refused but was applied shows up as changed data.
POISON_ROWS = [{"k": f"s{i:02d}", "n": -1, "s": "POISON"} for i in range(50)]
POISON = orjson.dumps(POISON_ROWS)
POISON_NDJSON = b"\n".join(orjson.dumps(r) for r in POISON_ROWS) + b"\n"
JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
CSV = {"content-type": "text/csv"}


@functools.cache
def gzip_bomb() -> bytes:
    """`[` + 1 GiB of spaces + `]` (valid JSON once inflated), about 1 MB gzip'd."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(b"[")]
    chunk = b" " * MIB
    parts.extend(comp.compress(chunk) for _ in range(1024))
    parts.append(comp.compress(b"]"))
    parts.append(comp.flush())
    return b"".join(parts)


def truncated_gzip() -> bytes:
    whole = gzip.compress(POISON * 20)
    return whole[: len(whole) * 6 // 10]


def chunked_oversize() -> Iterator[bytes]:
    """A 3 MiB JSON body sent chunked (no Content-Length to check up front)."""
    yield b"["
    row = orjson.dumps(POISON_ROWS[0]) + b","
    chunk = row * (64 * 1024 // len(row))
    sent = 0
    while sent < 3 * MIB:
        yield chunk
        sent += len(chunk)
    yield orjson.dumps(POISON_ROWS[1]) + b"]"


@dataclass
class Case:
    id: str
    method: str = "POST"
    path: str = PUSH
    content: bytes | Callable[[], Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    auth: str = "admin"  # admin | read | none | wrong | bearer-wrong | basic
    # "4xx": any 4xx now; an int: exactly that status; "payload": a 4xx now, or a 202
    # whose job fails with invalid_payload / succeeds writing nothing;
    # "4xx-or-empty": a 4xx, or 200 with no rows.
    expect: str | int = "4xx"


def payload(id: str, content: bytes | Callable[[], Any], headers=JSON, **kw) -> Case:
    return Case(id, content=content, headers=dict(headers), expect="payload", **kw)


def create(id: str, body: Any, expect: str | int = "4xx") -> Case:
    return Case(id, path="/v1/datasets", json=body, expect=expect)


def col(name: str, type: str = "string") -> dict[str, str]:
    return {"name": name, "type": type}


CASES: list[Case] = [
    # --- payload content: the request path or a worker may find these --------------
    payload("truncated-json", b'[{"k": "s01", "n": -1, "s": "POIS'),
    payload("top-level-number", b"5"),
    payload("top-level-string", b'"hello"'),
    payload("top-level-null", b"null"),
    payload("object-without-data-or-rows", b'{"records": ' + POISON + b"}"),
    payload("data-is-number", b'{"data": 5}'),
    payload("rows-is-string", b'{"rows": "s01"}'),
    payload("array-of-numbers", b"[1, 2]"),
    payload("array-of-arrays", b"[[1]]"),
    payload("deep-nesting-arrays", b"[" * 100_000),
    payload("deep-nesting-in-row", b'[{"k": "s01", "j": ' + b"[" * 100_000),
    payload("deep-nesting-objects", b'{"a": ' * 100_000),
    payload("trailing-garbage", POISON + b" trailing"),
    payload("invalid-utf8-json", b'[{"k": "s01", "n": -1, "s": "\xff\xfe POISON"}]'),
    payload("lone-surrogate-json", b'[{"k": "s01", "n": -1, "s": "\\ud800 POISON"}]'),
    payload("nul-bytes", b"\x00" * 64),
    payload("empty-json-body", b""),
    # A malformed record fails alone (DESIGN §10.1): valid rows beside it would be written,
    # so these carry none (tests/test_row_errors.py checks the rows beside them).
    payload("ndjson-bad-line", b'{"k": "s02", "n": \n' + b"not json\n", NDJSON),
    # per-row problems carry no valid row: valid rows next to bad ones are written (§2)
    payload("ndjson-non-object-lines", b'[1, 2]\n"s01"\n7\n', NDJSON),
    payload("ndjson-invalid-utf8", b'{"k": "s01", "n": -1, "s": "\xc3\x28"}\n', NDJSON),
    payload("csv-ragged-row", b"k,n,s\ns01\ns02,-1,POISON,extra,cells\n", CSV),
    payload("csv-no-header", b"s01,-1,POISON\ns02,-1,POISON\n", CSV),
    payload("csv-empty-body", b"", CSV),
    payload("csv-invalid-utf8", b"k,n,s\ns01,-1,\xff\xfePOISON\n", CSV),
    payload("csv-unterminated-quote", b'k,n,s\ns01,-1,"POISON\n', CSV),
    payload("row-bad-types", b'[{"k": "s01", "n": "not a number", "s": "POISON"}]'),
    payload("row-int-overflow", b'[{"k": "s01", "n": 99999999999999999999999, "s": "POISON"}]'),
    payload("row-missing-key", b'[{"n": -1, "s": "POISON"}]'),
    payload("row-null-key", b'[{"k": null, "n": -1, "s": "POISON"}]'),
    payload(
        "truncated-gzip", truncated_gzip, {**JSON, "content-encoding": "gzip"}
    ),  # header is fine, the stream ends early
    payload(
        "gzip-garbage-after-header",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xde\xad\xbe\xef" * 16,
        {**JSON, "content-encoding": "gzip"},
    ),
    # --- header level: must be refused on the request path ----------------------------
    Case("gzip-not-gzip", content=POISON, headers={**JSON, "content-encoding": "gzip"}),
    Case("gzip-bomb", content=gzip_bomb, headers={**JSON, "content-encoding": "gzip"}, expect=413),
    Case("body-over-limit", content=b"[" + b" " * (3 * MIB) + POISON[1:], headers=JSON, expect=413),
    Case("chunked-body-over-limit", content=chunked_oversize, headers=JSON, expect=413),
    Case(
        "content-type-xml", content=POISON, headers={"content-type": "application/xml"}, expect=415
    ),
    Case(
        "content-type-form",
        content=b"k=s01&n=-1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Case("content-encoding-br", content=POISON, headers={**JSON, "content-encoding": "br"}),
    Case("method-merge", content=POISON, headers=JSON, params={"method": "merge"}),
    Case("method-empty", content=POISON, headers=JSON, params={"method": ""}),
    Case("wait-negative", content=POISON, headers=JSON, params={"wait": "-1"}),
    Case("wait-not-a-number", content=POISON, headers=JSON, params={"wait": "abc"}),
    Case("atomic-not-a-bool", content=POISON, headers=JSON, params={"atomic": "maybe"}),
    Case("push-unknown-dataset", path="/v1/datasets/nope/records", content=POISON, headers=JSON),
    Case("push-dataset-dotdot", path="/v1/datasets/..%2Fetc/records", content=POISON, headers=JSON),
    Case(
        "push-dataset-injection",
        path="/v1/datasets/a%3Bdrop%20table%20x/records",
        content=POISON,
        headers=JSON,
    ),
    # --- reads --------------------------------------------------------------------------
    Case("records-limit-too-big", method="GET", params={"limit": "100000"}),
    Case("records-limit-negative", method="GET", params={"limit": "-1"}),
    Case("records-limit-not-a-number", method="GET", params={"limit": "ten"}),
    Case("records-offset-negative", method="GET", params={"offset": "-5"}),
    Case("records-order-by-unknown", method="GET", params={"order_by": "nope"}),
    Case(
        "records-order-by-injection", method="GET", params={"order_by": 'k"; DROP TABLE seeded; --'}
    ),
    Case("records-filter-unknown-column", method="GET", params={"nope": "1"}),
    Case("records-filter-bad-integer", method="GET", params={"n": "abc"}, expect="4xx-or-empty"),
    Case(
        "export-unknown-format",
        method="GET",
        path=f"/v1/datasets/{SEEDED}/export",
        params={"format": "xml"},
    ),
    Case("job-unknown", method="GET", path="/v1/jobs/does-not-exist"),
    Case("job-path-traversal", method="GET", path="/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
    Case("jobs-bad-status-filter", method="GET", path="/v1/jobs", params={"status": "exploded"}),
    # --- auth ---------------------------------------------------------------------------
    Case("push-no-key", content=POISON, headers=JSON, auth="none", expect=401),
    Case("push-wrong-key", content=POISON, headers=JSON, auth="wrong", expect=401),
    Case("push-wrong-bearer", content=POISON, headers=JSON, auth="bearer-wrong", expect=401),
    Case("push-basic-auth", content=POISON, headers=JSON, auth="basic", expect=401),
    Case("read-no-key", method="GET", auth="none", expect=401),
    Case("push-read-key", content=POISON, headers=JSON, auth="read", expect=403),
    Case("delete-all-read-key", method="DELETE", auth="read", expect=403),
    Case(
        "drop-dataset-read-key",
        method="DELETE",
        path=f"/v1/datasets/{SEEDED}",
        auth="read",
        expect=403,
    ),
    Case(
        "create-dataset-read-key",
        path="/v1/datasets",
        json={"id": "byreader", "columns": [col("k")]},
        auth="read",
        expect=403,
    ),
    Case(
        "create-key-read-key",
        path="/v1/keys",
        json={"name": "escalate", "scopes": ["admin"]},
        auth="read",
        expect=403,
    ),
    # --- hostile identifiers and schemas ------------------------------------------------
    create("dataset-id-dotdot", {"id": "../etc", "columns": [col("k")]}),
    create("dataset-id-injection", {"id": "a;drop table x", "columns": [col("k")]}),
    create("dataset-id-65-chars", {"id": "a" * 65, "columns": [col("k")]}),
    create("dataset-id-quote", {"id": 'a"b', "columns": [col("k")]}),
    create("dataset-id-leading-dash", {"id": "-x", "columns": [col("k")]}),
    create("dataset-id-not-a-string", {"id": 12, "columns": [col("k")]}),
    create("dataset-exists", {"id": SEEDED, "columns": [col("k")]}, expect=409),
    create("column-name-nul", {"id": "bad1", "columns": [col("a\x00b")]}),
    create("column-name-newline", {"id": "bad2", "columns": [col("a\nb")]}),
    create("column-name-129-chars", {"id": "bad3", "columns": [col("c" * 129)]}),
    create("column-name-empty", {"id": "bad4", "columns": [col("")]}),
    create("columns-duplicate-case", {"id": "bad5", "columns": [col("Name"), col("name")]}),
    create(
        "unique-key-missing-column", {"id": "bad6", "columns": [col("k")], "unique_key": ["id"]}
    ),
    create(
        "unique-key-json-column", {"id": "bad7", "columns": [col("k", "json")], "unique_key": ["k"]}
    ),
    create("unique-key-repeated", {"id": "bad8", "columns": [col("k")], "unique_key": ["k", "k"]}),
    create("column-type-unknown", {"id": "bad9", "columns": [col("k", "blob")]}),
    create("columns-not-a-list", {"id": "bad10", "columns": 5}),
    create("columns-of-numbers", {"id": "bad11", "columns": [5]}),
    create(
        "unknown-fields-policy", {"id": "bad12", "columns": [col("k")], "unknown_fields": "explode"}
    ),
    Case("create-body-not-json", path="/v1/datasets", content=b"{id: bad13", headers=JSON),
    Case("create-body-array", path="/v1/datasets", json=[{"id": "bad14"}]),
    Case(
        "patch-add-column-case-clash",
        method="PATCH",
        path=f"/v1/datasets/{SEEDED}",
        json={"add_columns": [col("K")]},
    ),
    Case(
        "patch-add-column-control-char",
        method="PATCH",
        path=f"/v1/datasets/{SEEDED}",
        json={"add_columns": [col("x\x07")]},
    ),
    Case("drop-dataset-dotdot", method="DELETE", path="/v1/datasets/..%2Fetc"),
    Case("key-bad-scope", path="/v1/keys", json={"name": "weird", "scopes": ["root"]}),
    Case("key-scopes-not-a-list", path="/v1/keys", json={"name": "weird", "scopes": 7}),
]


class Env:
    def __init__(self, server: ServerProcess, read_key: str, snapshot: list[dict[str, Any]]):
        self.server = server
        self.read_key = read_key
        self.snapshot = snapshot

    def auth_headers(self, auth: str) -> dict[str, str]:
        return {
            "admin": {"x-api-key": self.server.admin_key},
            "read": {"x-api-key": self.read_key},
            "none": {},
            "wrong": {"x-api-key": "not-a-real-key"},
            "bearer-wrong": {"authorization": "Bearer not-a-real-key"},
            "basic": {"authorization": "Basic YWRtaW46YWRtaW4="},
        }[auth]


def seeded_rows(http: httpx.Client) -> list[dict[str, Any]]:
    response = http.get(PUSH, params={"limit": 1000, "order_by": "k"})
    assert response.status_code == 200, response.text[:500]
    return response.json()["rows"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    gzip_bomb()  # ~2 s to build; not part of any request's time budget
    base = tmp_path_factory.mktemp("badinput")
    server = ServerProcess(
        base / "data",
        log_path=base / "server.log",
        env={
            "PUSHBASE_MAX_BODY_BYTES": str(MAX_BODY),
            "PUSHBASE_MAX_INFLATED_BYTES": str(MAX_INFLATED),
        },
    )
    server.start()
    try:
        with server.client() as http:
            response = http.post(
                "/v1/datasets",
                json={"id": SEEDED, "columns": SEED_COLUMNS, "unique_key": ["k"]},
            )
            assert response.status_code == 201, response.text
            response = http.post(PUSH, params={"method": "insert", "wait": "30"}, json=SEED_ROWS)
            assert response.status_code in (200, 202), response.text
            doc = response.json()
            if response.status_code == 202:
                doc = wait_job(http, doc["job_id"], timeout=30)
            assert doc["status"] == "succeeded", doc
            assert doc["stats"]["inserted"] == len(SEED_ROWS), doc
            response = http.post("/v1/keys", json={"name": "reader", "scopes": ["read"]})
            assert response.status_code == 201, response.text
            read_key = response.json()["key"]
            snapshot = seeded_rows(http)
        assert [r["k"] for r in snapshot] == [r["k"] for r in SEED_ROWS]
        for got, want in zip(snapshot, SEED_ROWS, strict=True):
            assert (got["n"], got["s"], got["j"]) == (want["n"], want["s"], want["j"]), got
        yield Env(server, read_key, snapshot)
    finally:
        server.stop()


def assert_envelope(response: httpx.Response, context: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{context}: {response.status_code} without a JSON body: {response.text[:300]!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and isinstance(error.get("code"), str) and error["code"], (
        f"{context}: {response.status_code} without the error envelope: {body!r:.300}"
    )
    assert isinstance(error.get("message"), str), f"{context}: envelope has no message: {body}"
    return error


def written_nothing(doc: dict[str, Any]) -> bool:
    stats = doc.get("stats") or {}
    return not (stats.get("inserted") or stats.get("updated") or stats.get("deleted"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request_is_refused(env: Env, case: Case) -> None:
    content = case.content() if callable(case.content) else case.content
    headers = {**env.auth_headers(case.auth), **case.headers}
    started = time.monotonic()
    with httpx.Client(base_url=env.server.url, timeout=REQUEST_SECONDS) as http:
        try:
            response = http.request(
                case.method,
                case.path,
                params=case.params,
                content=content,
                json=case.json,
                headers=headers,
            )
        except httpx.TimeoutException:
            pytest.fail(f"{case.method} {case.path}: no answer within {REQUEST_SECONDS}s")
    elapsed = time.monotonic() - started
    context = f"{case.method} {response.request.url} [{case.id}]"
    assert env.server.running(), f"{context}: server died\n{env.server.log_tail()}"
    assert response.status_code < 500, (
        f"{context}: {response.status_code} {response.text[:500]}\n{env.server.log_tail(3000)}"
    )
    assert elapsed < REQUEST_SECONDS + 0.5, f"{context}: took {elapsed:.2f}s"

    status = response.status_code
    try:
        if case.expect == "payload" and status in (200, 202):
            with env.server.client() as http:
                doc = response.json()
                if status == 202 or doc.get("status") not in ("succeeded", "failed", "cancelled"):
                    doc = wait_job(http, doc.get("job_id") or doc["id"], timeout=30)
            if doc["status"] == "failed":
                assert (doc.get("error") or {}).get("code") == "invalid_payload", (
                    f"{context}: job failed with {doc.get('error')}, want invalid_payload"
                )
            else:
                assert doc["status"] == "succeeded" and written_nothing(doc), (
                    f"{context}: job {doc['status']} and wrote rows: {doc.get('stats')}"
                )
        elif case.expect == "4xx-or-empty" and status == 200:
            assert response.json().get("rows") == [], f"{context}: {response.text[:300]}"
        elif isinstance(case.expect, int):
            assert status == case.expect, (
                f"{context}: {status} {response.text[:300]}, want {case.expect}"
            )
            assert_envelope(response, context)
        else:
            assert 400 <= status < 500, f"{context}: {status} {response.text[:300]}, want a 4xx"
            assert_envelope(response, context)
    finally:
        check_seeded_unchanged(env, context)


def check_seeded_unchanged(env: Env, context: str) -> None:
    """Fail if the seeded rows changed, after putting them back for the next cases."""
    with env.server.client(timeout=30) as http:
        rows = seeded_rows(http)
        if rows == env.snapshot:
            return
        response = http.post(PUSH, params={"method": "replace", "wait": "30"}, json=SEED_ROWS)
        restored = response.status_code == 200 and seeded_rows(http) == env.snapshot
    changed = [r for r in rows if r not in env.snapshot]
    raise AssertionError(
        f"{context}: the seeded rows changed ({len(rows)} rows, e.g. {changed[:2]}); "
        f"{'restored' if restored else 'could not restore them'}"
    )


def test_hostile_but_valid_column_names_are_quoted(env: Env) -> None:
    """Names that are legal (no control chars, <= 128) yet look like SQL must round-trip."""
    names = ['a"; DROP TABLE seeded; --', "select", "Ünïcødé name", "with space", "x" * 128]
    columns = [col("id")] + [col(name) for name in names]
    row = {"id": "r1", **{name: f"v{i}" for i, name in enumerate(names)}}
    with env.server.client(timeout=30) as http:
        response = http.post(
            "/v1/datasets", json={"id": "hostile", "columns": columns, "unique_key": ["id"]}
        )
        assert response.status_code == 201, response.text
        response = http.post("/v1/datasets/hostile/records", params={"wait": "30"}, json=[row])
        assert response.status_code in (200, 202), response.text
        doc = response.json()
        if response.status_code == 202:
            doc = wait_job(http, doc["job_id"])
        assert doc["status"] == "succeeded" and doc["stats"]["failed"] == 0, doc
        response = http.get("/v1/datasets/hostile/records")
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == [row]
        assert seeded_rows(http) == env.snapshot


def test_server_healthy_and_seeded_rows_intact_after_barrage(env: Env) -> None:
    with env.server.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert seeded_rows(http) == env.snapshot
        response = http.get(f"/v1/datasets/{SEEDED}")
        assert response.status_code == 200, response.text
        assert response.json()["row_count"] == len(SEED_ROWS)
        names = [c["name"] for c in response.json()["columns"]]
        assert names == [c["name"] for c in SEED_COLUMNS], names
        listed = {d["id"] for d in http.get("/v1/datasets").json()["datasets"]}
        assert not {d for d in listed if d.startswith("bad") or d == "byreader"}, listed
    assert env.server.running()
