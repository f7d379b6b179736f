"""Ingest benchmark behind `make bench`: 1M "users" rows pushed as ~1 MB JSON batches.

Starts a real `pushbase serve` on a fresh temporary data directory (or uses `--url`),
creates the dataset `users` (8 string columns, a float `score`, a datetime
`signup_at`, unique key (`tenant`, `user_id`)), then runs two phases:

1. insert N new rows;
2. upsert N rows of which half have existing keys and half are new.

Each phase pushes pre-encoded batches from `--clients` concurrent HTTP clients without
waiting, then polls the jobs until all are finished. Reported per phase: rows/s end to
end (first request sent -> last job finished), acceptance rate, failed jobs and rows,
and the server's peak RSS.

    .venv/bin/python bench/ingest.py --quick          # 100k rows
    .venv/bin/python bench/ingest.py                  # 1M rows
    make bench BENCH_ARGS="--rows 2000000 --clients 4"
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serverproc import TERMINAL, ServerProcess  # noqa: E402

COLUMNS = [
    {"name": "tenant", "type": "string"},
    {"name": "user_id", "type": "string"},
    {"name": "email", "type": "string"},
    {"name": "first_name", "type": "string"},
    {"name": "last_name", "type": "string"},
    {"name": "country", "type": "string"},
    {"name": "city", "type": "string"},
    {"name": "plan", "type": "string"},
    {"name": "score", "type": "number"},
    {"name": "signup_at", "type": "datetime"},
]
UNIQUE_KEY = ["tenant", "user_id"]

FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Barbara",
    "Ken",
    "Margaret",
    "Dennis",
    "Frances",
    "Edsger",
]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie"]
PLACES = [
    ("NO", "Oslo"),
    ("FR", "Paris"),
    ("DE", "Berlin"),
    ("US", "Austin"),
    ("JP", "Osaka"),
    ("BR", "Recife"),
    ("IN", "Pune"),
    ("KE", "Nairobi"),
    ("CA", "Montréal"),
]
PLANS = ["free", "pro", "team", "enterprise"]
TENANTS = [f"tenant-{t:03d}" for t in range(64)]


def make_row(i: int, phase: int) -> dict[str, Any]:
    """Row for key number `i`; deterministic, and different values in phase 2."""
    country, city = PLACES[i % len(PLACES)]
    return {
        "tenant": TENANTS[i % 64],
        "user_id": f"u{i:010d}",
        "email": f"user{i}@example.com" if phase == 1 else f"user{i}+p2@example.org",
        "first_name": FIRST[i % 10],
        "last_name": LAST[(i // 10) % 8],
        "country": country,
        "city": city,
        "plan": PLANS[(i + phase) % 4],
        "score": (i * 7919 % 100_000) / 100.0 + (0.5 if phase == 2 else 0.0),
        "signup_at": (
            f"20{20 + i % 5}-{1 + i % 12:02d}-{1 + (i // 12) % 28:02d}"
            f"T{(i // 7) % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}.{i % 1000:03d}Z"
        ),
    }


def encode_batches(keys: list[int], phase: int, batch_bytes: int) -> list[tuple[bytes, int]]:
    """Split rows for `keys` into JSON arrays of about `batch_bytes`; (body, row count)."""
    sample = [make_row(k, phase) for k in keys[:1000]]
    per_row = max(1, len(orjson.dumps(sample)) // max(1, len(sample)))
    rows_per_batch = max(1, batch_bytes // per_row)
    batches = []
    for start in range(0, len(keys), rows_per_batch):
        chunk = keys[start : start + rows_per_batch]
        batches.append((orjson.dumps([make_row(k, phase) for k in chunk]), len(chunk)))
    return batches


@dataclass
class Push:
    index: int
    rows: int
    status: int = 0
    job_id: str | None = None
    error: str | None = None
    retries: int = 0
    acked_at: float = 0.0


@dataclass
class PhaseResult:
    name: str
    method: str
    rows: int
    batches: int
    seconds: float = 0.0
    accept_seconds: float = 0.0
    failed_jobs: int = 0
    failed_rows: int = 0
    refused_pushes: int = 0
    retries_429: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class RssSampler(threading.Thread):
    """Samples the server's RSS (process group sum) every 100 ms; keeps the peak."""

    def __init__(self, server: ServerProcess | None) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.server is not None and not self._stop_event.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            self._stop_event.wait(0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def push_all(
    url: str,
    api_key: str,
    dataset: str,
    method: str,
    batches: list[tuple[bytes, int]],
    clients: int,
) -> list[Push]:
    pushes = [Push(i, rows) for i, (_, rows) in enumerate(batches)]
    counter = itertools.count()
    path = f"/v1/datasets/{dataset}/records"

    def client_loop() -> None:
        headers = {"x-api-key": api_key, "content-type": "application/json"}
        with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
            while (i := next(counter)) < len(batches):
                push = pushes[i]
                while True:
                    try:
                        response = http.post(path, params={"method": method}, content=batches[i][0])
                    except httpx.HTTPError as exc:
                        push.error = f"{type(exc).__name__}: {exc}"
                        break
                    if response.status_code == 429:
                        push.retries += 1
                        time.sleep(float(response.headers.get("retry-after", "1") or 1))
                        continue
                    push.status = response.status_code
                    push.acked_at = time.time()
                    if response.status_code in (200, 202):
                        doc = response.json()
                        push.job_id = doc.get("job_id") or doc.get("id")
                    else:
                        push.error = f"{response.status_code} {response.text[:300]}"
                    break

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return pushes


def wait_jobs(
    url: str, api_key: str, job_ids: list[str], timeout: float
) -> tuple[dict[str, dict[str, Any]], float]:
    """Poll until every job is terminal; returns the documents and when the last was seen."""
    docs: dict[str, dict[str, Any]] = {}
    pending = list(job_ids)  # in acceptance order: jobs of one dataset finish in this order
    deadline = time.monotonic() + timeout
    last_seen = time.time()
    with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=60) as http:

        def poll(job_id: str) -> bool:
            response = http.get(f"/v1/jobs/{job_id}")
            response.raise_for_status()
            docs[job_id] = response.json()
            return docs[job_id].get("status") in TERMINAL

        while pending:
            while not poll(pending[-1]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} jobs unfinished after {timeout}s")
                time.sleep(0.1)
            last_seen = time.time()
            pending = [job_id for job_id in pending[:-1] if not poll(job_id)]
            if pending:
                last_seen = time.time()
    return docs, last_seen


