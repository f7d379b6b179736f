"""Backpressure (DESIGN §3, §7): a full queue answers 429 with Retry-After, never 5xx,
never drops what it accepted; memory stays bounded under a burst of large pushes."""

from __future__ import annotations

import secrets
import threading
import time

import httpx
import orjson
import pytest

from conftest import (
    PG_URL,
    create_dataset,
    drop_schema,
    finished_job,
    make_client,
    postgres_or_skip,
)
from serverproc import ServerProcess

pytestmark = pytest.mark.slow

PUSHES = 100
ROWS_PER_PUSH = 12_000  # about 1 MB of JSON each
MAX_RSS = 800 * 2**20


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(
        tmp_path / "data",
        env={"PUSHBASE_QUEUE_MAX_BYTES": str(8 * 2**20), "PUSHBASE_WORKERS": "2"},
    )
    process.start()
    yield process
    process.kill()


def body(push: int) -> bytes:
    return orjson.dumps(
        [
            {
                "push": push,
                "n": n,
                "text": f"row {n} of push {push}, padded to about a hundred bytes",
            }
            for n in range(ROWS_PER_PUSH)
        ]
    )


def test_a_burst_beyond_the_queue_gets_429s_and_every_row_lands_once(server):
    with server.client() as http:
        response = http.post("/v1/datasets", json={
            "id": "burst",
            "columns": [{"name": "push", "type": "integer"}, {"name": "n", "type": "integer"},
                        {"name": "text"}],
        })  # fmt: skip
        assert response.status_code == 201
    bodies = [body(p) for p in range(PUSHES)]
    assert all(900_000 < len(b) < 1_200_000 for b in bodies)

    statuses: list[int] = []
    retry_after: list[str] = []
    job_ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(PUSHES)

    def push(number: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
            start.wait()
            for _ in range(200):
                response = http.post(
                    "/v1/datasets/burst/records?method=insert",
                    content=bodies[number],
                    headers={"content-type": "application/json"},
                )
                with lock:
                    statuses.append(response.status_code)
                if response.status_code == 202:
                    with lock:
                        job_ids.append(response.json()["job_id"])
                    return
                assert response.status_code == 429, response.text
                assert response.json()["error"]["code"] == "queue_full"
                with lock:
                    retry_after.append(response.headers["retry-after"])
                time.sleep(min(float(response.headers["retry-after"]), 0.5))

    threads = [threading.Thread(target=push, args=(n,)) for n in range(PUSHES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)

    assert len(job_ids) == PUSHES, "every push was accepted in the end"
    assert statuses.count(429) > 0, "the queue limit was reached"
    assert all(s in (202, 429) for s in statuses), sorted(set(statuses))
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after)

    with server.client() as http:
        deadline = time.monotonic() + 120
        for job_id in job_ids:
            while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded", "failed",
            ):  # fmt: skip
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert job["status"] == "succeeded" and job["stats"]["inserted"] == ROWS_PER_PUSH
        exported = http.get("/v1/datasets/burst/export", params={"format": "csv"}).text
    lines = exported.splitlines()[1:]
    assert len(lines) == PUSHES * ROWS_PER_PUSH
    assert len({tuple(line.split(",")[:2]) for line in lines}) == PUSHES * ROWS_PER_PUSH
    assert server.peak_rss_bytes() <= MAX_RSS, server.peak_rss_bytes() / 2**20


