"""The embedded store's file: its write-ahead log is folded in while no job runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import create_dataset, make_client, push, rows_of

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
