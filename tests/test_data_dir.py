"""What the data directory holds: payloads only while their jobs are unfinished, and an
embedded store whose write-ahead log is folded in once no job runs."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import psycopg
import pytest

from conftest import PG_URL, StoreFactory, create_dataset, finished_job, make_client, push, rows_of
from pushbase.errors import PushbaseError

COLUMNS = [{"name": "id", "type": "integer"}, {"name": "note", "type": "string"}]


def log_size(data_dir: Path) -> int:
    wal = data_dir / "pushbase.duckdb.wal"
    return wal.stat().st_size if wal.exists() else 0


def write_a_few_megabytes(client) -> None:
    create_dataset(client, "notes", COLUMNS, unique_key=["id"])
    for round_ in range(4):
        rows = [{"id": i, "note": f"round {round_} " + "x" * 200} for i in range(5000)]
        assert push(client, "notes", rows)["status"] == "succeeded"


@pytest.mark.parametrize(("idle_checkpoint_mb", "folded"), [(1, True), (0, False)])
def test_the_log_is_checkpointed_once_no_job_runs(
    tmp_path: Path, idle_checkpoint_mb: int, folded: bool
) -> None:
    # The size-triggered checkpoint is out of reach: only the idle one can fold the log,
    # and without it the writes leave several MB of log behind.
    settings = {"duckdb_checkpoint_mb": 4096, "duckdb_idle_checkpoint_mb": idle_checkpoint_mb}
    with make_client(tmp_path, **settings) as client:
        write_a_few_megabytes(client)
        deadline = time.monotonic() + 5
        while log_size(tmp_path) >= 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (log_size(tmp_path) < 1024 * 1024) is folded, log_size(tmp_path)
        assert len(rows_of(client, "notes")) == 5000


def files_under(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("pushbase.")]


def test_a_finished_job_leaves_no_payload_behind(stores: StoreFactory) -> None:
    settings = stores.new()
    with make_client(settings) as client:
        create_dataset(client, "notes", COLUMNS, unique_key=["id"])
        rows = [{"id": i, "note": "x" * 100} for i in range(20000)]  # spilled: over 1 MB
        for method in ("insert", "upsert", "delete"):
            assert push(client, "notes", rows, method)["status"] == "succeeded"
        assert push(client, "notes", rows[:10], "insert", gzip=True)["stats"]["inserted"] == 10
        assert files_under(settings["data_dir"]) == []


def test_a_job_accepted_by_a_process_without_workers_runs_from_postgresql(
    stores: StoreFactory, tmp_path: Path
) -> None:
    if stores.backend != "postgres":
        pytest.skip("one embedded store has one process")
    accepting = stores.new()
    with make_client(accepting, workers=0) as client:
        create_dataset(client, "notes", COLUMNS, unique_key=["id"])
        rows = [{"id": i, "note": f"note {i}"} for i in range(3000)]
        response = client.post("/v1/datasets/notes/records", json=rows)
        assert response.status_code == 202, response.text
        assert files_under(accepting["data_dir"]) == []  # nothing kept for workers elsewhere
        running = {**accepting, "data_dir": tmp_path / "elsewhere"}
        with make_client(running) as worker:
            job = finished_job(worker, response.json()["job_id"])
            assert job["stats"]["inserted"] == 3000
            assert rows_of(worker, "notes", id=2999) == [{"id": 2999, "note": "note 2999"}]


def test_a_store_migrated_by_a_later_release_is_refused_on_start(stores: StoreFactory) -> None:
    """A later release may store what this one cannot read (PostgreSQL payloads became
    compressed in schema version 3): a process must not start on such a store."""
    settings = stores.new()
    with make_client(settings) as client:
        create_dataset(client, "notes", COLUMNS, unique_key=["id"])
    if stores.backend == "duckdb":
        with duckdb.connect(str(settings["data_dir"] / "pushbase.duckdb")) as conn:
            conn.execute("INSERT INTO _pb_version SELECT max(version) + 1 FROM _pb_version")
    else:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{settings["database_schema"]}"._pb_version'
                f' SELECT max(version) + 1 FROM "{settings["database_schema"]}"._pb_version'
            )
    refusing = make_client(settings)
    with pytest.raises(PushbaseError, match="migrated by a later pushbase") as refused:
        refusing.__enter__()
    assert refused.value.code == "store_too_new"