def test_processes_over_one_postgresql_share_the_queue_figure(tmp_path):
    """Every process refuses pushes once the shared queue is full, whichever process
    accepted the bytes, and accepts them again once the jobs are done."""
    postgres_or_skip()
    schema = f"pbt_{secrets.token_hex(6)}"
    shared = {"database_url": PG_URL, "database_schema": schema, "queue_max_bytes": 2_500}
    row = orjson.dumps([{"n": 1, "text": "x" * 980}])  # about 1 kB
    assert 900 < len(row) < 1_100
    try:
        with (
            make_client({"data_dir": tmp_path / "a", **shared}, workers=0) as first,
            make_client({"data_dir": tmp_path / "b", **shared}, workers=0) as second,
        ):
            create_dataset(first, "shared", [{"name": "n", "type": "integer"}, {"name": "text"}])

            def status(api) -> int:
                response = api.post("/v1/datasets/shared/records?method=insert", content=row,
                                    headers={"content-type": "application/json"})  # fmt: skip
                if response.status_code == 429:
                    assert response.json()["error"]["code"] == "queue_full"
                    assert response.headers["retry-after"] == "1"
                return response.status_code

            def pending(api) -> int:
                lines = api.get("/metrics").text.splitlines()
                return next(int(line.split()[1]) for line in lines
                            if line.startswith("pushbase_pending_bytes "))  # fmt: skip

            assert [status(first), status(first), status(first)] == [202, 202, 429]
            # The other process, which accepted nothing, learns of those bytes in a second.
            deadline = time.monotonic() + 3
            while pending(second) < 2 * len(row):
                assert time.monotonic() < deadline, "the second process never saw a full queue"
                time.sleep(0.05)
            assert status(second) == 429

            with make_client({"data_dir": tmp_path / "c", **shared}, workers=2) as worker:
                deadline = time.monotonic() + 30
                while worker.get("/v1/datasets/shared").json()["row_count"] < 2:
                    assert time.monotonic() < deadline, "the queued jobs never ran"
                    time.sleep(0.05)
            deadline = time.monotonic() + 3
            while pending(first) or pending(second):
                assert time.monotonic() < deadline, "the drained queue still looks full"
                time.sleep(0.05)
            assert [status(first), status(second)] == [202, 202]
    finally:
        drop_schema(schema)


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_a_50_mb_push_is_acknowledged_without_holding_copies_of_it(tmp_path, backend):
    """The body of a large push goes to disk in pieces as it arrives; PostgreSQL gets it
    compressed piece by piece. Acknowledging it must not hold a whole copy of the body in
    memory (it took about three before compression moved into pushbase)."""
    env, schema = {}, ""
    if backend == "postgres":
        postgres_or_skip()
        schema = f"pbt_{secrets.token_hex(6)}"
        env = {"PUSHBASE_DATABASE_URL": PG_URL, "PUSHBASE_DATABASE_SCHEMA": schema}
    rows = [{"k": k, "note": f"customer {k} ordered item {k % 977} in city {k % 31}"}
            for k in range(750_000)]  # fmt: skip
    large = orjson.dumps(rows)
    assert 45 * 2**20 < len(large) < 50 * 2**20  # the default PUSHBASE_MAX_BODY_BYTES
    server = ServerProcess(tmp_path / "data", env=env)
    server.start()
    try:
        with server.client(timeout=300) as http:
            columns = [{"name": "k", "type": "integer"}, {"name": "note"}]
            created = http.post("/v1/datasets", json={"id": "big", "unique_key": ["k"],
                                                      "columns": columns})  # fmt: skip
            assert created.status_code == 201
            warm = http.post("/v1/datasets/big/records", json=rows[:1], params={"wait": 30})
            assert warm.json()["status"] == "succeeded"
            before = server.peak_rss_bytes()
            response = http.post(
                "/v1/datasets/big/records", content=large,
                headers={"content-type": "application/json"},
            )  # fmt: skip
            assert response.status_code == 202, response.text
            grown = server.peak_rss_bytes() - before
            # Less than one copy: about 2 MB (embedded) and 21 MB (PostgreSQL, the compressed
            # bytes and their buffers); it was about 140 MB before.
            assert grown < len(large), f"{grown / 2**20:.0f} MB more for a 50 MB push"
            job = finished_job(http, response.json()["job_id"], timeout=120)
            assert job["status"] == "succeeded", job
            assert job["stats"]["updated"] == 1 and job["stats"]["inserted"] == len(rows) - 1
    finally:
        server.kill()
        if schema:
            drop_schema(schema)
