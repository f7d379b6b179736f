"""The `pushbase` command against a real server subprocess (DESIGN §8, issue #6).

Every command runs as a user would run it: `.venv/bin/pushbase ...` in a subprocess, the
server found through PUSHBASE_URL / PUSHBASE_API_KEY.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

try:
    from serverproc import REPO_ROOT, ServerProcess, free_port
except ImportError:  # tests/ imported as a package
    from tests.serverproc import REPO_ROOT, ServerProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def pushbase_bin() -> str:
    beside = Path(sys.executable).parent / "pushbase"
    return str(beside if beside.exists() else REPO_ROOT / ".venv" / "bin" / "pushbase")


def cli_env(server: ServerProcess, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHBASE_")}
    env.update({"PUSHBASE_URL": server.url, "PUSHBASE_API_KEY": server.admin_key})
    env.update(extra)
    return env


def run_cli(
    server: ServerProcess, *args: str, input: bytes | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `pushbase ARGS`; on a hang, fail with the CLI's stacks and the server's log."""
    proc = subprocess.Popen(
        [pushbase_bin(), *args],
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(server, PYTHONFAULTHANDLER="1"),
        cwd=str(REPO_ROOT),
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        out, err = proc.communicate(timeout=30)
        raise AssertionError(
            f"pushbase {' '.join(args)} hung for {timeout}s\n{out.decode(errors='replace')}\n"
            f"{err.decode(errors='replace')[-8000:]}\n{server.log_tail(4000)}"
        ) from None
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def cli_json(server: ServerProcess, *args: str) -> Any:
    return orjson.loads(ok(run_cli(server, *args, "--json")).stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cli-server"), workers=2)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def write_events_csv(path: Path, rows: int, *, bad: dict[int, str] | None = None) -> list[int]:
    """`rows` events; every 997th has a quoted comma and newline. Returns each row's line."""
    bad = bad or {}
    lines = []
    line = 2
    parts = ["id,kind,amount,at,note\n"]
    for i in range(rows):
        note = '"multi\nline, quoted ""note"""' if i % 997 == 0 else f"n{i % 13}"
        amount = bad.get(i, f"{(i * 37) % 1000 / 10}")
        parts.append(f"{i},k{i % 7},{amount},2024-01-{1 + i % 28:02d}T10:{i % 60:02d}:00Z,{note}\n")
        lines.append(line)
        line += 2 if i % 997 == 0 else 1
    path.write_text("".join(parts))
    return lines


EVENT_COLUMNS = "id:integer,kind:string,amount:number,at:datetime,note:string"


def dataset_rows(server: ServerProcess, dataset: str) -> pa.Table:
    with server.client() as http:
        response = http.get(f"/v1/datasets/{dataset}/export", params={"format": "parquet"})
    assert response.status_code == 200, response.text
    return pq.read_table(io.BytesIO(response.content))


# -- the three checks of the issue ----------------------------------------------------


def test_push_200k_row_csv_lands_exactly(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    rows = 200_000
    write_events_csv(path, rows)
    ok(run_cli(server, "datasets", "create", "events", "--columns", EVENT_COLUMNS))
    started = time.monotonic()
    result = ok(
        run_cli(server, "push", "events", str(path), "--concurrency", "4", "--batch-bytes", "512KB")
    )
    elapsed = time.monotonic() - started
    assert "inserted 200,000" in result.stdout, result.stdout
    assert "failed 0" in result.stdout
    assert elapsed < 120, elapsed

    table = dataset_rows(server, "events").sort_by("id")
    assert table.num_rows == rows
    assert table.column("id").to_pylist() == list(range(rows))
    assert table.column("amount").to_pylist()[:3] == [0.0, 3.7, 7.4]
    assert table.column("note").to_pylist()[997] == 'multi\nline, quoted "note"'
    jobs = cli_json(server, "jobs", "list", "--dataset", "events", "--limit", "1000")
    assert len(jobs) > 4  # it really was cut into batches
    assert sum(j["stats"]["inserted"] for j in jobs) == rows


def test_push_interrupted_by_server_restart_applies_nothing_twice(tmp_path: Path) -> None:
    """Kill the server mid-push, interrupt the CLI, restart, re-run: every row exactly once.

    The dataset has no unique key, so a batch applied twice would show as duplicate rows.
    """
    path = tmp_path / "stream.csv"
    rows = 60_000
    write_events_csv(path, rows)
    server = ServerProcess(tmp_path / "data", port=free_port(), workers=2)
    server.start()
    try:
        ok(run_cli(server, "datasets", "create", "stream", "--columns", EVENT_COLUMNS))
        command = [
            pushbase_bin(),
            "push",
            "stream",
            str(path),
            "--batch-bytes",
            "16KB",
            "--concurrency",
            "2",
            "--retries",
            "50",
        ]
        first = subprocess.Popen(
            command,
            env=cli_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
        )
        accepted_before_kill = 0
        with server.client() as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and first.poll() is None:
                jobs = http.get("/v1/jobs", params={"dataset": "stream", "limit": 1000}).json()
                accepted_before_kill = len(jobs["jobs"])
                if accepted_before_kill >= 15:
                    break
                time.sleep(0.01)
        assert first.poll() is None, "the push ended before it could be interrupted"
        server.kill()  # SIGKILL mid-push: requests in flight get connection errors
        time.sleep(1.0)  # the CLI retries against a dead server meanwhile
        assert first.poll() is None  # still retrying
        first.send_signal(signal.SIGINT)  # the user gives up: Ctrl-C
        output = first.communicate(timeout=60)[0].decode(errors="replace")
        assert first.returncode == 130, output

        server.start()  # same data dir, same port: the same command line works again
        rerun = subprocess.run(
            command, env=cli_env(server), capture_output=True, timeout=240, cwd=str(REPO_ROOT)
        )
        stdout = rerun.stdout.decode(errors="replace")
        assert rerun.returncode == 0, stdout + rerun.stderr.decode(errors="replace")
        assert "failed 0" in stdout, stdout

        table = dataset_rows(server, "stream")
        assert table.num_rows == rows  # nothing lost, nothing twice
        assert sorted(table.column("id").to_pylist()) == list(range(rows))
        with server.client() as http:
            jobs = http.get("/v1/jobs", params={"dataset": "stream", "limit": 1000}).json()["jobs"]
        keys = [j["idempotency_key"] for j in jobs]
        assert len(keys) == len(set(keys))  # one job per batch, whatever was sent twice
        assert all(j["status"] == "succeeded" for j in jobs)
        assert sum(j["stats"]["inserted"] for j in jobs) == rows
        assert 15 <= accepted_before_kill < len(jobs)
    finally:
        server.stop()


def test_push_with_bad_rows_exits_non_zero_and_names_their_lines(
    server: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    bad = {5: "five", 1500: "n/a", 2990: "1,5"}
    lines = write_events_csv(path, 3000, bad={k: f'"{v}"' for k, v in bad.items()})
    ok(run_cli(server, "datasets", "create", "badrows", "--columns", EVENT_COLUMNS))
    result = run_cli(server, "push", "badrows", str(path), "--batch-bytes", "8KB")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed 3" in result.stdout, result.stdout
    assert "inserted 2,997" in result.stdout
    for row in bad:
        assert f"bad.csv:{lines[row]} " in result.stdout, (row, lines[row], result.stdout)
    assert lines[1500] == 1504 and lines[2990] == 2995  # multi-line notes shift the lines
    assert "invalid_value" in result.stdout
    with server.client() as http:
        assert http.get("/v1/datasets/badrows").json()["row_count"] == 2997


# -- the other commands ---------------------------------------------------------------


def test_every_input_format_and_stdin(server: ServerProcess, tmp_path: Path) -> None:
    records = [
        {"id": i, "name": f"n{i}", "score": i / 4, "tags": ["a", f"t{i}"]} for i in range(300)
    ]
    sample = tmp_path / "sample.json"
    sample.write_bytes(orjson.dumps(records[:3]))
    created = cli_json(
        server, "datasets", "create", "fmt", "--from-sample", str(sample), "--key", "id"
    )
    assert [c["type"] for c in created["columns"]] == ["integer", "string", "number", "json"]
    assert created["unique_key"] == ["id"]

    as_json = tmp_path / "a.json"
    as_json.write_bytes(orjson.dumps(records[:100], option=orjson.OPT_INDENT_2))
    ndjson = b"".join(orjson.dumps(r) + b"\n" for r in records[100:200])
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(records[200:]), parquet)

    ok(run_cli(server, "push", "fmt", str(as_json), str(parquet), "--batch-bytes", "2KB"))
    ok(run_cli(server, "push", "fmt", "-", "--format", "ndjson", input=ndjson))
    table = dataset_rows(server, "fmt").sort_by("id")
    assert table.column("id").to_pylist() == list(range(300))
    assert table.column("score").to_pylist()[7] == 1.75
    assert orjson.loads(table.column("tags").to_pylist()[250]) == ["a", "t250"]

    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[\n  {"id": 1},\n  {"id": "x"},\n  {"id": 3}\n]\n')
    result = run_cli(server, "push", "fmt", str(bad))
    assert result.returncode == 1 and "bad.json:3 " in result.stdout, result.stdout


def test_dataset_job_key_and_export_commands(server: ServerProcess, tmp_path: Path) -> None:
    sample = tmp_path / "people.csv"
    sample.write_text("id,email,born\n1,a@x.org,1990-02-03\n2,b@x.org,1985-12-31\n")
    ok(
        run_cli(
            server,
            "datasets",
            "create",
            "people",
            "--from-sample",
            str(sample),
            "--key",
            "id",
            "--name",
            "People",
        )
    )
    listed = {d["id"]: d for d in cli_json(server, "datasets", "list")}
    assert listed["people"]["name"] == "People"
    ok(run_cli(server, "push", "people", str(sample), "--no-wait"))
    watched = run_cli(server, "jobs", "watch", "--dataset", "people")
    assert watched.returncode == 0, watched.stdout + watched.stderr

    shown = cli_json(server, "datasets", "show", "people")
    assert shown["row_count"] == 2
    assert {c["name"]: c["type"] for c in shown["columns"]}["born"] == "date"
    assert shown["sample_rows"][0]["email"] == "a@x.org"
    text = ok(run_cli(server, "datasets", "show", "people")).stdout
    assert "born" in text and "date" in text and "a@x.org" in text

    jobs = cli_json(server, "jobs", "list", "--dataset", "people")
    assert jobs[0]["status"] == "succeeded"
    job = cli_json(server, "jobs", "show", jobs[0]["id"])
    assert job["stats"]["inserted"] == 2
    assert jobs[0]["id"] in ok(run_cli(server, "jobs", "show", jobs[0]["id"])).stdout

    out = tmp_path / "people.parquet"
    ok(run_cli(server, "export", "people", "-o", str(out)))
    assert pq.read_table(out).num_rows == 2
    exported = ok(run_cli(server, "export", "people", "--format", "csv")).stdout
    assert list(csv.DictReader(io.StringIO(exported)))[1]["email"] == "b@x.org"

    created = cli_json(server, "keys", "create", "reader", "--scope", "read", "-d", "people")
    assert created["scopes"] == ["read"] and created["key"].startswith("pb_")
    assert created["id"] in {k["id"] for k in cli_json(server, "keys", "list")}
    with_key = run_cli(server, "--key", created["key"], "datasets", "list", "--json")
    assert [d["id"] for d in orjson.loads(ok(with_key).stdout)] == ["people"]
    denied = run_cli(server, "--key", created["key"], "push", "people", str(sample))
    assert denied.returncode == 2 and "forbidden" in denied.stderr, denied.stderr
    ok(run_cli(server, "keys", "revoke", created["id"]))
    revoked = run_cli(server, "--key", created["key"], "datasets", "list")
    assert revoked.returncode == 2 and "invalid_key" in revoked.stderr

    ok(run_cli(server, "datasets", "drop", "people", "--yes"))
    missing = run_cli(server, "datasets", "show", "people")
    assert missing.returncode == 2 and "dataset_not_found" in missing.stderr


def test_unreachable_server_and_missing_key_fail_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHBASE_")}
    no_key = subprocess.run(
        [pushbase_bin(), "datasets", "list"], capture_output=True, env=env, timeout=60
    )
    assert no_key.returncode == 2 and b"PUSHBASE_API_KEY" in no_key.stderr
    port = free_port()
    unreachable = subprocess.run(
        [pushbase_bin(), "--url", f"http://127.0.0.1:{port}", "--key", "k", "datasets", "list"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert unreachable.returncode == 2, unreachable.stderr
    assert b"connection_error" in unreachable.stderr
