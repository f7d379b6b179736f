"""What one request may cost (issue 20 items 6, 7, 12 and 14).

Covers, in process on both backends: dialect routes refuse a key without the scope
before reading its body (a gzip bomb costs no memory); `offset` is bounded; `/metrics`
needs a key; `status_url` uses the configured public URL; the idempotency fingerprint
counts the content type; a D·engage CSV header field over the csv module's limit is a
400; Qrvey's top-level counts. Then, on a real `pushbase serve` (the timeouts live in
uvicorn's connection handling, which an in-process client never reaches): header,
body and keep-alive timeouts, the connection limit, and slow uploads that no longer
hold a dataset's admission slots, all through raw sockets with timeouts of a second.
"""

from __future__ import annotations

import base64
import functools
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from conftest import create_dataset, push
from serverproc import ServerProcess

COLUMNS = [{"name": "k", "type": "string"}, {"name": "v", "type": "integer"}]
INFLATED = 100 << 20  # what the gzip bomb inflates to


def new_key(client: TestClient, scopes: list[str], datasets: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": "k", "scopes": scopes}
    if datasets is not None:
        body["datasets"] = datasets
    response = client.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


# -- item 6: authorise before reading -------------------------------------------------------


@functools.cache
def gzip_bomb() -> bytes:
    """~100 KB of gzip holding one valid JSON object of 100 MB (built without ever
    holding the 100 MB, so the test's own memory stays flat)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = b'{"datasetId": "d", "tableName": "d", "dataset-code": "d", "data": [], "pad": "'
    parts = [packer.compress(head)]
    block = b"a" * (1 << 20)
    parts += [packer.compress(block) for _ in range(INFLATED >> 20)]
    parts += [packer.compress(b'"}'), packer.flush()]
    return b"".join(parts)


def peak_rss_reset() -> None:
    """Reset this process's VmHWM (Linux: 5 > /proc/self/clear_refs), or skip the test."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset this process's peak RSS: {exc}")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


DIALECT_PUSHES = [
    ("POST", "/compat/qrvey/postdata"),
    ("POST", "/compat/qrvey/deletealldata"),
    ("POST", "/compat/obsrv/v2/data/in/d"),
    ("POST", "/compat/dengage/rest/dataspace/async/upsert"),
    ("DELETE", "/compat/dengage/rest/dataspace/async/delete"),
    ("POST", "/compat/dengage/rest/dataspace/sync/upsert"),
    ("POST", "/compat/graphite/api/dataset-fill"),
]


def test_a_read_key_posting_a_gzip_bomb_to_any_dialect_is_refused_unread(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    read = new_key(client, ["read"])
    bomb = gzip_bomb()
    headers = {"content-type": "application/json", "content-encoding": "gzip",
               "x-api-key": read, "authorization": f"Bearer {read}"}  # fmt: skip
    peak_rss_reset()
    before = peak_rss()
    for method, url in DIALECT_PUSHES:
        started = time.monotonic()
        response = client.request(method, url, content=bomb, headers=headers)
        assert response.status_code == 403, (url, response.text)
        assert time.monotonic() - started < 2, url
    grown = peak_rss() - before
    assert grown < INFLATED // 4, f"peak RSS grew {grown / 2**20:.0f} MB"
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_a_key_for_another_dataset_is_refused_by_obsrv_before_the_body(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    create_dataset(client, "e", COLUMNS, unique_key=["k"])
    other = new_key(client, ["write"], ["e"])
    headers = {"content-encoding": "gzip", "x-api-key": other}
    peak_rss_reset()
    before = peak_rss()
    response = client.post("/compat/obsrv/v2/data/in/d", content=gzip_bomb(), headers=headers)
    assert response.status_code == 403, response.text
    assert peak_rss() - before < INFLATED // 4


def test_a_dialect_body_inflating_past_the_body_limit_is_413_without_inflating_it_all(
    make_server,
):
    """A dialect's envelope is parsed whole: it may inflate only up to `max_body_bytes`,
    whatever `max_inflated_bytes` (which bounds payloads) allows."""
    server = make_server(max_body_bytes=4 << 20)
    create_dataset(server, "d", COLUMNS, unique_key=["k"])
    other = new_key(server, ["write"], ["e"])  # the dataset is named in the body: read it
    headers = {"content-encoding": "gzip", "authorization": f"Bearer {other}", "x-api-key": ""}
    peak_rss_reset()
    before = peak_rss()
    for url in ("/compat/qrvey/postdata", "/compat/graphite/api/dataset-fill",
                "/compat/dengage/rest/dataspace/async/upsert"):  # fmt: skip
        response = server.post(url, content=gzip_bomb(), headers=headers)
        assert response.status_code == 413, (url, response.text)
    assert peak_rss() - before < INFLATED // 4


# -- item 12: smaller limits ----------------------------------------------------------------


def test_offset_beyond_64_bits_is_422_not_500(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    push(client, "d", [{"k": "a", "v": 1}])
    response = client.get("/v1/datasets/d/records", params={"offset": 2**63})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    response = client.get("/v1/datasets/d/records", params={"offset": 2**63 - 1})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == []


def test_metrics_need_an_unlimited_read_key(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    push(client, "d", [{"k": "a", "v": 1}])
    anonymous = client.get("/metrics", headers={"x-api-key": ""})
    assert anonymous.status_code == 401, anonymous.text
    write = new_key(client, ["write"])
    assert client.get("/metrics", headers={"x-api-key": write}).status_code == 403
    limited = new_key(client, ["read"], ["d"])
    assert client.get("/metrics", headers={"x-api-key": limited}).status_code == 403
    response = client.get("/metrics", headers={"x-api-key": new_key(client, ["read"])})
    assert response.status_code == 200, response.text
    assert 'pushbase_jobs{status="succeeded"} 1' in response.text


def test_metrics_count_jobs_by_status(make_server):
    server = make_server(workers=0, public_metrics=True)
    create_dataset(server, "d", COLUMNS, unique_key=["k"])
    for n in range(3):
        body = orjson.dumps([{"k": str(n), "v": n}])
        server.post("/v1/datasets/d/records", content=body)
    job_id = server.get("/v1/jobs").json()["jobs"][0]["id"]
    assert server.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    response = server.get("/metrics", headers={"x-api-key": ""})  # public: no key needed
    assert response.status_code == 200, response.text
    assert 'pushbase_jobs{status="queued"} 2' in response.text
    assert 'pushbase_jobs{status="cancelled"} 1' in response.text


def test_status_url_uses_the_public_url_not_the_host_header(make_server):
    server = make_server(workers=0, public_url="https://push.example.com/base/")
    create_dataset(server, "d", COLUMNS, unique_key=["k"])
    response = server.post(
        "/v1/datasets/d/records", content=b'[{"k": "a"}]', headers={"host": "evil.example"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status_url"] == f"https://push.example.com/base/v1/jobs/{body['job_id']}"


def test_one_idempotency_key_for_the_same_bytes_as_csv_then_json_is_409(make_server):
    server = make_server(workers=0)
    create_dataset(server, "d", [{"name": "k", "type": "string"}], unique_key=["k"])
    body = b'k\n"x"\n'  # valid CSV; read as JSON it is something else entirely

    def send(content_type: str):
        headers = {"content-type": content_type, "idempotency-key": "one"}
        return server.post("/v1/datasets/d/records", content=body, headers=headers)

    first = send("text/csv")
    assert first.status_code == 202, first.text
    again = send("text/csv; charset=utf-8")  # the same push
    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    conflict = send("application/json")
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "idempotency_conflict"


def test_dengage_header_field_over_the_csv_limit_is_a_clear_400(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    header = b"k;" + b"x" * 140_000 + b"\na;1\n"
    body = {
        "tableId": "d",
        "columnMapping": [
            {"tableColumn": "k", "fileColumnHeader": "k"},
            {"tableColumn": "v", "value": 1},
        ],
        "fileContent": base64.b64encode(header).decode(),
    }
    response = client.post("/compat/dengage/rest/dataspace/async/upsert", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 11
    assert "header" in response.json()["message"]


# -- item 14: Qrvey's counts ----------------------------------------------------------------


def test_qrvey_update_of_three_stored_records_reports_successful_0_updated_3(client):
    create_dataset(client, "d", COLUMNS, unique_key=["k"])
    rows = [{"k": k, "v": 1} for k in "abc"]
    push(client, "d", rows)
    body = {"datasetId": "d", "data": [dict(r, v=2) for r in rows]}
    job_id = client.post("/compat/qrvey/postdata", json=body).json()["jobId"]
    deadline = time.monotonic() + 30
    while True:
        answer = client.get(f"/compat/qrvey/{job_id}/status").json()
        if answer["statusJob"]["status"] == "Complete" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    statistics = answer["jobCompletionStatistics"]
    assert (statistics["successful"], statistics["updated"], statistics["failed"]) == (0, 3, 0)
    assert statistics["fillingEsStatistics"] == {
        "added": 0, "deleted": 0, "failed": 0, "updated": 3,
    }  # fmt: skip
    assert statistics["dataSourcePumpStatistics"]["d"]["successful"] == 3  # read without error


# -- item 7: a real server, raw sockets -----------------------------------------------------

HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE, MAX_CONNECTIONS = 0.5, 1.0, 0.5, 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "PUSHBASE_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "PUSHBASE_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "PUSHBASE_HTTP_KEEPALIVE_SECONDS": str(KEEPALIVE),
        "PUSHBASE_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "PUSHBASE_WORKERS": "1",
        "PUSHBASE_DECODE_PROCESSES": "0",
    }
    process = ServerProcess(tmp_path_factory.mktemp("limits") / "data", env=env)
    process.start()
    with process.client() as http:
        response = http.post("/v1/datasets", json={"id": "busy", "columns": COLUMNS})
        assert response.status_code == 201, response.text
    yield process
    process.stop()


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    started = time.monotonic()
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def one_response(sock: socket.socket) -> bytes:
    """One whole response on a kept-alive connection: its head, then content-length bytes
    (the two may arrive in separate reads)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def request_head(server: ServerProcess, method: str, path: str, length: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"x-api-key: {server.admin_key}",
             "content-type: application/json", f"content-length: {length}"]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_half_a_request_line_is_408_and_closed_after_the_header_timeout(server):
    with connect(server) as sock:
        sock.sendall(b"GET /heal")
        answer, took = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert HEADER_TIMEOUT * 0.8 <= took < HEADER_TIMEOUT + 2


def test_headers_trickling_in_are_cut_at_the_header_timeout(server):
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        try:
            for _ in range(20):  # a header byte every 0.1 s never completes the headers
                time.sleep(0.1)
                sock.sendall(b"X")
        except OSError:
            pass  # closed by the server
        answer, _ = until_closed(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert took < HEADER_TIMEOUT + 1.5


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        _, took = until_closed(sock)
    assert took < HEADER_TIMEOUT + 2


def test_keep_alive_serves_requests_spread_past_the_header_timeout_then_closes(server):
    with connect(server) as sock:
        for _ in range(3):  # 3 x 0.3 s apart: longer in all than the header timeout
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = one_response(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(0.3)
        _, took = until_closed(sock)  # then idle: closed after the keep-alive time
    assert took < KEEPALIVE + 2


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/datasets/busy/records", "native"), ("/compat/qrvey/postdata", "qrvey")],
)
def test_a_body_that_does_not_arrive_in_time_is_408_and_closed(server, path, shape):
    with connect(server) as sock:
        sock.sendall(request_head(server, "POST", path, 100) + b'[{"k": ')
        answer, took = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert BODY_TIMEOUT * 0.8 <= took < BODY_TIMEOUT + 2
    body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    code = body["error"]["code"] if shape == "native" else body["code"]
    assert code == "request_timeout", body


def test_slow_uploads_do_not_hold_the_datasets_admission_slots(server):
    """Two slow pushes to `busy` (as many as its slots) do not delay a third one."""
    slow = [connect(server) for _ in range(2)]
    try:
        for sock in slow:
            sock.sendall(request_head(server, "POST", "/v1/datasets/busy/records", 100) + b"[")
        time.sleep(0.1)
        with server.client() as http:
            started = time.monotonic()
            response = http.post("/v1/datasets/busy/records", content=b'[{"k": "fast", "v": 1}]')
            took = time.monotonic() - started
        assert response.status_code == 202, response.text
        assert took < BODY_TIMEOUT / 2, f"the third push waited {took:.2f}s"
    finally:
        for sock in slow:
            sock.close()


def test_connections_beyond_the_limit_are_503_until_idle_ones_are_closed(server):
    idle = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)  # accepted by the server
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 503")
        time.sleep(HEADER_TIMEOUT + 0.5)  # the idle ones are closed by the header timeout
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_push_still_lands_after_the_timeouts(server):
    with server.client() as http:
        response = http.post(
            "/v1/datasets/busy/records?wait=10", content=b'[{"k": "after", "v": 2}]'
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        rows = http.get("/v1/datasets/busy/records", params={"k": "after"}).json()["rows"]
    assert rows == [{"k": "after", "v": 2}]
