"""Payload files on local disk, made durable before a job is acknowledged.

The request path streams a body into `incoming/`, fsyncs it, and the store
moves it under the job's id once the job row is committed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (which makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"

    def prepare(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.iterdir():  # bodies of requests that never got an answer
            stale.unlink(missing_ok=True)

    def new_incoming(self) -> Path:
        return self.incoming / secrets.token_hex(12)

    def path_for(self, job_id: str) -> Path:
        return self.root / f"{job_id}.payload"

    def keep(self, incoming: Path, job_id: str) -> Path:
        """Move an fsync'd body to its job's name and make the rename durable."""
        target = self.path_for(job_id)
        os.replace(incoming, target)
        fsync_path(self.root)
        return target

    def read(self, job_id: str) -> bytes:
        return self.path_for(job_id).read_bytes()

    def discard(self, job_id: str) -> None:
        self.path_for(job_id).unlink(missing_ok=True)

    def job_ids(self) -> set[str]:
        return {p.name.removesuffix(".payload") for p in self.root.glob("*.payload")}
