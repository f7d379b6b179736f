"""Backpressure (DESIGN §3, §7): a full queue answers 429 with Retry-After, never 5xx,
never drops what it accepted; memory stays bounded under a burst of large pushes."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

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
