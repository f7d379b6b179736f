"""Ingest benchmark behind `make bench`: 1M "users" rows pushed as ~1 MB JSON batches.

For each backend (`--backend duckdb|postgres|both`) it starts a real `pushbase serve` on a
fresh temporary data directory (PostgreSQL: a schema of its own, dropped afterwards),
creates the dataset `users` (8 string columns, a float `score`, a datetime `signup_at`,
unique key (`tenant`, `user_id`)), then runs three phases:

1. insert N new rows;
2. upsert N rows of which half have existing keys and half are new;
3. delete 10 % of the stored keys by key (`method=delete`, ~1 MB key-only bodies);
4. spread upsert: N/5 rows, half with keys drawn at random from the whole dataset, half
   new keys that fall all over its key order, shuffled;
5. spread delete: N/5 keys drawn at random from the whole dataset.

Phases 2 and 3 touch contiguous keys, which a key index handles well; 4 and 5 are what a
nightly sync or a CDC feed does (DESIGN §7, "Spread keys"). The same spread upsert and
delete are also written straight into DuckDB without an index, on a table of the same
rows (baseline.py's reference), and every spread figure gets its ratio to that limit.

With `--preload M` the dataset first gets M rows whose keys no contiguous phase uses
(untimed; the spread phases draw from them like from every stored row), so the phases
write into a table of M + N rows: `make bench-large` gives DESIGN §7's figures on a
10M-row dataset, at the server's default settings.

Each phase pushes batches encoded before the clock starts, from `--clients` concurrent
HTTP clients, then polls the jobs until all are finished. Measured: rows/s end to end
(first request sent -> last job finished), the wall time of every push until its 202,
the server's peak RSS, and the size of its data on disk. A DuckDB baseline (`read_json`
of the insert rows into a keyed table, in this process) is measured in the same run. With
`--repeat N` every backend runs N times on fresh servers and the report gives medians.
The report ends with a Markdown table of every target, PASS/FAIL, for bench/README.md.

    .venv/bin/python bench/ingest.py --quick          # 50k rows, about a minute
    .venv/bin/python bench/ingest.py --repeat 3       # 1M rows, medians of 3
    .venv/bin/python bench/ingest.py --preload 9000000 --no-baseline   # make bench-large
    make bench BENCH_ARGS="--backend duckdb"

Exit code 1 when rows were lost: a push refused, a row or job failed, or a final count is
wrong. Missed targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import http.client as http_client
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH))

from baseline import (  # noqa: E402
    ReferenceResult,
    build_reference_table,
    run_baseline,
    run_reference,
)
from datasize import duckdb_files_bytes, postgres_table_bytes  # noqa: E402
from pgactivity import activity  # noqa: E402
from probe import PROBE_DATASET, LatencyProbe  # noqa: E402
from pushclient import PushConnection  # noqa: E402
from report import (  # noqa: E402
    PEAK_RSS_MB,
    BackendRun,
    PhaseResult,
    details_table,
    environment_lines,
    load_average,
    markdown_table,
    percentile,
    summary_rows,
)
from serverproc import TERMINAL, ServerProcess, wait_job  # noqa: E402
from spreadrows import (  # noqa: E402
    LARGE_ROWS,
    LARGE_RSS_MB,
    disk_and_scale_rows,
    last_run_figures,
    spread_rows,
)
from workload import (  # noqa: E402
    COLUMNS,
    PRELOAD_FIRST_KEY,
    SPREAD_SEED,
    UNIQUE_KEY,
    Batch,
    SpreadPlan,
    StoredKeys,
    delete_keys,
    encode_batches,
    encode_key_batches,
    insert_keys,
    key_record,
    make_row,
    spread_keys,
    upsert_keys,
    write_ndjson,
)

PG_URL = os.environ.get("PUSHBASE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
QUICK_ROWS = 50_000
SPREAD_SHARE = 5  # each spread phase has --rows / 5 records: 200,000 for 1M (issue 21)
PRELOAD_BATCH_ROWS = 10_000  # about 4.5 MB of JSON per preload push


# -- the workload, encoded once --------------------------------------------------------


@dataclass
class Workload:
    rows: int
    new_in_upsert: int
    deleted: list[int]
    insert: list[Batch]
    upsert: list[Batch]
    delete: list[Batch]
    # the dataset's keys when the spread phases start (preload included), and their draws
    stored: StoredKeys
    spread: SpreadPlan | None = None
    spread_upsert: list[Batch] | None = None
    spread_delete: list[Batch] | None = None

    @property
    def after_upsert(self) -> int:
        return self.rows + self.new_in_upsert

    @property
    def after_delete(self) -> int:
        return self.after_upsert - len(self.deleted)


def prepare_workload(
    n: int, batch_bytes: int, preload: int = 0, delete: bool = True, spread: bool = True
) -> Workload:
    t0 = time.perf_counter()
    upsert, new = upsert_keys(n)
    deleted = delete_keys(n + new)
    workload = Workload(
        rows=n,
        new_in_upsert=new,
        deleted=deleted,
        insert=encode_batches(insert_keys(n), 1, batch_bytes),
        upsert=encode_batches(upsert, 2, batch_bytes),
        delete=encode_key_batches(deleted, batch_bytes),
        stored=StoredKeys(preload, n + new, every_10th_deleted=delete),
    )
    names = ["insert", "upsert", "delete"]
    if spread:
        size = max(2, n // SPREAD_SHARE)
        plan = spread_keys(workload.stored, size, size if delete else 0)
        workload.spread = plan
        workload.spread_upsert = encode_batches(plan.upsert, 3, batch_bytes)
        workload.spread_delete = encode_key_batches(plan.delete, batch_bytes)
        names += ["spread_upsert", "spread_delete"] if delete else ["spread_upsert"]
    for name in names:
        batches = getattr(workload, name)
        size = sum(len(body) for body, _ in batches)
        records = sum(count for _, count in batches)
        print(
            f"[workload] {name}: {records:,} records in {len(batches)} pushes of "
            f"~{size / max(1, len(batches)) / 1e6:.2f} MB ({size / 1e6:.1f} MB)",
            flush=True,
        )
    print(f"[workload] encoded in {time.perf_counter() - t0:.1f}s (before any clock)", flush=True)
    return workload


# -- pushing and waiting ---------------------------------------------------------------


@dataclass
class Push:
    index: int
    rows: int
    status: int = 0
    job_id: str | None = None
    error: str | None = None
    retries: int = 0
    acked_at: float = 0.0
    ack_ms: float = 0.0  # the request that got the 202: sent -> answer


class RssSampler(threading.Thread):
    """Samples the server's RSS (process group sum) every 100 ms; keeps the peak, and the
    peak of its anonymous part.

    RSS also counts the pages of mapped files, the shared libraries above all, in every
    process that touched them, and how many of those a process maps depends on how much
    of each library the page cache holds: freshly installed libraries count ~40 MB more
    per process than ones the kernel has partly dropped. The anonymous part does not vary
    with that."""

    def __init__(self, server: ServerProcess | None) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.peak_anon = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.server is not None and not self._stop_event.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            self.peak_anon = max(self.peak_anon, self.server.rss_bytes("RssAnon"))
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
    batches: list[Batch],
    clients: int,
) -> tuple[list[Push], float]:
    """Push every batch from `clients` threads; returns the pushes and when the first was sent.

    Clients are created and connected (keep-alive) before the clock starts: the start is
    the moment every client is ready and the first request goes out.
    """
    pushes = [Push(i, rows) for i, (_, rows) in enumerate(batches)]
    counter = itertools.count()
    path = f"/v1/datasets/{dataset}/records?method={method}"
    ready = threading.Barrier(clients + 1)

    def push_one(http: PushConnection, push: Push, body: bytes) -> None:
        while True:
            sent = time.perf_counter()
            try:
                response = http.request("POST", path, body)
            except (OSError, http_client.HTTPException) as exc:
                push.error = f"{type(exc).__name__}: {exc}"
                return
            elapsed = time.perf_counter() - sent
            if response.status == 429:
                push.retries += 1
                time.sleep(float(response.headers.get("retry-after", "1") or 1))
                continue
            push.status = response.status
            push.acked_at = time.time()
            push.ack_ms = elapsed * 1000
            if response.status in (200, 202):
                doc = response.json()
                push.job_id = doc.get("job_id") or doc.get("id")
            else:
                push.error = f"{response.status} {response.text[:300]}"
            return

    def client_loop() -> None:
        headers = {"x-api-key": api_key, "content-type": "application/json"}
        http = PushConnection(url, headers, timeout=300)
        try:
            try:
                http.request("GET", "/readyz")  # open the keep-alive connection before the clock
            except (OSError, http_client.HTTPException):
                pass  # the pushes will say what is wrong
            finally:
                ready.wait()
            while (i := next(counter)) < len(batches):
                try:
                    push_one(http, pushes[i], batches[i][0])
                except Exception as exc:  # a bench bug must not pass for a refused push
                    pushes[i].error = f"bench client: {type(exc).__name__}: {exc}"
        finally:
            http.close()

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.time()
    for thread in threads:
        thread.join()
    return pushes, started


def preload(url: str, api_key: str, dataset: str, rows: int, clients: int, label: str) -> None:
    """Fill the dataset with `rows` rows whose keys no phase uses, before any clock starts,
    so that the phases write into a table of that size (DESIGN §7 asks for upsert and
    delete figures on a 10M-row dataset). The pushing threads encode their batches as they
    go: 10M rows are gigabytes of JSON, not to be held at once."""
    t0 = time.perf_counter()
    starts = iter(range(PRELOAD_FIRST_KEY, PRELOAD_FIRST_KEY + rows, PRELOAD_BATCH_ROWS))
    take = threading.Lock()
    job_ids: list[str] = []
    failures: list[str] = []
    path = f"/v1/datasets/{dataset}/records?method=insert"

    def client_loop() -> None:
        headers = {"x-api-key": api_key, "content-type": "application/json"}
        http = PushConnection(url, headers, timeout=300)
        try:
            while True:
                with take:
                    start = next(starts, None)
                if start is None:
                    return
                end = min(start + PRELOAD_BATCH_ROWS, PRELOAD_FIRST_KEY + rows)
                body = orjson.dumps([make_row(k, 1) for k in range(start, end)])
                while (response := http.request("POST", path, body)).status == 429:
                    time.sleep(float(response.headers.get("retry-after", "1") or 1))
                if response.status not in (200, 202):
                    failures.append(f"{response.status} {response.text[:200]}")
                    return
                doc = response.json()
                job_ids.append(doc.get("job_id") or doc["id"])
        finally:
            http.close()

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"preload push refused: {failures[0]}")
    docs, _ = wait_jobs(url, api_key, job_ids, timeout=3600)
    failed = [d for d in docs.values() if d.get("status") != "succeeded"]
    if failed:
        raise RuntimeError(f"preload job {failed[0].get('id')} {failed[0].get('status')}")
    seconds = time.perf_counter() - t0
    print(
        f"[{label}] preloaded {rows:,} rows in {seconds:.1f}s ({rows / seconds:,.0f} rows/s,"
        " not a measured phase)",
        flush=True,
    )


STALL_SECONDS = 600.0  # no job of a phase finished for this long: the store stopped writing


def wait_jobs(
    url: str, api_key: str, job_ids: list[str], timeout: float, stall: float = STALL_SECONDS
) -> tuple[dict[str, dict[str, Any]], float]:
    """Poll until every job is terminal; returns the documents and when the last was seen.
    Gives up (TimeoutError) after `timeout`, or once no job has finished for `stall`
    seconds: a store that refuses every write leaves its jobs queued, and the bench must
    report that rather than wait out the whole timeout."""
    docs: dict[str, dict[str, Any]] = {}
    pending = list(job_ids)  # in acceptance order: jobs of one dataset finish in this order
    deadline = time.monotonic() + timeout
    last_seen = time.time()
    front = 0  # job_ids[:front] are known to be terminal
    progress_at = next_check = time.monotonic()
    with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=60) as http:

        def poll(job_id: str) -> bool:
            response = http.get(f"/v1/jobs/{job_id}")
            response.raise_for_status()
            docs[job_id] = response.json()
            return docs[job_id].get("status") in TERMINAL

        while pending:
            while not poll(pending[-1]):
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"{len(pending)} jobs unfinished after {timeout}s")
                if now >= next_check:  # has the oldest unfinished job moved?
                    next_check = now + 10
                    moved = False
                    while front < len(job_ids) - 1 and poll(job_ids[front]):
                        front, moved = front + 1, True
                    if moved:
                        progress_at = now
                    elif now - progress_at > stall:
                        raise TimeoutError(
                            f"no job finished for {stall:.0f}s, {len(job_ids) - front} of"
                            f" {len(job_ids)} unfinished: the store stopped writing"
                        )
                time.sleep(0.1)
            last_seen = time.time()
            pending = [job_id for job_id in pending[:-1] if not poll(job_id)]
            if pending:
                last_seen = time.time()
    return docs, last_seen


STAT_KEYS = ("received", "inserted", "updated", "deleted", "not_found", "failed", "ignored_fields")


def run_phase(
    label: str,
    name: str,
    batches: list[Batch],
    args: argparse.Namespace,
    url: str,
    api_key: str,
    dataset: str,
    postgres_url: str | None = None,
    method: str | None = None,
) -> PhaseResult:
    """Push the batches with `method` (default: the phase's name), wait for their jobs.
    With `postgres_url`, also print what the PostgreSQL server wrote meanwhile."""
    tag = f"{label} {name}"
    method = method or name
    records = sum(rows for _, rows in batches)
    print(f"[{tag}] pushing {records:,} records in {len(batches)} pushes", flush=True)
    result = PhaseResult(name, method, records, len(batches))
    probe = LatencyProbe(url, api_key, batches[0][0])
    probe.start()
    server_before = activity(postgres_url) if postgres_url else None
    pushes, started = push_all(url, api_key, dataset, method, batches, args.clients)
    result.accept_seconds = time.time() - started
    result.retries_429 = sum(p.retries for p in pushes)
    refused = [p for p in pushes if p.job_id is None]
    result.refused_pushes = len(refused)
    for push in refused[:5]:
        print(f"[{tag}] push #{push.index} refused: {push.error}", flush=True)

    acked = sorted((p for p in pushes if p.job_id), key=lambda p: p.acked_at)
    result.ack_ms = [p.ack_ms for p in acked]
    docs, last_seen = wait_jobs(url, api_key, [p.job_id for p in acked], args.job_timeout)
    server_after = activity(postgres_url) if postgres_url else None
    probes = probe.stop()
    result.probe_ms = [ms for _, ms in probes]
    accepted_at = started + result.accept_seconds
    result.probe_after_ms = [ms for sent_at, ms in probes if sent_at >= accepted_at]
    finished = [parse_ts(d.get("finished_at")) for d in docs.values()]
    end = max((f for f in finished if f is not None), default=None) or last_seen
    result.seconds = max(end - started, 1e-9)

    totals = dict.fromkeys(STAT_KEYS, 0)
    failed_rows = sum(p.rows for p in refused)
    shown_row_error = False
    for push in acked:
        doc = docs[push.job_id]
        stats = doc.get("stats") or {}
        for k in totals:
            totals[k] += int(stats.get(k) or 0)
        if doc.get("status") != "succeeded":
            result.failed_jobs += 1
            failed_rows += push.rows
            if result.failed_jobs <= 5:
                print(f"[{tag}] job {push.job_id} {doc.get('status')}: {doc.get('error')}")
        else:
            failed_rows += int(stats.get("failed") or 0)
            if doc.get("errors") and not shown_row_error:
                shown_row_error = True
                print(f"[{tag}] e.g. row error: {doc['errors'][0]}")
    result.failed_rows = failed_rows
    result.stats = totals
    print(
        f"[{tag}] {result.rows:,} records in {result.seconds:.2f}s = "
        f"{result.rows_per_s:,.0f} rows/s end to end (all accepted after "
        f"{result.accept_seconds:.2f}s); ack p50 {percentile(result.ack_ms, 50):.1f} ms, "
        f"p99 {percentile(result.ack_ms, 99):.1f} ms (probe p99 "
        f"{percentile(result.probe_ms, 99):.1f} ms); failed jobs {result.failed_jobs}, "
        f"failed rows {result.failed_rows}, refused pushes {result.refused_pushes}, "
        f"429 retries {result.retries_429}; stats {totals}",
        flush=True,
    )
    if server_before and server_after:
        print(f"[{tag}] PostgreSQL meanwhile: {server_after.since(server_before)}", flush=True)
    return result


# -- checks ------------------------------------------------------------------------------


def lookup(http: httpx.Client, dataset: str, key: int) -> list[dict[str, Any]]:
    response = http.get(f"/v1/datasets/{dataset}/records", params=key_record(key))
    response.raise_for_status()
    return response.json().get("rows", [])


def check_dataset(
    url: str, api_key: str, dataset: str, expected_rows: int, present: dict[int, int], gone=()
) -> list[str]:
    """Row count, rows that must hold phase `present[key]`'s values, keys that must be gone."""
    problems = []
    with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=60) as http:
        row_count = http.get(f"/v1/datasets/{dataset}").json().get("row_count")
        if row_count != expected_rows:
            problems.append(f"row_count {row_count}, expected {expected_rows}")
        for key, phase in present.items():
            rows = lookup(http, dataset, key)
            if len(rows) != 1 or rows[0].get("email") != make_row(key, phase)["email"]:
                problems.append(f"key {key}: {rows!r:.200}")
        for key in gone:
            if rows := lookup(http, dataset, key):
                problems.append(f"deleted key {key} still there: {rows!r:.200}")
    return problems


