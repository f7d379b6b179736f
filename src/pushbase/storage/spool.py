"""Accepted jobs on local disk: one durable file per job, made before it is acknowledged.

A job's file holds the payload from offset 0 (`job.bytes` long, so it is read without
parsing anything), then the job document, zero padding, and a footer at the very end:
the payload's and the document's lengths, a CRC-32 of both, and a magic number. A
push is acknowledged only once its file is durable (DESIGN §3).

Files are reused. Creating a file and naming it makes its fsync wait for the
filesystem's journal, and with DuckDB writing hundreds of megabytes next to it that
wait reached most of a second. So a finished job's file is kept (up to
`spool_reuse_bytes`), its footer wiped, and a later push small enough for it is
written over it in place and `fdatasync`'d: same blocks, same size, no journal wait.
Its CRC tells a completed overwrite from one cut off by a crash, whose bytes may mix
two jobs. A file's name is the job that created it; `_files` maps later jobs to it.

Request bodies too large to hold in memory are spilled to `incoming/` while they
arrive; the store appends the document to that file and moves it here.
"""

from __future__ import annotations

import bisect
import os
import secrets
import struct
import threading
import zlib
from pathlib import Path
from typing import BinaryIO

from pushbase.jobs.model import Job
from pushbase.payload import Payload

JOB_SUFFIX = ".job"
ROUND_BYTES = 128 * 1024  # new files are padded to this, so later pushes of a similar size fit
_LEGACY_SUFFIX = ".payload"  # written by earlier versions next to a `.job` document
_FOOTER = struct.Struct("<QQII8s")  # payload length, document length, CRC-32, flags, magic
_MAGIC = b"PBJOB\x00v2"
_CHECKED = 1  # flag: the CRC covers payload and document
_V1_FOOTER = struct.Struct("<Q8s")  # earlier versions: document length, magic
_V1_MAGIC = b"PBJOB\x00v1"
_READ_BYTES = 1 << 20


def _footer(payload_bytes: int, document: bytes, crc: int | None) -> bytes:
    flags = 0 if crc is None else _CHECKED
    return _FOOTER.pack(payload_bytes, len(document), crc or 0, flags, _MAGIC)


