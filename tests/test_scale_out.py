"""Many processes over one PostgreSQL (DESIGN §6): two `serve`, one `worker`, the worker killed.

Eight clients push 200 jobs across three datasets through both API processes. Each
client owns one row per dataset and upserts it again and again with a growing `seq`,
waiting for each acknowledgement before the next push: the acceptance order of a
client's pushes is fixed, so the row must end with the client's last `seq`, and each
job must see the previous one applied (its first push inserts, every later one updates).
One API process runs no workers (`--no-workers`); mid-run the worker process is
SIGKILLed, and its jobs must be finished by the workers of the other API process.
"""

from __future__ import annotations

import gzip
import secrets
import threading
import time

import httpx
import orjson
import pytest

from conftest import PG_URL, drop_schema, finished_job, postgres_or_skip
from serverproc import ApiOnlyProcess, ServerProcess, WorkerProcess

pytestmark = pytest.mark.slow

DATASETS = ["orders", "events", "users"]
CLIENTS = 8
JOBS = 200
ROWS_PER_JOB = 50


@pytest.fixture
def cluster(tmp_path):
    postgres_or_skip()
    schema = f"pbt_{secrets.token_hex(6)}"
    env = {
        "PUSHBASE_DATABASE_URL": PG_URL,
        "PUSHBASE_DATABASE_SCHEMA": schema,
        "PUSHBASE_WORKERS": "2",
    }
    processes = [
        ApiOnlyProcess(tmp_path / "api1", env=env),
        ServerProcess(tmp_path / "api2", env=env),
        WorkerProcess(tmp_path / "worker", env={**env, "PUSHBASE_WORKERS": "3"}),
    ]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.kill()
        drop_schema(schema)