def phase_problems(result: PhaseResult, expected: dict[str, int]) -> list[str]:
    problems = []
    if result.refused_pushes:
        problems.append(f"{result.name}: {result.refused_pushes} pushes refused")
    if result.failed_rows:
        problems.append(f"{result.name}: {result.failed_rows:,} rows failed")
    for key, want in expected.items():
        if result.stats.get(key) != want:
            problems.append(f"{result.name}: stats.{key} {result.stats.get(key)}, expected {want}")
    return problems


LOG_ODDITIES = ("Traceback", "ERROR", "Error:", "WARNING", "CRITICAL", "Exception")
LOG_ERRORS = ("Traceback", "ERROR", "CRITICAL")  # what "no error" at 10M rows must not meet


def server_log_oddities(
    path: Path, limit: int = 5, marks: tuple[str, ...] = LOG_ODDITIES
) -> tuple[int, list[str]]:
    """Lines of the server log that look like errors or warnings: (count, first few)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, []
    odd = [line for line in lines if any(mark in line for mark in marks)]
    return len(odd), odd[:limit]


def warm_up(url: str, api_key: str, workload: Workload, label: str) -> None:
    """One insert, upsert and delete push on a scratch dataset, each waited for, so that
    the timed phases do not pay for the server's first-request costs (lazy imports, ...)."""
    t0 = time.perf_counter()
    dataset = "bench_warmup"
    with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=120) as http:
        response = http.post(
            "/v1/datasets", json={"id": dataset, "columns": COLUMNS, "unique_key": UNIQUE_KEY}
        )
        if response.status_code != 409:  # 409: left by an earlier run against --url
            response.raise_for_status()
        http.post("/v1/datasets", json={"id": PROBE_DATASET, "columns": COLUMNS})
        for method, batches in (
            ("insert", workload.insert),
            ("upsert", workload.upsert),
            ("delete", workload.delete),
        ):
            response = http.post(
                f"/v1/datasets/{dataset}/records",
                params={"method": method},
                content=batches[0][0],
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()
            job = response.json()
            doc = wait_job(http, job.get("job_id") or job["id"], timeout=120)
            if doc.get("status") != "succeeded":
                print(f"[{label}] warm-up {method} job {doc.get('status')}: {doc.get('error')}")
    print(f"[{label}] warmed up in {time.perf_counter() - t0:.1f}s (scratch dataset)", flush=True)


def spread_phases(
    label: str,
    workload: Workload,
    args: argparse.Namespace,
    url: str,
    api_key: str,
    dataset: str,
    pg: str | None,
    phases: dict[str, PhaseResult],
) -> list[str]:
    """Phases 4 and 5, the spread upsert and delete; returns the problems found. Every
    count is exact: the upsert's existing keys are stored, its new keys are not, and the
    delete's keys are all stored when it runs (workload.spread_keys)."""
    plan = workload.spread
    assert plan is not None and workload.spread_upsert is not None
    stored = len(workload.stored)  # rows when the spread upsert starts
    phase = phases["spread_upsert"] = run_phase(
        label, "spread_upsert", workload.spread_upsert, args, url, api_key, dataset, pg, "upsert"
    )
    problems = phase_problems(phase, {"inserted": len(plan.new), "updated": len(plan.existing)})
    present = {plan.existing[0]: 3, plan.existing[-1]: 3, plan.new[0]: 3, plan.new[-1]: 3}
    problems += check_dataset(url, api_key, dataset, stored + len(plan.new), present)
    if plan.delete and workload.spread_delete:
        phase = phases["spread_delete"] = run_phase(
            label,
            "spread_delete",
            workload.spread_delete,
            args,
            url,
            api_key,
            dataset,
            pg,
            "delete",
        )
        problems += phase_problems(phase, {"deleted": len(plan.delete), "not_found": 0})
        gone = set(plan.delete)
        kept = [k for k in plan.existing if k not in gone][:2]
        kept += [k for k in plan.new if k not in gone][:2]
        problems += check_dataset(
            url,
            api_key,
            dataset,
            stored + len(plan.new) - len(plan.delete),
            dict.fromkeys(kept, 3),
            gone=(plan.delete[0], plan.delete[-1]),
        )
    return [p if p.startswith("spread") else f"spread phases: {p}" for p in problems]


# -- one backend on one fresh server ---------------------------------------------------


def quiet_machine(postgres: bool) -> None:
    """Finish the previous run's deferred I/O before the next clock starts.

    A PostgreSQL run leaves dirty buffers that the server's checkpointer writes out over
    the next minutes, and a removed data directory leaves the kernel's writeback: either
    would land in whichever run comes next and slow its fsyncs and CPU. A `CHECKPOINT`
    and a `sync` do that work now, off the clock.
    """
    started = time.perf_counter()
    if postgres:
        import psycopg

        try:
            with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # not a superuser, or no server: measure anyway
            print(f"[bench] no CHECKPOINT before the run ({exc})", flush=True)
    os.sync()
    time.sleep(1.0)  # let the flushers finish what `sync` started
    print(f"[bench] quiet machine: flushed in {time.perf_counter() - started:.1f}s", flush=True)


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def bench_backend(
    args: argparse.Namespace, backend: str, run: int, workload: Workload, workdir: Path
) -> BackendRun:
    """The three phases on a fresh server of one backend."""
    label = f"{backend} #{run}"
    result = BackendRun(backend, run)
    server: ServerProcess | None = None
    data_dir: Path | None = None
    schema = None
    dataset = args.dataset
    if args.url:
        url, api_key = args.url.rstrip("/"), args.api_key
        if run > 1:
            dataset = f"{args.dataset}_{run}"
    else:
        data_dir = workdir / f"{backend}-{run}"
        extra = dict(item.split("=", 1) for item in args.env)
        if backend == "postgres":
            schema = f"pbbench_{os.getpid()}_{run}"
            extra |= {"PUSHBASE_DATABASE_URL": PG_URL, "PUSHBASE_DATABASE_SCHEMA": schema}
        server = ServerProcess(
            data_dir / "data", workers=args.workers, env=extra, log_path=data_dir / "server.log"
        )
        try:
            server.start(timeout=60)
        except Exception as exc:
            result.problems.append(f"server did not start: {exc}")
            result.stopped = True
            print(f"[{label}] {result.problems[-1]}", file=sys.stderr)
            server.kill()
            if schema:
                drop_pg_schema(schema)
            return result
        url, api_key = server.url, server.admin_key
        print(f"[{label}] server pid {server.pid} at {url}, data dir {data_dir}", flush=True)

    def measure_data() -> None:
        """The dataset's data on disk now (datasize.py); the run keeps the largest."""
        size = None
        if data_dir is not None and backend == "duckdb":
            size = duckdb_files_bytes(data_dir / "data")
        elif schema:
            size = postgres_table_bytes(PG_URL, schema, dataset)
        if size is not None:
            result.data_bytes = max(result.data_bytes or 0, size)

    sampler = RssSampler(server)
    sampler.start()
    try:
        with httpx.Client(base_url=url, headers={"x-api-key": api_key}, timeout=60) as http:
            response = http.post(
                "/v1/datasets",
                json={"id": dataset, "columns": COLUMNS, "unique_key": UNIQUE_KEY},
            )
            if response.status_code != 201:
                result.problems.append(f"create dataset: {response.status_code} {response.text}")
                result.stopped = True
                print(f"[{label}] {result.problems[-1]}", file=sys.stderr)
                return result

        if not args.no_warmup:
            warm_up(url, api_key, workload, label)
        if args.preload:
            preload(url, api_key, dataset, args.preload, args.clients, label)

        n, new = workload.rows, workload.new_in_upsert
        phases = result.phases
        problems = result.problems
        # A server of our own: its database is PG_URL's, whose counters the phases print.
        pg = PG_URL if schema else None

        phases["insert"] = run_phase(
            label, "insert", workload.insert, args, url, api_key, dataset, pg
        )
        measure_data()
        problems += phase_problems(phases["insert"], {"inserted": n})

        phases["upsert"] = run_phase(
            label, "upsert", workload.upsert, args, url, api_key, dataset, pg
        )
        measure_data()
        problems += phase_problems(phases["upsert"], {"inserted": new, "updated": n - new})
        problems += check_dataset(
            url,
            api_key,
            dataset,
            args.preload + workload.after_upsert,
            {0: 1, n - 1: 2, n + new - 1: 2},
        )

        if not args.no_delete:
            phases["delete"] = run_phase(
                label, "delete", workload.delete, args, url, api_key, dataset, pg
            )
            measure_data()
            gone = workload.deleted
            problems += phase_problems(phases["delete"], {"deleted": len(gone), "not_found": 0})
            kept = {k: 1 if k < n - n // 2 else 2 for k in (1, n - 1, n + new - 1) if k % 10}
            problems += check_dataset(
                url,
                api_key,
                dataset,
                args.preload + workload.after_delete,
                kept,
                gone=(gone[0], gone[-1]),
            )
        if workload.spread is not None:
            problems += spread_phases(label, workload, args, url, api_key, dataset, pg, phases)
            measure_data()
        print(
            f"[{label}] checks: {'ok' if not problems else '; '.join(problems)}",
            flush=True,
        )
    except Exception as exc:  # report what was measured, and go on with the next run
        traceback.print_exc()
        result.problems.append(f"aborted: {type(exc).__name__}: {exc}")
        result.stopped = True
    finally:
        sampler.stop()
        hwm = server.peak_rss_bytes() if server else 0
        if server:
            code = server.stop(timeout=60)
            print(f"[{label}] server stopped (exit code {code})")
            count, sample = server_log_oddities(server.log_path)
            result.log_errors, _ = server_log_oddities(server.log_path, marks=LOG_ERRORS)
            if count:
                print(f"[{label}] server log has {count} error/warning lines, e.g.:")
                for line in sample:
                    print(f"    {line[:300]}")
        if data_dir is not None:
            store = dir_size(data_dir / "data") if (data_dir / "data").exists() else 0
            if backend == "duckdb":  # at stop: a last checkpoint may have grown the file
                measure_data()
            dataset_mb = f"{result.data_bytes / 1e6:,.0f} MB" if result.data_bytes else "?"
            print(
                f"[{label}] data dir size {store / 1e6:.0f} MB; the dataset's data, largest"
                f" seen: {dataset_mb}"
            )
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
        if schema and not args.keep:
            drop_pg_schema(schema)
    result.peak_rss = max(sampler.peak, hwm)
    result.peak_anon = sampler.peak_anon
    if server:
        print(
            f"[{label}] peak server RSS: {result.peak_rss / 1e6:.0f} MB (sampled process "
            f"group {sampler.peak / 1e6:.0f} MB, VmHWM {hwm / 1e6:.0f} MB; anonymous "
            f"memory {sampler.peak_anon / 1e6:.0f} MB)"
        )
    return result


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per phase")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sanity run: {QUICK_ROWS:,} rows, repeat 1 (about a minute for both backends)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per backend on fresh servers; medians"
    )
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
    parser.add_argument("--url", help="benchmark a running server (label its store with --backend)")
    parser.add_argument("--api-key", help="admin key for --url")
    parser.add_argument("--dataset", default="users")
    parser.add_argument(
        "--preload",
        type=int,
        default=0,
        metavar="ROWS",
        help="rows stored before the phases, with keys no phase uses (make bench-large: 9M)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the DuckDB baseline")
    parser.add_argument(
        "--no-delete", action="store_true", help="skip the delete phases (contiguous and spread)"
    )
    parser.add_argument(
        "--no-spread", action="store_true", help="skip the spread phases and their reference"
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the no-index DuckDB reference of the spread phases",
    )
    parser.add_argument("--no-warmup", action="store_true", help="time the phases on a cold server")
    parser.add_argument("--job-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory and PostgreSQL schema"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = QUICK_ROWS
        args.repeat = 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.url and not args.api_key:
        parser.error("--url needs --api-key")
    if args.url and args.backend == "both":
        parser.error("--url needs --backend duckdb or postgres (the store the server runs)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["duckdb", "postgres"] if args.backend == "both" else [args.backend]
    load_at_start = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="pushbase-bench-"))
    print(
        f"[bench] {args.rows:,} rows, {args.clients} clients, ~{args.batch_bytes / 1e6:g} MB "
        f"pushes, backends {', '.join(backends)}, repeat {args.repeat}; temp dir {workdir}",
        flush=True,
    )
    runs: list[BackendRun] = []
    baseline: list[float] = []
    references: list[ReferenceResult] = []
    bench_problems: list[str] = []
    try:
        workload = prepare_workload(
            args.rows, args.batch_bytes, args.preload, not args.no_delete, not args.no_spread
        )
        ndjson = workdir / "insert.ndjson"
        if not args.no_baseline:
            size = write_ndjson(insert_keys(args.rows), 1, ndjson)
            print(f"[baseline] wrote {ndjson} ({size / 1e6:.1f} MB)", flush=True)
        reference_base = workdir / "reference-base.duckdb"
        if workload.spread is not None and not args.no_reference:
            t0 = time.perf_counter()
            build_reference_table(reference_base, workload.stored, args.rows)
            print(
                f"[reference] built a {len(workload.stored):,}-row table without an index in"
                f" {time.perf_counter() - t0:.1f}s ({reference_base.stat().st_size / 1e6:,.0f}"
                " MB; untimed)",
                flush=True,
            )
        pg_used = "postgres" in backends and not args.url
        for run in range(1, args.repeat + 1):
            if not args.no_baseline:
                quiet_machine(pg_used)
                b = run_baseline(ndjson, args.rows, workdir)
                baseline.append(b.rows_per_s)
                print(
                    f"[baseline #{run}] {b.rows:,} rows in {b.seconds:.2f}s = "
                    f"{b.rows_per_s:,.0f} rows/s (duckdb read_json -> keyed table)",
                    flush=True,
                )
            if reference_base.exists() and workload.spread is not None:
                quiet_machine(pg_used)
                try:
                    ref = run_reference(reference_base, workload.spread, workdir)
                except Exception as exc:  # a wrong count here is the bench's: say so, go on
                    traceback.print_exc()
                    bench_problems.append(f"reference #{run}: {type(exc).__name__}: {exc}")
                else:
                    references.append(ref)
                    print(
                        f"[reference #{run}] no index, 60k rows per transaction: spread upsert"
                        f" {ref.upsert_rows:,} rows in {ref.upsert_seconds:.2f}s ="
                        f" {ref.upsert_per_s:,.0f} rows/s, spread delete {ref.delete_rows:,}"
                        f" in {ref.delete_seconds:.2f}s = {ref.delete_per_s:,.0f} rows/s;"
                        f" file + wal {ref.file_bytes / 1e6:,.0f} MB",
                        flush=True,
                    )
            for backend in backends:
                quiet_machine(pg_used)
                runs.append(bench_backend(args, backend, run, workload, workdir))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    problems = [f"{r.backend} #{r.run}: {p}" for r in runs for p in r.problems]
    problems += bench_problems
    print("\n## Details\n")
    print("\n".join(details_table(runs)))
    if problems:
        print("\nProblems (rows lost or wrong):")
        for problem in problems:
            print(f"- {problem}")

    scope = (
        f"{args.rows:,} rows per phase, ~{args.batch_bytes / 1e6:g} MB JSON pushes, "
        f"{args.clients} concurrent clients"
    )
    if workload.spread is not None:
        scope += (
            f"; spread phases of {len(workload.spread.upsert):,} upserted rows"
            f" ({len(workload.spread.existing):,} existing keys) and"
            f" {len(workload.spread.delete):,} deleted keys against"
            f" {len(workload.stored):,} stored rows, seed {SPREAD_SEED}"
        )
    if args.repeat > 1:
        scope += f", medians of {args.repeat} runs" + ("" if args.url else " on fresh servers")
    if args.preload:
        scope += (
            f", into a dataset preloaded with {args.preload:,} rows (so the upsert and delete"
            f" run against {args.preload + args.rows:,} stored rows)"
        )
    if args.quick:
        scope += " — `--quick` sanity run; the targets are for 1,000,000 rows"
    large = args.preload + args.rows >= LARGE_ROWS
    overrides = ", ".join(
        args.env + ([f"PUSHBASE_WORKERS={args.workers}"] if args.workers else [])
    ) or ("a running server's own (--url)" if args.url else "")
    rows = spread_rows(runs, references, large, last_run_figures() if large else {})
    table = summary_rows(runs, baseline, rows, LARGE_RSS_MB if large else PEAK_RSS_MB)
    table += disk_and_scale_rows(runs, large, overrides)
    print("\n## Results\n")
    print(f"Workload: {scope}.\n")
    print("\n".join(markdown_table(table)))
    print()
    print("\n".join(environment_lines(PG_URL if "postgres" in backends else None, load_at_start)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