def _padded(needed: int) -> int:
    return -(-needed // ROUND_BYTES) * ROUND_BYTES


class Spool:
    def __init__(self, root: Path, reuse_bytes: int = 0) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.reuse_bytes = reuse_bytes
        self._lock = threading.Lock()
        self._files: dict[str, Path] = {}  # job id → its file, when named after another job
        self._holders: dict[str, str] = {}  # such a file's name → the job it holds
        self._free: list[tuple[int, str]] = []  # (size, file name): reusable, smallest first
        self._free_names: set[str] = set()
        self._free_bytes = 0
        self._found: list[Job] = []

    def prepare(self) -> None:
        """Empty `incoming/`; read the jobs of complete files and delete the rest."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.iterdir():  # bodies of requests that never got an answer
            stale.unlink(missing_ok=True)
        self._found = []
        for path in self.root.glob(f"*{JOB_SUFFIX}"):
            job = _read_document(path)
            if job is None:  # cut off before its fsync, or a wiped reusable file
                path.unlink(missing_ok=True)
                continue
            self._found.append(job)
            if path != self.path_for(job.id):
                self._hold(job.id, path)

    def new_incoming(self) -> Path:
        return self.incoming / secrets.token_hex(12)

    def path_for(self, job_id: str) -> Path:
        """Where a job's file goes when it gets a new one."""
        return self.root / f"{job_id}{JOB_SUFFIX}"

    def payload_file(self, job_id: str) -> Path | None:
        """The file whose first `job.bytes` bytes are the payload."""
        with self._lock:
            reused = self._files.get(job_id)
        for path in (reused, self.path_for(job_id), self.root / f"{job_id}{_LEGACY_SUFFIX}"):
            if path is not None and path.exists():
                return path
        return None

    def keep(self, job: Job, payload: Payload | None) -> None:
        """Make the job and its payload durable in one file (blocking)."""
        body = payload or Payload(self.new_incoming(), 0, None)  # delete-all: no body
        document = job.model_dump_json().encode()
        needed = job.bytes + len(document) + _FOOTER.size
        reusable = None if body.path.exists() else self._take_free(needed)
        if reusable is not None:
            try:
                _overwrite(reusable, body.tail, document)
            except OSError:
                reusable.unlink(missing_ok=True)  # in an unknown state: never reused
            else:
                body.tail = []
                with self._lock:
                    self._hold(job.id, reusable)
                return
        self._create(job, body, document, needed)

    def _hold(self, job_id: str, path: Path) -> None:
        self._files[job_id] = path
        self._holders[path.name] = job_id

    def _create(self, job: Job, body: Payload, document: bytes, needed: int) -> None:
        # A body held in memory is checksummed here (a quarter of a millisecond per MB);
        # a spilled one goes into a new file, named only once it is complete, and is not.
        crc = None if body.path.exists() else zlib.crc32(document, _crc(body.tail))
        padding = bytes(_padded(needed) - needed)
        body.save(self.path_for(job.id), document + padding + _footer(job.bytes, document, crc))

    def _take_free(self, needed: int) -> Path | None:
        with self._lock:
            at = bisect.bisect_left(self._free, (needed, ""))
            if at == len(self._free):
                return None
            size, name = self._free.pop(at)
            self._free_names.discard(name)
            self._free_bytes -= size
        return self.root / name

    def read(self, job: Job) -> bytes:
        path = self.payload_file(job.id)
        if path is None:
            raise FileNotFoundError(job.id)
        with path.open("rb") as source:
            return source.read(job.bytes)

    def jobs(self) -> list[Job]:
        """The job documents of every complete file when the spool was prepared."""
        return list(self._found)

    def discard(self, job_id: str) -> None:
        """A finished job's file: kept for reuse, with its footer wiped, or deleted."""
        with self._lock:
            path = self._files.pop(job_id, None)
            if path is not None:
                del self._holders[path.name]
            else:
                path = self.path_for(job_id)
                if path.name in self._holders or path.name in self._free_names:
                    return  # no longer this job's file
        (self.root / f"{job_id}{_LEGACY_SUFFIX}").unlink(missing_ok=True)
        size = _wipe_footer(path) if self.reuse_bytes else None
        if size is not None:
            with self._lock:
                if self._free_bytes + size <= self.reuse_bytes:
                    bisect.insort(self._free, (size, path.name))
                    self._free_names.add(path.name)
                    self._free_bytes += size
                    return
        path.unlink(missing_ok=True)

    def job_ids(self) -> set[str]:
        """The jobs that have a file here."""
        with self._lock:
            reused = set(self._files)
            elsewhere = set(self._holders) | self._free_names
        named = {
            p.name.removesuffix(p.suffix)
            for suffix in (JOB_SUFFIX, _LEGACY_SUFFIX)
            for p in self.root.glob(f"*{suffix}")
            if p.name not in elsewhere
        }
        return named | reused


def _crc(chunks: list[bytes]) -> int:
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return crc


def _overwrite(path: Path, chunks: list[bytes], document: bytes) -> None:
    """Write a job over a reusable file, in place: its size and blocks stay as they are."""
    payload_bytes = sum(map(len, chunks))
    crc = zlib.crc32(document, _crc(chunks))
    with path.open("r+b") as out:
        size = os.fstat(out.fileno()).st_size
        out.writelines([*chunks, document])
        out.seek(size - _FOOTER.size)
        out.write(_footer(payload_bytes, document, crc))
        out.flush()
        os.fdatasync(out.fileno())


def _wipe_footer(path: Path) -> int | None:
    """Make a finished job's file no job, for reuse; its size, or None if it is not of
    this format. Not synced: a crash before the wipe is on disk finds a finished job."""
    try:
        with path.open("r+b") as out:
            size = os.fstat(out.fileno()).st_size
            if size < _FOOTER.size:
                return None
            out.seek(size - len(_MAGIC))
            if out.read(len(_MAGIC)) != _MAGIC:
                return None
            out.seek(size - len(_MAGIC))
            out.write(bytes(len(_MAGIC)))
            return size
    except FileNotFoundError:
        return None


def _read_document(path: Path) -> Job | None:
    with path.open("rb") as source:
        size = source.seek(0, os.SEEK_END)
        if size < _V1_FOOTER.size:
            return _legacy_document(path)
        source.seek(size - len(_MAGIC))
        magic = source.read(len(_MAGIC))
        if magic == _MAGIC and size >= _FOOTER.size:
            source.seek(size - _FOOTER.size)
            payload_bytes, length, crc, flags, _ = _FOOTER.unpack(source.read(_FOOTER.size))
            if payload_bytes + length > size - _FOOTER.size:
                return None
            if flags & _CHECKED and _file_crc(source, payload_bytes + length) != crc:
                return None  # an overwrite cut off by a crash: never acknowledged
            source.seek(payload_bytes)
        elif magic == _V1_MAGIC:
            source.seek(size - _V1_FOOTER.size)
            length, _ = _V1_FOOTER.unpack(source.read(_V1_FOOTER.size))
            if length > size - _V1_FOOTER.size:
                return None
            payload_bytes = size - _V1_FOOTER.size - length
            source.seek(payload_bytes)
        elif magic == bytes(len(_MAGIC)):
            return None  # a wiped reusable file
        else:
            return _legacy_document(path)
        try:
            job = Job.model_validate_json(source.read(length))
        except ValueError:
            return None
    return job if job.bytes == payload_bytes else None


def _file_crc(source: BinaryIO, length: int) -> int:
    source.seek(0)
    crc = 0
    while length > 0:
        piece = source.read(min(_READ_BYTES, length))
        if not piece:
            return -1
        crc = zlib.crc32(piece, crc)
        length -= len(piece)
    return crc


def _legacy_document(path: Path) -> Job | None:
    """An earlier version's `.job` file: the document alone, its payload beside it."""
    try:
        job = Job.model_validate_json(path.read_bytes())
    except ValueError:
        return None
    return job if (path.parent / f"{job.id}{_LEGACY_SUFFIX}").exists() or not job.bytes else None