def test_two_api_processes_and_a_killed_worker_lose_and_double_nothing(cluster):
    api1, api2, worker = cluster
    with api1.client() as admin:
        for name in DATASETS:
            response = admin.post(
                "/v1/datasets",
                json={
                    "id": name,
                    "columns": [
                        {"name": "client", "type": "integer"},
                        {"name": "slot", "type": "integer"},
                        {"name": "seq", "type": "integer"},
                        {"name": "note"},
                    ],
                    "unique_key": ["client", "slot"],
                },
            )
            assert response.status_code == 201, response.text

    acknowledged: list[tuple[int, str, int, str]] = []  # (client, dataset, seq, job id)
    lock = threading.Lock()
    half_done = threading.Event()

    def run_client(number: int) -> None:
        api = (api1, api2)[number % 2]
        with httpx.Client(base_url=api.url, headers=api.headers(), timeout=30) as http:
            for seq in range(JOBS // CLIENTS):
                dataset = DATASETS[(number + seq) % len(DATASETS)]
                rows = [
                    {"client": number, "slot": slot, "seq": seq, "note": f"c{number}s{seq}"}
                    for slot in range(ROWS_PER_JOB)
                ]
                response = http.post(f"/v1/datasets/{dataset}/records", json=rows)
                assert response.status_code == 202, response.text
                with lock:
                    acknowledged.append((number, dataset, seq, response.json()["job_id"]))
                    if len(acknowledged) >= JOBS // 2:
                        half_done.set()

    threads = [threading.Thread(target=run_client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    assert half_done.wait(60)
    worker.kill()  # mid-run, possibly inside a write
    for thread in threads:
        thread.join(120)
    assert len(acknowledged) == JOBS

    jobs = {}
    deadline = time.monotonic() + 120
    with api2.client() as http:
        for _, _, _, job_id in acknowledged:
            while True:
                job = http.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
                time.sleep(0.05)
            jobs[job_id] = job
        assert {j["status"] for j in jobs.values()} == {"succeeded"}

        # Order: per client and dataset, the first push inserts its rows, every later one updates.
        seen: set[tuple[int, str]] = set()
        for number, dataset, seq, job_id in sorted(acknowledged, key=lambda a: (a[0], a[2])):
            stats = jobs[job_id]["stats"]
            if (number, dataset) in seen:
                assert (stats["inserted"], stats["updated"]) == (0, ROWS_PER_JOB), (seq, stats)
            else:
                assert (stats["inserted"], stats["updated"]) == (ROWS_PER_JOB, 0), (seq, stats)
                seen.add((number, dataset))

        # Rows: exactly one per (client, slot) a client ever pushed, holding its last seq.
        last_seq = {}
        for number, dataset, seq, _ in acknowledged:
            last_seq[(dataset, number)] = max(seq, last_seq.get((dataset, number), -1))
        for dataset in DATASETS:
            rows = http.get(f"/v1/datasets/{dataset}/records", params={"limit": 10000}).json()
            clients = {c for d, c in last_seq if d == dataset}
            assert rows["total"] == len(clients) * ROWS_PER_JOB
            for row in rows["rows"]:
                assert row["seq"] == last_seq[(dataset, row["client"])], row
                assert row["note"] == f"c{row['client']}s{row['seq']}"


def test_a_worker_killed_while_holding_jobs_leaves_them_to_another_in_order(tmp_path):
    """The killed worker holds a group of jobs; more are queued behind it. The next worker
    must finish the held jobs before the later ones, each applied once."""
    postgres_or_skip()
    schema = f"pbt_{secrets.token_hex(6)}"
    env = {"PUSHBASE_DATABASE_URL": PG_URL, "PUSHBASE_DATABASE_SCHEMA": schema}
    api = ApiOnlyProcess(tmp_path / "api", env=env)
    first = WorkerProcess(tmp_path / "w1", env={**env, "PUSHBASE_WORKERS": "1"})
    second = WorkerProcess(tmp_path / "w2", env={**env, "PUSHBASE_WORKERS": "1"})
    keys = 5000

    def push(http, seq):
        response = http.post(
            "/v1/datasets/t/records", json=[{"k": k, "seq": seq} for k in range(keys)]
        )
        assert response.status_code == 202
        return response.json()["job_id"]

    try:
        api.start()
        with api.client() as http:
            http.post(
                "/v1/datasets",
                json={
                    "id": "t",
                    "unique_key": ["k"],
                    "columns": [
                        {"name": "k", "type": "integer"},
                        {"name": "seq", "type": "integer"},
                    ],
                },
            ).raise_for_status()
            ids = [push(http, seq) for seq in range(30)]
            first.start()  # finds a backlog: takes a group of jobs at once
            deadline = time.monotonic() + 30
            while http.get(f"/v1/jobs/{ids[0]}").json()["status"] == "queued":
                assert time.monotonic() < deadline, "the first worker never took a job"
            ids += [push(http, seq) for seq in range(30, 36)]  # queued behind the held group
            first.kill()
            assert http.get(f"/v1/jobs/{ids[-1]}").json()["status"] == "queued"
            second.start()
            jobs = []
            for job_id in ids:
                while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    assert time.monotonic() < deadline + 60
                    time.sleep(0.05)
                jobs.append(job)
            assert [j["status"] for j in jobs] == ["succeeded"] * 36
            assert (jobs[0]["stats"]["inserted"], jobs[0]["stats"]["updated"]) == (keys, 0)
            assert all(j["stats"]["updated"] == keys for j in jobs[1:])
            rows = http.get("/v1/datasets/t/records", params={"limit": 10000}).json()
            assert rows["total"] == keys
            assert {r["seq"] for r in rows["rows"]} == {35}
    finally:
        for process in (api, first, second):
            process.kill()
        drop_schema(schema)


def test_another_process_applies_every_kind_of_payload_as_it_was_pushed(tmp_path):
    """A job's payload reaches a worker of another process through PostgreSQL. The
    accepting process compresses most bodies before storing them: a body of several
    megabytes (received in pieces), a gzip'd one (stored as it came), one too small to
    gain from compression and a CSV one must all come back byte for byte."""
    postgres_or_skip()
    schema = f"pbt_{secrets.token_hex(6)}"
    env = {"PUSHBASE_DATABASE_URL": PG_URL, "PUSHBASE_DATABASE_SCHEMA": schema}
    api = ApiOnlyProcess(tmp_path / "api", env=env)
    worker = WorkerProcess(tmp_path / "worker", env=env)
    big = [{"k": k, "note": f"row {k} " + secrets.token_hex(8)} for k in range(60_000)]
    ndjson = "\n".join(f'{{"k": {k}, "note": "gz {k}"}}' for k in range(100_000, 100_500))
    pushes = [
        ({"content-type": "application/json"}, orjson.dumps(big)),
        (
            {"content-type": "application/x-ndjson", "content-encoding": "gzip"},
            gzip.compress(ndjson.encode()),
        ),
        ({"content-type": "application/json"}, b'{"k":300000}'),
        ({"content-type": "text/csv"}, b'k,note\n200000,csv\n200001,"with, comma"\n'),
    ]
    try:
        api.start()
        with api.client() as http:
            http.post(
                "/v1/datasets",
                json={"id": "t", "unique_key": ["k"], "columns": [
                    {"name": "k", "type": "integer"}, {"name": "note"}]},
            ).raise_for_status()  # fmt: skip
            assert len(pushes[0][1]) > 2_000_000
            ids = []
            for headers, body in pushes:
                response = http.post("/v1/datasets/t/records", content=body, headers=headers)
                assert response.status_code == 202, response.text
                ids.append(response.json()["job_id"])
            worker.start()  # none of the payloads is on its disk: it reads the rows
            jobs = [finished_job(http, job_id, timeout=60) for job_id in ids]
            assert [j["status"] for j in jobs] == ["succeeded"] * 4, jobs
            assert [j["stats"]["inserted"] for j in jobs] == [60_000, 500, 1, 2]
            export = http.get("/v1/datasets/t/export", params={"format": "ndjson"})
            notes = {row["k"]: row["note"] for row in map(orjson.loads, export.text.splitlines())}
            assert len(notes) == 60_503
            assert all(notes[row["k"]] == row["note"] for row in big)
            assert notes[100_499] == "gz 100499"
            assert notes[300_000] is None
            assert notes[200_001] == "with, comma"
    finally:
        for process in (api, worker):
            process.kill()
        drop_schema(schema)
