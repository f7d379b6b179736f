"""Accepted jobs on local disk: one durable file per job, made before it is acknowledged.

`<job id>.job` holds the payload, then the job document, then a fixed footer (the
document's length and a magic number). One file means one fsync per push: a push is
acknowledged only once its file is fsync'd and named (DESIGN §3). The payload starts
at offset 0 and is `job.bytes` long, so it is read without parsing anything.

Request bodies too large to hold in memory are spilled to `incoming/` while they
arrive; the store appends the document to that file and moves it here.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
from pathlib import Path

from pushbase.errors import InsufficientStorage, storage_error
from pushbase.jobs.model import Job
from pushbase.payload import Payload

log = logging.getLogger("pushbase.store")

JOB_SUFFIX = ".job"
_LEGACY_SUFFIX = ".payload"  # written by earlier versions next to a `.job` document
_FOOTER = struct.Struct("<Q8s")  # document length, magic
_MAGIC = b"PBJOB\x00v1"
# Free space kept on the spool's disk: a twentieth of it, at most 256 MiB. Pushes are
# refused (507) below it, so the jobs already accepted can still be written and free
# their payloads; a full disk would leave them waiting until someone made room.
RESERVE_SHARE = 20
RESERVE_MAX_BYTES = 256 << 20


def trailer(job: Job) -> bytes:
    """What follows the payload in a job's file."""
    document = job.model_dump_json().encode()
    return document + _FOOTER.pack(len(document), _MAGIC)


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
        return self.root / f"{job_id}{JOB_SUFFIX}"

    def payload_file(self, job_id: str) -> Path | None:
        """The file whose first `job.bytes` bytes are the payload."""
        for path in (self.path_for(job_id), self.root / f"{job_id}{_LEGACY_SUFFIX}"):
            if path.exists():
                return path
        return None

    def keep(self, job: Job, payload: Payload | None) -> None:
        """Make the job and its payload durable in one file (blocking), or raise
        `insufficient_storage` (507) and leave no file behind."""
        body = payload or Payload(self.new_incoming(), 0, None)  # delete-all: no body
        ending = trailer(job)
        try:
            self._make_room(len(ending) + sum(len(piece) for piece in body.tail))
            body.save(self.path_for(job.id), ending)
        except OSError as exc:
            log.warning("job %s not accepted: %s", job.id, exc)
            raise storage_error(exc, "the push") from exc

    def _make_room(self, size: int) -> None:
        """Refuse a push that would leave less than the reserve free: the store needs room
        to apply the jobs already accepted, and applying them is what frees the disk."""
        disk = os.statvfs(self.root)
        free = disk.f_bavail * disk.f_frsize
        reserve = min(RESERVE_MAX_BYTES, disk.f_blocks * disk.f_frsize // RESERVE_SHARE)
        if free - size < reserve:
            raise InsufficientStorage(
                f"the server's disk is nearly full ({free // 1024} KiB free, {reserve // 1024}"
                " KiB kept for applying accepted jobs): the push was not accepted; retry later"
            )

    def read(self, job: Job) -> bytes:
        path = self.payload_file(job.id)
        if path is None:
            raise FileNotFoundError(job.id)
        with path.open("rb") as source:
            return source.read(job.bytes)

    def jobs(self) -> list[Job]:
        """The job documents of every complete file (a torn one was never acknowledged)."""
        found = []
        for path in self.root.glob(f"*{JOB_SUFFIX}"):
            job = _read_document(path)
            if job is None:
                path.unlink(missing_ok=True)
            else:
                found.append(job)
        return found

    def discard(self, job_id: str) -> None:
        self.path_for(job_id).unlink(missing_ok=True)
        (self.root / f"{job_id}{_LEGACY_SUFFIX}").unlink(missing_ok=True)

    def job_ids(self) -> set[str]:
        return {
            p.name.removesuffix(p.suffix)
            for suffix in (JOB_SUFFIX, _LEGACY_SUFFIX)
            for p in self.root.glob(f"*{suffix}")
        }


def _read_document(path: Path) -> Job | None:
    with path.open("rb") as source:
        size = source.seek(0, os.SEEK_END)
        if size < _FOOTER.size:
            return _legacy_document(path)
        source.seek(size - _FOOTER.size)
        length, magic = _FOOTER.unpack(source.read(_FOOTER.size))
        if magic != _MAGIC or length > size - _FOOTER.size:
            return _legacy_document(path)
        source.seek(size - _FOOTER.size - length)
        try:
            job = Job.model_validate_json(source.read(length))
        except ValueError:
            return None
    return job if job.bytes == size - _FOOTER.size - length else None


def _legacy_document(path: Path) -> Job | None:
    """An earlier version's `.job` file: the document alone, its payload beside it."""
    try:
        job = Job.model_validate_json(path.read_bytes())
    except ValueError:
        return None
    return job if (path.parent / f"{job.id}{_LEGACY_SUFFIX}").exists() or not job.bytes else None
