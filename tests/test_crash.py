"""Durability (DESIGN §3): an acknowledged job survives a SIGKILL and is applied once.

30 pushes are acknowledged without waiting, the server is killed the moment the last
202 arrives, and a restarted server on the same data directory must finish every
acknowledged job, in acceptance order, exactly once.
"""

from __future__ import annotations

import gzip
import random
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest

try:
    from serverproc import TERMINAL, ServerProcess
except ImportError:  # tests/ imported as a package
    from tests.serverproc import TERMINAL, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DATASET = "crashy"
COLUMNS = [
    {"name": "k", "type": "string"},
    {"name": "version", "type": "integer"},
    {"name": "v", "type": "string"},
    {"name": "extra", "type": "string"},
    {"name": "score", "type": "number"},
]
FIELDS = [c["name"] for c in COLUMNS]
JOBS = 30
ROWS_PER_JOB = 200


def build_jobs(seed: int = 7) -> list[tuple[str, list[dict[str, Any]]]]:
    """30 (method, rows) pushes whose outcome depends on the order they are applied in.

    Every job has 200 distinct keys. Most jobs upsert: half new keys, half keys of
    earlier jobs with new values, some of them partial (fields absent keep their value,
    an explicit null clears). A few jobs insert fresh keys only, one deletes keys.
    `version` is a global sequence number, so the winner of each key is visible.
    """
    rng = random.Random(seed)
    jobs: list[tuple[str, list[dict[str, Any]]]] = []
    known: list[str] = []
    known_set: set[str] = set()
    next_key = 0
    seq = 0

    def fresh() -> str:
        nonlocal next_key
        next_key += 1
        return f"key-{next_key:06d}"

    for j in range(JOBS):
        rows: list[dict[str, Any]] = []
        if j == 17:  # delete: 100 keys that exist, 100 that never did
            for key in rng.sample(known, 100):
                rows.append({"k": key})
            rows.extend({"k": f"missing-{j}-{i}"} for i in range(100))
            jobs.append(("delete", rows))
            continue
        method = "insert" if j in (0, 5, 23) else "upsert"
        if method == "insert" or not known:
            keys = [fresh() for _ in range(ROWS_PER_JOB)]
        else:
            old = rng.sample(known, min(ROWS_PER_JOB // 2, len(known)))
            keys = old + [fresh() for _ in range(ROWS_PER_JOB - len(old))]
            rng.shuffle(keys)
        for i, key in enumerate(keys):
            seq += 1
            row: dict[str, Any] = {"k": key, "version": seq}
            shape = rng.random() if method == "upsert" else 1.0
            if shape < 0.25:  # partial: only version and v
                row["v"] = f"j{j}-r{i}-partial"
            elif shape < 0.35:  # explicit null clears extra
                row["v"] = f"j{j}-r{i}-nulling"
                row["extra"] = None
                row["score"] = seq / 7
            else:
                row["v"] = f"j{j}-r{i}"
                row["extra"] = f"x{rng.randrange(10**6)}"
                row["score"] = seq / 3
            rows.append(row)
        for key in keys:
            if key not in known_set:
                known_set.add(key)
                known.append(key)
        jobs.append((method, rows))
    return jobs


def apply_expected(
    state: dict[str, dict[str, Any]], method: str, rows: list[dict[str, Any]]
) -> None:
    """The DESIGN §2 semantics for one job, on a plain dict keyed by `k`."""
    if method == "delete":
        for row in rows:
            state.pop(row["k"], None)
        return
    for row in rows:
        key = row["k"]
        if method == "insert":
            assert key not in state, "test bug: insert of an existing key"
            state[key] = {f: row.get(f) for f in FIELDS}
        elif key in state:
            state[key].update(row)
        else:
            state[key] = {f: row.get(f) for f in FIELDS}


def encode(j: int, rows: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """Vary the wire format so recovery replays JSON, NDJSON and gzip payloads."""
    if j % 3 == 1:
        body = b"\n".join(orjson.dumps(r) for r in rows) + b"\n"
        headers = {"content-type": "application/x-ndjson"}
    else:
        body = orjson.dumps(rows)
        headers = {"content-type": "application/json"}
    if j % 4 == 2:
        body = gzip.compress(body, compresslevel=1)
        headers["content-encoding"] = "gzip"
    return body, headers


def create_dataset(http: httpx.Client) -> None:
    response = http.post(
        "/v1/datasets", json={"id": DATASET, "columns": COLUMNS, "unique_key": ["k"]}
    )
    assert response.status_code == 201, response.text


def push_all(
    server: ServerProcess, jobs: list[tuple[str, list[dict[str, Any]]]]
) -> list[tuple[str, str, int]]:
    """Push every job in order without waiting; returns (job_id, method, index) per 202."""
    acked: list[tuple[str, str, int]] = []
    with server.client(timeout=30) as http:
        for j, (method, rows) in enumerate(jobs):
            body, headers = encode(j, rows)
            response = http.post(
                f"/v1/datasets/{DATASET}/records",
                params={"method": method},
                content=body,
                headers=headers,
            )
            assert response.status_code == 202, (
                f"push #{j} ({method}) -> {response.status_code} {response.text[:500]}"
            )
            doc = response.json()
            assert doc.get("job_id"), doc
            acked.append((doc["job_id"], method, j))
    return acked


def wait_all(server: ServerProcess, job_ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    docs: dict[str, dict[str, Any]] = {}
    pending = list(job_ids)
    with server.client(timeout=10) as http:
        while pending:
            still = []
            for job_id in pending:
                response = http.get(f"/v1/jobs/{job_id}")
                assert response.status_code == 200, (
                    f"acknowledged job {job_id} after restart: GET /v1/jobs/{job_id} -> "
                    f"{response.status_code} {response.text[:500]}"
                )
                doc = response.json()
                docs[job_id] = doc
                if doc.get("status") not in TERMINAL:
                    still.append(job_id)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    states = {j: docs[j].get("status") for j in pending}
                    raise AssertionError(
                        f"{len(pending)} acknowledged jobs unfinished after {timeout}s: "
                        f"{states}\n{server.log_tail()}"
                    )
                time.sleep(0.2)
    return docs


def read_all_rows(http: httpx.Client) -> list[dict[str, Any]]:
    response = http.get(f"/v1/datasets/{DATASET}/export", params={"format": "ndjson"})
    assert response.status_code == 200, response.text[:500]
    return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]


def read_pages(http: httpx.Client, total_expected: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    offset = 0
    while True:
        response = http.get(
            f"/v1/datasets/{DATASET}/records",
            params={"limit": 1000, "offset": offset, "order_by": "k"},
        )
        assert response.status_code == 200, response.text[:500]
        page = response.json()
        assert page["total"] == total_expected, page["total"]
        rows.extend(page["rows"])
        if len(page["rows"]) < 1000:
            return rows
        offset += 1000


def same_value(field: str, got: Any, want: Any) -> bool:
    if field == "score" and got is not None and want is not None:
        return abs(float(got) - float(want)) <= 1e-9 * max(1.0, abs(float(want)))
    return got == want


def check_final_state(server: ServerProcess, expected: dict[str, dict[str, Any]]) -> None:
    with server.client(timeout=60) as http:
        response = http.get(f"/v1/datasets/{DATASET}")
        assert response.status_code == 200, response.text
        assert response.json()["row_count"] == len(expected), (
            f"row_count {response.json()['row_count']} != {len(expected)} distinct keys"
        )
        for source, rows in (
            ("export", read_all_rows(http)),
            ("records", read_pages(http, len(expected))),
        ):
            keys = [r["k"] for r in rows]
            dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
            assert not dupes, f"{source}: keys stored twice: {dupes[:10]}"
            assert set(keys) == set(expected), (
                f"{source}: missing {sorted(set(expected) - set(keys))[:10]}, "
                f"unexpected {sorted(set(keys) - set(expected))[:10]}"
            )
            wrong = []
            for row in rows:
                want = expected[row["k"]]
                for field in FIELDS:
                    if not same_value(field, row.get(field), want[field]):
                        wrong.append((row["k"], field, row.get(field), want[field]))
            assert not wrong, f"{source}: {len(wrong)} wrong values, e.g. {wrong[:5]}"


@pytest.mark.parametrize("crashes", [1, 2], ids=["kill-after-acks", "kill-again-on-recovery"])
def test_acknowledged_jobs_survive_sigkill(tmp_path, crashes: int) -> None:
    server = ServerProcess(tmp_path / "data", log_path=tmp_path / "server.log")
    server.start()
    try:
        with server.client() as http:
            create_dataset(http)
        jobs = build_jobs()
        acked = push_all(server, jobs)
        server.kill()  # immediately after the 30th 202

        if crashes == 2:  # recovery itself is interrupted
            server.start()
            server.kill()

        server.start()
        docs = wait_all(server, [job_id for job_id, _, _ in acked])

        expected: dict[str, dict[str, Any]] = {}
        problems = []
        for job_id, method, j in acked:
            doc = docs[job_id]
            rows = jobs[j][1]
            if doc["status"] != "succeeded":
                problems.append(f"job #{j} {job_id} ({method}): {doc['status']} {doc.get('error')}")
                continue
            stats = doc["stats"]
            if stats.get("received") != len(rows) or stats.get("failed"):
                problems.append(f"job #{j} {job_id} ({method}): stats {stats}")
            if method == "delete" and (stats.get("deleted"), stats.get("not_found")) != (100, 100):
                problems.append(f"job #{j} delete: stats {stats}, want 100 deleted/not_found")
            apply_expected(expected, method, rows)
        assert not problems, "\n".join(problems) + "\n" + server.log_tail(3000)

        check_final_state(server, expected)

        # a clean restart changes nothing (no job is replayed twice)
        server.stop()
        server.start()
        check_final_state(server, expected)
    finally:
        server.stop()


def test_a_spool_file_cut_off_before_its_fsync_is_no_job(tmp_path) -> None:
    """The embedded store keeps an accepted push as one file: payload, then the job
    document and a footer. A file without a complete footer was never acknowledged: a
    restart drops it, and every acknowledged job is still there."""
    data = tmp_path / "data"
    server = ServerProcess(data, log_path=tmp_path / "server.log")
    server.start()
    try:
        with server.client() as http:
            create_dataset(http)
            response = http.post(
                f"/v1/datasets/{DATASET}/records", params={"method": "insert", "wait": 30},
                json=[{"k": "kept", "version": 1}],
            )  # fmt: skip
            assert response.status_code == 200, response.text
        server.stop()
        spool = data / "spool"
        torn = spool / "job_00000000000000000000.job"
        torn.write_bytes(b'[{"k": "torn", "version": 2}]{"id": "job_0000')  # no footer
        empty = spool / "job_11111111111111111111.job"
        empty.write_bytes(b"")

        server.start()
        with server.client() as http:
            jobs = http.get("/v1/jobs", params={"dataset_id": DATASET}).json()["jobs"]
            assert [j["status"] for j in jobs] == ["succeeded"]
            rows = http.get(f"/v1/datasets/{DATASET}/records").json()["rows"]
            assert [r["k"] for r in rows] == ["kept"]
        assert not torn.exists() and not empty.exists()
    finally:
        server.stop()


def test_a_queued_job_spooled_by_an_earlier_version_still_runs(tmp_path) -> None:
    """Earlier versions kept a recorded job's payload alone in `<job id>.payload`. A
    data directory stopped with such a job queued must still apply it after upgrading."""
    data = tmp_path / "data"
    server = ServerProcess(data, workers=0, log_path=tmp_path / "server.log")
    server.start()
    try:
        with server.client() as http:
            create_dataset(http)
            response = http.post(
                f"/v1/datasets/{DATASET}/records", params={"method": "insert"},
                json=[{"k": "old", "version": 1}],
            )  # fmt: skip
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            size = http.get(f"/v1/jobs/{job_id}").json()["bytes"]
        server.stop()  # a clean stop records the job in the catalog as queued
        spooled = data / "spool" / f"{job_id}.job"
        (data / "spool" / f"{job_id}.payload").write_bytes(spooled.read_bytes()[:size])
        spooled.unlink()

        upgraded = ServerProcess(data, log_path=tmp_path / "server2.log")
        upgraded.start()
        try:
            docs = wait_all(upgraded, [job_id])
            assert docs[job_id]["status"] == "succeeded", docs[job_id]
            assert docs[job_id]["stats"]["inserted"] == 1
            with upgraded.client() as http:
                rows = http.get(f"/v1/datasets/{DATASET}/records").json()["rows"]
            assert [r["k"] for r in rows] == ["old"]
            assert not (data / "spool" / f"{job_id}.payload").exists()  # gone with its job
        finally:
            upgraded.stop()
    finally:
        server.stop()
