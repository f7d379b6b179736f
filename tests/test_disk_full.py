"""A full disk loses nothing acknowledged (issue 20, item 3; DESIGN §3).

On a real small filesystem (a 20 MB tmpfs, mounted when the tests run as root, as CI
does): a push the disk cannot hold is refused with 507 `insufficient_storage` before it
is acknowledged, leaving no file behind; a job acknowledged before the disk filled waits
in the queue (never `failed`) and runs once space returns, without a restart; the
workers live through it all (`/readyz` stays 200 with `workers: true`).
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conftest import (
    PG_URL,
    StoreFactory,
    create_dataset,
    finished_job,
    make_client,
    postgres_or_skip,
)
from pushbase.errors import InsufficientStorage, StoreUnavailable, storage_error
from pushbase.payload import Payload

DISK_MB = 20
COLUMNS = [{"name": "id", "type": "integer"}, {"name": "s", "type": "string"}]
ROWS_PER_JOB = 2000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {DISK_MB} MB tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all the disk's free space but `leave` bytes with one file (grown or shrunk)."""
    filler = disk / "filler"
    filler.touch()
    stat = os.statvfs(disk)
    size = filler.stat().st_size + stat.f_bavail * stat.f_frsize - leave
    os.truncate(filler, 0)
    if size > 0:
        with filler.open("r+b") as out:
            os.posix_fallocate(out.fileno(), 0, size)  # real blocks, not a sparse file
    return filler


def rows_body(start: int) -> bytes:
    """~2 MB of NDJSON that gzips to ~10 KB: tiny in the spool, but DuckDB's write-ahead
    log holds the rows uncompressed, so writing them needs the disk's room."""
    rows = b"".join(
        b'{"id":%d,"s":"%s"}\n' % (i, b"x" * 1000) for i in range(start, start + ROWS_PER_JOB)
    )
    return gzip.compress(rows)


def push_gzip(server, body: bytes):
    return server.post(
        "/v1/datasets/d/records?method=upsert",
        content=body,
        headers={"content-type": "application/x-ndjson", "content-encoding": "gzip"},
    )


def assert_ready(server) -> None:
    ready = server.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] is True


def assert_refused(response) -> None:
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert response.headers["retry-after"]


def spool_files(data_dir: Path) -> set[str]:
    return {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()}


