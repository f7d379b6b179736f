"""No sequence of jobs, crashes and restarts leaves two rows with one key (DESIGN §6).

The embedded store keeps keys unique without an index: its writes, one group at a time
per dataset, never add a stored key again. Several clients push mixed jobs (insert,
upsert with partial rows, delete, replace) over a small key space, the server is
SIGKILLed while it writes, twice, and restarted. Then every job the server accepted
(acknowledged or not: a push cut off by the kill may have been accepted) is replayed
on a model in acceptance order, which must give each job's stats and the final table,
every key once. A subprocess server, because only a real SIGKILL cuts a group short.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import psycopg
import pytest

try:
    from conftest import PG_URL, drop_schema, postgres_or_skip
    from serverproc import TERMINAL, ServerProcess
except ImportError:  # tests/ imported as a package
    from tests.conftest import PG_URL, drop_schema, postgres_or_skip
    from tests.serverproc import TERMINAL, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DATASET = "uniq"
COLUMNS = [
    {"name": "k", "type": "string"},
    {"name": "n", "type": "integer"},
    {"name": "v", "type": "string"},
    {"name": "w", "type": "number"},
]
FIELDS = [c["name"] for c in COLUMNS]
KEYS = 1500  # a small key space: jobs meet each other's keys all the time
CLIENTS = 3
PUSHES = 40  # per client and run: a backlog the worker is still writing at the kill
METHODS = ["upsert"] * 10 + ["insert"] * 4 + ["delete"] * 3 + ["replace"]


def make_job(rng: random.Random, label: str) -> tuple[str, list[dict[str, Any]]]:
    """One push: rows over the shared key space, some keys twice in the job."""
    method = rng.choice(METHODS)
    keys = [f"k{rng.randrange(KEYS):05d}" for _ in range(rng.randrange(50, 600))]
    if method == "delete":
        return method, [{"k": key} for key in keys]
    rows = []
    for i, key in enumerate(keys):
        row: dict[str, Any] = {"k": key, "n": i, "v": f"{label}-{i}", "w": rng.random()}
        shape = rng.random()
        if method == "upsert" and shape < 0.3:  # partial: absent fields keep their value
            row = {"k": key, "n": i}
        elif method == "upsert" and shape < 0.4:  # explicit null clears
            row["v"] = None
        rows.append(row)
    return method, rows


def apply_model(state: dict[str, dict[str, Any]], method: str, rows: list[dict]) -> dict:
    """DESIGN §2 on a dict keyed by `k`; returns the job's expected stats."""
    stats: Counter[str] = Counter()
    if method == "delete":  # a key's later rows in the job find nothing
        for row in rows:
            found = state.pop(row["k"], None) is not None
            stats["deleted" if found else "not_found"] += 1
        return dict(stats)
    if method == "replace":
        stats["deleted"] = len(state)
        state.clear()
    for row in rows:
        key = row["k"]
        if method == "insert":
            if key in state:
                stats["failed"] += 1  # duplicate_key: stored, or earlier in this job
                continue
            state[key] = {f: row.get(f) for f in FIELDS}
            stats["inserted"] += 1
        elif key in state:
            state[key].update(row)
            stats["updated"] += 1
        else:
            state[key] = {f: row.get(f) for f in FIELDS}
            stats["inserted"] += 1
    return dict(stats)


class Pusher(threading.Thread):
    """Pushes jobs without waiting for them until the server goes away."""

    def __init__(self, server: ServerProcess, seed: int, jobs: dict[str, tuple]) -> None:
        super().__init__(daemon=True)
        self.server, self.rng, self.jobs = server, random.Random(seed), jobs
        self.acked: list[str] = []

    def run(self) -> None:
        with self.server.client(timeout=10) as http:
            while len(self.acked) < PUSHES:
                label = secrets.token_hex(6)
                method, rows = self.jobs[label] = make_job(self.rng, label)
                try:
                    response = http.post(
                        f"/v1/datasets/{DATASET}/records",
                        params={"method": method},
                        content=orjson.dumps(rows),
                        headers={"content-type": "application/json", "idempotency-key": label},
                    )
                except httpx.HTTPError:
                    return  # killed: this push may or may not have been accepted
                if response.status_code == 429:
                    time.sleep(0.05)
                    continue
                assert response.status_code == 202, response.text
                self.acked.append(label)


def writing(http: httpx.Client) -> bool:
    """Whether a job of the dataset is in its write (its group's transaction) now."""
    running = http.get("/v1/jobs", params={"dataset_id": DATASET, "status": "running"})
    for job in running.json()["jobs"] if running.status_code == 200 else []:
        if http.get(f"/v1/jobs/{job['id']}").json().get("phase") == "writing":
            return True
    return False