def run_phase(
    name: str,
    method: str,
    keys: list[int],
    phase: int,
    args: argparse.Namespace,
    url: str,
    api_key: str,
) -> PhaseResult:
    print(f"[{name}] encoding {len(keys):,} rows ...", flush=True)
    t0 = time.perf_counter()
    batches = encode_batches(keys, phase, args.batch_bytes)
    total_bytes = sum(len(b) for b, _ in batches)
    print(
        f"[{name}] {len(batches)} batches, {total_bytes / 1e6:.1f} MB "
        f"(encoded in {time.perf_counter() - t0:.1f}s); pushing with {args.clients} clients",
        flush=True,
    )
    result = PhaseResult(name, method, len(keys), len(batches))
    started = time.time()
    pushes = push_all(url, api_key, args.dataset, method, batches, args.clients)
    accepted_at = time.time()
    del batches
    result.accept_seconds = accepted_at - started
    result.retries_429 = sum(p.retries for p in pushes)
    refused = [p for p in pushes if p.job_id is None]
    result.refused_pushes = len(refused)
    for push in refused[:5]:
        print(f"[{name}] push #{push.index} refused: {push.error}", flush=True)

    acked = sorted((p for p in pushes if p.job_id), key=lambda p: p.acked_at)
    docs, last_seen = wait_jobs(url, api_key, [p.job_id for p in acked], args.job_timeout)
    finished = [parse_ts(d.get("finished_at")) for d in docs.values()]
    end = max((f for f in finished if f is not None), default=None) or last_seen
    result.seconds = max(end - started, 1e-9)

    totals = dict.fromkeys(
        ("received", "inserted", "updated", "deleted", "not_found", "failed", "ignored_fields"), 0
    )
    failed_rows = sum(p.rows for p in refused)
    for push in acked:
        doc = docs[push.job_id]
        for k in totals:
            totals[k] += int((doc.get("stats") or {}).get(k) or 0)
        if doc.get("status") != "succeeded":
            result.failed_jobs += 1
            failed_rows += push.rows
            if result.failed_jobs <= 5:
                print(f"[{name}] job {push.job_id} {doc.get('status')}: {doc.get('error')}")
        else:
            failed_rows += int((doc.get("stats") or {}).get("failed") or 0)
            if doc.get("errors") and result.failed_rows == 0:
                print(f"[{name}] e.g. row error: {doc['errors'][0]}")
    result.failed_rows = failed_rows
    result.stats = totals
    print(
        f"[{name}] {result.rows:,} rows in {result.seconds:.2f}s = {result.rows_per_s:,.0f} rows/s "
        f"end to end (all accepted after {result.accept_seconds:.2f}s); "
        f"failed jobs {result.failed_jobs}, failed rows {result.failed_rows}, "
        f"refused pushes {result.refused_pushes}, 429 retries {result.retries_429}; "
        f"stats {totals}",
        flush=True,
    )
    return result