def test_a_full_disk_refuses_pushes_and_loses_no_acknowledged_job(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pushbase")
    data_dir = small_disk / "data"
    # Acknowledged while the spool has room (~10 KB each) and no worker writes...
    with make_client({"data_dir": data_dir}, workers=0) as server:
        create_dataset(server, "d", COLUMNS, unique_key=["id"])
        job_ids = []
        for number in range(6):
            response = push_gzip(server, rows_body(number * ROWS_PER_JOB))
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
    # ... then each write needs ~2 MB of log on a disk with ~1 MB above the reserve: every
    # write meets ENOSPC once workers run.
    filler = fill(small_disk, leave=2 << 20)
    with make_client({"data_dir": data_dir}, duckdb_idle_checkpoint_mb=0) as server:
        # The workers try, meet the full disk, requeue, pause and try again.
        deadline = time.monotonic() + 20
        while not any(
            r.name == "pushbase.jobs" and "insufficient_storage" in r.getMessage()
            for r in caplog.records
        ):
            assert time.monotonic() < deadline, "no write met the full disk"
            time.sleep(0.05)
        time.sleep(0.5)
        statuses = {server.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids}
        assert statuses <= {"queued", "running"}, statuses
        assert_ready(server)
        listed = server.get("/v1/jobs", params={"dataset": "d"})
        assert listed.status_code == 200, listed.text

        # Now not even a push fits: refused before it is acknowledged, nothing left over.
        fill(small_disk, leave=0)
        before = spool_files(data_dir)
        for _ in range(3):
            assert_refused(push_gzip(server, rows_body(10**6)))
            assert_refused(
                server.post("/v1/datasets/d/records?method=insert", json=[{"id": -1, "s": "a"}])
            )
        assert_refused(server.delete("/v1/datasets/d/records"))
        assert spool_files(data_dir) <= before
        assert server.get("/v1/datasets/d").status_code == 200  # reads still answer
        assert_ready(server)

        filler.unlink()  # space returns: every acknowledged job runs, no restart
        jobs = [finished_job(server, j, timeout=60) for j in job_ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * len(jobs), jobs
        assert sum(j["stats"]["inserted"] for j in jobs) == len(job_ids) * ROWS_PER_JOB
        assert server.get("/v1/datasets/d").json()["row_count"] == len(job_ids) * ROWS_PER_JOB
        response = push_gzip(server, rows_body(10**6))
        assert response.status_code == 202, response.text
        assert finished_job(server, response.json()["job_id"])["status"] == "succeeded"
        assert_ready(server)


def test_postgresql_mode_takes_small_pushes_with_its_local_disk_full(
    small_disk: Path, tmp_path: Path
) -> None:
    # PostgreSQL holds the payloads; data_dir only has spilled bodies and best-effort
    # copies for the local workers, so a full local disk costs nothing here.
    postgres_or_skip()
    stores = StoreFactory("postgres", tmp_path)
    store = stores.new() | {"data_dir": small_disk / "data", "database_url": PG_URL}
    try:
        with make_client(store) as server:
            create_dataset(server, "d", COLUMNS, unique_key=["id"])
            filler = fill(small_disk, leave=0)
            response = push_gzip(server, rows_body(0))
            assert response.status_code == 202, response.text
            job = finished_job(server, response.json()["job_id"])
            assert job["status"] == "succeeded", job
            assert job["stats"]["inserted"] == ROWS_PER_JOB
            assert_ready(server)
            filler.unlink()
    finally:
        stores.cleanup()


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_a_large_body_on_a_full_disk_is_refused_507(
    small_disk: Path, tmp_path: Path, backend: str
) -> None:
    # Bodies over a megabyte are spilled to data_dir while they arrive, on both backends.
    if backend == "postgres":
        postgres_or_skip()
    stores = StoreFactory(backend, tmp_path)
    store = stores.new() | {"data_dir": small_disk / "data"}
    try:
        with make_client(store) as server:
            create_dataset(server, "d", COLUMNS, unique_key=["id"])
            filler = fill(small_disk, leave=0)
            rows = [{"id": i, "s": os.urandom(64).hex()} for i in range(20_000)]  # ~3 MB
            assert_refused(server.post("/v1/datasets/d/records", content=orjson.dumps(rows),
                                       headers={"content-type": "application/json"}))  # fmt: skip
            left = [p for p in (small_disk / "data").rglob("incoming*/**/*") if p.is_file()]
            assert not left, "the spilled part of the refused body is left behind"
            filler.unlink()
    finally:
        stores.cleanup()


# -- units -----------------------------------------------------------------------------


def test_storage_errors_say_full_or_unavailable() -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device"), "the push")
    assert isinstance(full, InsufficientStorage) and full.status == 507
    assert full.code == "insufficient_storage" and "No space" not in full.message
    quota = storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "the push")
    assert isinstance(quota, InsufficientStorage)
    broken = storage_error(OSError(errno.EIO, "Input/output error"), "the push")
    assert isinstance(broken, StoreUnavailable) and broken.status == 503


def test_a_save_that_meets_a_full_disk_leaves_no_file(small_disk: Path) -> None:
    target = small_disk / "job.job"
    fill(small_disk, leave=64 * 1024)
    payload = Payload(small_disk / "incoming", 0, None, tail=[b"x" * (1 << 20)])
    with pytest.raises(OSError) as raised:
        payload.save(target, b"trailer")
    assert raised.value.errno == errno.ENOSPC
    assert not target.exists()
