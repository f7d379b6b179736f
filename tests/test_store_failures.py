"""When the store cannot serve for a while (DESIGN §3: nothing acknowledged is lost).

The embedded store's memory limit rises with the key indexes DuckDB must hold, up to
`PUSHBASE_DUCKDB_MEMORY_MAX_MB`; past it, writes wait in the queue instead of failing.
When PostgreSQL drops the server's connections (a restart), requests answer 503
`store_unavailable` until the pool has replaced them, never 500; a job whose write
meets it goes back to the queue.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from conftest import (
    PG_URL,
    StoreFactory,
    create_dataset,
    finished_job,
    make_client,
    postgres_or_skip,
    rows_of,
)

SPREAD = 0x9E3779B97F4A7C15F39CC0605CEDC8341082276BF3A27251F86C6A11D0C18E95  # odd: a bijection
LONG_KEYS = [{"name": "k", "type": "string"}, {"name": "v", "type": "integer"}]


def long_key_rows(start: int, count: int) -> bytes:
    """NDJSON rows whose 72-character keys make DuckDB's key index grow fast: spread
    digits, so that the index shares no prefix between them."""
    return b"".join(
        b'{"k":"key-%064x","v":%d}\n' % (i * SPREAD % 2**256, i)
        for i in range(start, start + count)
    )


def test_a_key_index_larger_than_the_memory_limit_still_takes_writes(tmp_path: Path) -> None:
    # 480k keys of 72 characters hold ~70 MB of index: under a fixed 64 MB limit the
    # writes failed at ~380k (DuckDB: "Failed to commit: could not allocate block").
    with make_client(tmp_path, duckdb_memory_mb=64) as server:
        create_dataset(server, "big", LONG_KEYS, unique_key=["k"])
        job_ids = []
        for start in range(0, 480_000, 60_000):
            response = server.post(
                "/v1/datasets/big/records?method=insert",
                content=long_key_rows(start, 60_000),
                headers={"content-type": "application/x-ndjson"},
            )
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
        jobs = [finished_job(server, job_id, timeout=120) for job_id in job_ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * len(jobs), jobs[-1]
        assert sum(j["stats"]["inserted"] for j in jobs) == 480_000
        assert server.get("/v1/datasets/big").json()["row_count"] == 480_000
        # Every key went in once: pushing the last one again is a duplicate, not a failure.
        again = server.post(
            "/v1/datasets/big/records?method=insert&wait=30",
            content=long_key_rows(479_999, 1),
            headers={"content-type": "application/x-ndjson"},
        ).json()
        assert again["stats"]["inserted"] == 0
        assert again["errors"][0]["code"] == "duplicate_key"


def test_writes_past_the_memory_ceiling_wait_in_the_queue(tmp_path: Path) -> None:
    # A ceiling too low for any write: accepted jobs stay queued, never failed, and
    # reading them answers; with a higher ceiling they run.
    with make_client(tmp_path, duckdb_memory_mb=64, duckdb_memory_max_mb=64) as server:
        create_dataset(server, "d", LONG_KEYS, unique_key=["k"])
        response = server.post(
            "/v1/datasets/d/records?method=upsert",
            json=[{"k": "a", "v": 1}, {"k": "b", "v": 2}],
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        time.sleep(1.5)  # the worker tries, is refused, pauses and tries again
        job = server.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200, job.text
        assert job.json()["status"] == "queued"
        assert rows_of(server, "d") == []
    with make_client(tmp_path) as server:
        assert finished_job(server, job_id)["status"] == "succeeded"
        assert rows_of(server, "d") == [{"k": "a", "v": 1}, {"k": "b", "v": 2}]


def drop_server_connections() -> int:
    """What a PostgreSQL restart does to the server's pooled connections."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        return len(
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'pushbase' AND pid <> pg_backend_pid()"
            ).fetchall()
        )


@pytest.fixture
def postgres_store(tmp_path: Path):
    postgres_or_skip()
    stores = StoreFactory("postgres", tmp_path)
    yield stores.new()
    stores.cleanup()


def test_lost_postgresql_connections_answer_503_never_500(postgres_store) -> None:
    with make_client(postgres_store) as server:
        lost_connections_answer_503(server)


def lost_connections_answer_503(server) -> None:
    create_dataset(server, "d", LONG_KEYS, unique_key=["k"])
    response = server.post("/v1/datasets/d/records?method=upsert&wait=30", json=[{"k": "a"}])
    job_id = response.json()["id"]
    assert drop_server_connections() >= 2
    statuses = []
    for _ in range(12):  # each broken connection answers once, then the pool drops it
        response = server.get(f"/v1/jobs/{job_id}")
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "store_unavailable"
            assert response.headers["retry-after"]
    assert 503 in statuses and 500 not in statuses and statuses[-1] == 200, statuses
    # Again, with pushes right behind: whichever step meets a broken connection (the
    # push, the claim, reading the payload, the write), no job fails for it.
    drop_server_connections()
    job_ids = []
    for v in range(3):
        for _ in range(10):
            pushed = server.post("/v1/datasets/d/records?method=upsert", json=[{"k": "b", "v": v}])
            assert pushed.status_code in (202, 503), pushed.text
            if pushed.status_code == 202:
                job_ids.append(pushed.json()["job_id"])
                break
    assert len(job_ids) == 3
    assert [finished_job(server, j)["status"] for j in job_ids] == ["succeeded"] * 3
    assert rows_of(server, "d") == [{"k": "a", "v": None}, {"k": "b", "v": 2}]