def phase2_keys(n: int) -> tuple[list[int], int]:
    """Half keys from the upper half of phase 1 (existing), half new, interleaved."""
    existing = list(range(n - n // 2, n))
    new = list(range(n, n + (n - len(existing))))
    keys: list[int] = []
    for pair in itertools.zip_longest(existing, new):
        keys.extend(k for k in pair if k is not None)
    return keys, len(new)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "-"
    except OSError:
        return "-"


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


PG_URL = os.environ.get("PUSHBASE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def bench_backend(args: argparse.Namespace, backend: str) -> tuple[list[PhaseResult], int, int]:
    """Run both phases on a fresh server of one backend: (results, peak RSS, exit code)."""
    server: ServerProcess | None = None
    data_dir: Path | None = None
    schema = None
    if args.url:
        url, api_key = args.url.rstrip("/"), args.api_key
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="pushbase-bench-"))
        extra = dict(item.split("=", 1) for item in args.env)
        if backend == "postgres":
            schema = f"pbbench_{os.getpid()}"
            extra |= {"PUSHBASE_DATABASE_URL": PG_URL, "PUSHBASE_DATABASE_SCHEMA": schema}
        server = ServerProcess(
            data_dir / "data", workers=args.workers, env=extra, log_path=data_dir / "server.log"
        )
        server.start(timeout=60)
        url, api_key = server.url, server.admin_key
        print(f"[{backend}] server pid {server.pid} at {url}, data dir {data_dir}", flush=True)

    sampler = RssSampler(server)
    sampler.start()
    results: list[PhaseResult] = []
    exit_code = 0
    try:
        with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=60) as http:
            response = http.post(
                "/v1/datasets",
                json={"id": args.dataset, "columns": COLUMNS, "unique_key": UNIQUE_KEY},
            )
            if response.status_code != 201:
                print(f"create dataset: {response.status_code} {response.text}", file=sys.stderr)
                return results, 0, 2

        n = args.rows
        results.append(run_phase("insert", "insert", list(range(n)), 1, args, url, api_key))
        keys, new = phase2_keys(n)
        results.append(run_phase("upsert", "upsert", keys, 2, args, url, api_key))

        expected_rows = n + new
        with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=60) as http:
            row_count = http.get(f"/v1/datasets/{args.dataset}").json().get("row_count")
            checks = []
            for key, phase in ((0, 1), (n - 1, 2), (n + new - 1, 2)):
                want = make_row(key, phase)
                rows = (
                    http.get(
                        f"/v1/datasets/{args.dataset}/records",
                        params={"tenant": want["tenant"], "user_id": want["user_id"]},
                    )
                    .json()
                    .get("rows", [])
                )
                checks.append(len(rows) == 1 and rows[0].get("email") == want["email"])
        ok = row_count == expected_rows and all(checks)
        print(
            f"[{backend}] row_count {row_count} (expected {expected_rows}); spot checks "
            f"{'ok' if all(checks) else checks}",
            flush=True,
        )
        if not ok or any(r.failed_rows or r.refused_pushes for r in results):
            exit_code = 1
    finally:
        sampler.stop()
        hwm = server.peak_rss_bytes() if server else 0
        if server:
            code = server.stop(timeout=60)
            print(f"[{backend}] server stopped (exit code {code})")
        if data_dir is not None:
            store = dir_size(data_dir / "data") if (data_dir / "data").exists() else 0
            print(f"[{backend}] data dir size {store / 1e6:.0f} MB")
            if args.keep:
                print(f"kept {data_dir}")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
        if schema and not args.keep:
            drop_pg_schema(schema)
    peak = max(sampler.peak, hwm)
    print(
        f"[{backend}] peak server RSS: {peak / 2**20:.0f} MiB (sampled "
        f"{sampler.peak / 2**20:.0f} MiB, VmHWM {hwm / 2**20:.0f} MiB)"
    )
    return results, peak, exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per phase")
    parser.add_argument("--quick", action="store_true", help="100,000 rows per phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--batch-bytes", type=int, default=1_000_000, help="JSON bytes per push")
    parser.add_argument("--workers", type=int, default=None, help="PUSHBASE_WORKERS for the server")
    parser.add_argument(
        "--backend",
        choices=["duckdb", "postgres", "both"],
        default="both",
        help="store to benchmark (postgres: PUSHBASE_TEST_DATABASE_URL, a schema of its own)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting"
    )
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--api-key", help="admin key for --url")
    parser.add_argument("--dataset", default="users")
    parser.add_argument("--job-timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 100_000
    if args.url and not args.api_key:
        parser.error("--url needs --api-key")
    backends = ["duckdb", "postgres"] if args.backend == "both" else [args.backend]
    if args.url:
        backends = ["server"]

    table: list[tuple[str, PhaseResult, int]] = []
    exit_code = 0
    for backend in backends:
        results, peak, code = bench_backend(args, backend)
        exit_code = max(exit_code, code)
        table.extend((backend, r, peak) for r in results)

    print()
    print(
        "| date | commit | cpus | store | rows | clients | batch | phase | rows/s | accepted in | "
        "failed jobs/rows | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backend, r, peak in table:
        print(
            f"| {time.strftime('%Y-%m-%d')} | {git_commit()} | {os.cpu_count()} | {backend} | "
            f"{r.rows:,} | {args.clients} | {args.batch_bytes / 1e6:g} MB | {r.name} | "
            f"{r.rows_per_s:,.0f} | {r.accept_seconds:.1f}s | {r.failed_jobs}/{r.failed_rows} | "
            f"{peak / 2**20:.0f} MiB |"
        )
    print(f"\n({platform.python_implementation()} {platform.python_version()})")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