def run_and_kill(server: ServerProcess, jobs: dict[str, tuple], seed: int) -> tuple[list, bool]:
    """Push from several clients, and SIGKILL the server once a group is being written
    (while pushes still arrive); the labels of the acknowledged pushes, and whether
    the kill met a write."""
    server.start()
    pushers = [Pusher(server, seed * 10 + c, jobs) for c in range(CLIENTS)]
    for pusher in pushers:
        pusher.start()
    time.sleep(0.3)  # some jobs in, others still being pushed
    deadline = time.monotonic() + 10
    with server.client(timeout=5) as http:
        while not (met := writing(http)) and time.monotonic() < deadline:
            time.sleep(0.005)
    server.kill()
    for pusher in pushers:
        pusher.join(30)
    return [label for pusher in pushers for label in pusher.acked], met


def all_jobs(http: httpx.Client) -> list[dict[str, Any]]:
    """Every job of the dataset, in acceptance order, once all have ended."""
    deadline = time.monotonic() + 60
    while True:
        response = http.get("/v1/jobs", params={"dataset_id": DATASET, "limit": 1000})
        assert response.status_code == 200, response.text
        jobs = response.json()["jobs"][::-1]  # newest first
        if all(job["status"] in TERMINAL for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


@pytest.fixture(params=["duckdb", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path) -> ServerProcess:
    env = {"PUSHBASE_WORKERS": "2"}
    schema = None
    if request.param == "postgres":
        postgres_or_skip()
        schema = f"uniq_{secrets.token_hex(4)}"
        env |= {"PUSHBASE_DATABASE_URL": PG_URL, "PUSHBASE_DATABASE_SCHEMA": schema}
    server = ServerProcess(tmp_path / "data", env=env, log_path=tmp_path / "server.log")
    yield server
    server.stop()
    if schema:
        drop_schema(schema)


def test_keys_stay_unique_through_mixed_jobs_and_sigkills(server: ServerProcess) -> None:
    server.start()
    with server.client() as http:
        response = http.post(
            "/v1/datasets", json={"id": DATASET, "columns": COLUMNS, "unique_key": ["k"]}
        )
        assert response.status_code == 201, response.text
    server.stop()

    jobs: dict[str, tuple[str, list[dict]]] = {}
    acked, met = run_and_kill(server, jobs, seed=1)
    more, met_again = run_and_kill(server, jobs, seed=2)
    acked += more
    assert met or met_again, "no kill landed inside a write"
    server.start()
    with server.client(timeout=60) as http:
        done = all_jobs(http)
        export = http.get(f"/v1/datasets/{DATASET}/export", params={"format": "ndjson"})
        assert export.status_code == 200, export.text
        stored = [orjson.loads(line) for line in export.content.splitlines() if line.strip()]
        row_count = http.get(f"/v1/datasets/{DATASET}").json()["row_count"]

    by_label = {job["idempotency_key"]: job for job in done}
    assert len(by_label) == len(done)
    lost = [label for label in acked if label not in by_label]
    assert not lost, f"acknowledged jobs missing after the restarts: {lost}"
    assert len(acked) >= 10, "too few jobs acknowledged to mean anything"

    state: dict[str, dict[str, Any]] = {}
    for job in done:
        assert job["status"] == "succeeded", (job, server.log_tail(3000))
        method, rows = jobs[job["idempotency_key"]]
        want = apply_model(state, method, rows)
        got = {name: n for name, n in job["stats"].items() if name in want or n}
        got = {name: n for name, n in got.items() if name not in ("received", "ignored_fields")}
        assert got == {name: n for name, n in want.items() if n}, (method, job["stats"], want)

    keys = Counter(row["k"] for row in stored)
    assert not [k for k, n in keys.items() if n > 1], "keys stored twice"
    assert row_count == len(stored) == len(state)
    for row in stored:
        want = state[row["k"]]
        assert {f: row.get(f) for f in FIELDS} == want, (row, want)
    if server.extra_env.get("PUSHBASE_DATABASE_URL") is None:
        return
    with psycopg.connect(PG_URL) as conn:  # PostgreSQL keeps its primary key
        schema = server.extra_env["PUSHBASE_DATABASE_SCHEMA"]
        (count,) = conn.execute(
            "SELECT count(*) FROM information_schema.table_constraints"
            " WHERE table_schema = %s AND constraint_type = 'PRIMARY KEY'",
            [schema],
        ).fetchone()
        assert count >= 1
