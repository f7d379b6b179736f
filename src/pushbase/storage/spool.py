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
A background thread keeps a quarter of that budget in spare files (zeros, named
`spare-*.job`) so that the first burst after a start finds some; a restart keeps
wiped files for reuse and deletes only those cut off before their fsync.

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
from pushbase.payload import Payload, fsync_path
from pushbase.priority import lower_this_thread

JOB_SUFFIX = ".job"
ROUND_BYTES = 128 * 1024  # new files are padded to this, so later pushes of a similar size fit
# Spares fit a body held in memory (the request path spills beyond 1 MiB) and its document.
SPARE_BYTES = 1024 * 1024 + ROUND_BYTES
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
        self._spares: threading.Thread | None = None
        self._wanted = threading.Event()  # the pool shrank: make spares
        self._stopping = threading.Event()

    def prepare(self) -> None:
        """Empty `incoming/`; read the jobs of complete files and delete the rest."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.iterdir():  # bodies of requests that never got an answer
            stale.unlink(missing_ok=True)
        self._found = []
        for path in self.root.glob(f"*{JOB_SUFFIX}"):
            if _is_wiped(path) and self._offer(path):
                continue  # a reusable file, kept from the last run
            job = _read_document(path)
            if job is None:  # cut off before its fsync
                path.unlink(missing_ok=True)
                continue
            self._found.append(job)
            if path != self.path_for(job.id):
                self._hold(job.id, path)

    def start_spares(self, size: int) -> None:
        """Keep up to a quarter of `reuse_bytes` in reusable files of `size` bytes,
        made by a background thread, so that a burst of pushes after a start finds some."""
        if self.reuse_bytes and self._spares is None:
            self._spares = threading.Thread(
                target=self._make_spares, args=(size,), name="pushbase-spool-spares", daemon=True
            )
            self._spares.start()

    def stop_spares(self) -> None:
        self._stopping.set()
        self._wanted.set()
        if self._spares is not None:
            self._spares.join(10)
            self._spares = None

    def _make_spares(self, size: int) -> None:
        lower_this_thread()
        target = self.reuse_bytes // 4
        while not self._stopping.is_set():
            self._wanted.wait(1.0)
            self._wanted.clear()
            made: list[Path] = []
            while not self._stopping.is_set() and len(made) < 8:
                with self._lock:
                    if self._free_bytes + size * (len(made) + 1) > target:
                        break
                path = self.root / f"spare-{secrets.token_hex(10)}{JOB_SUFFIX}"
                try:
                    with path.open("wb") as out:
                        out.write(bytes(size))  # all zeros: a wiped file
                        out.flush()
                        os.fsync(out.fileno())
                except OSError:
                    path.unlink(missing_ok=True)
                    break
                made.append(path)
            if made:
                fsync_path(self.root)  # named durably before any push is written over them
                for path in made:
                    if not self._offer(path):
                        path.unlink(missing_ok=True)
                self._wanted.set()  # more may be wanted

    def _offer(self, path: Path) -> bool:
        """Put a wiped file in the pool if it has room."""
        size = path.stat().st_size
        with self._lock:
            if self._free_bytes + size > self.reuse_bytes:
                return False
            bisect.insort(self._free, (size, path.name))
            self._free_names.add(path.name)
            self._free_bytes += size
            return True

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
        self._wanted.set()
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
        if self.reuse_bytes and _wipe_footer(path) and self._offer(path):
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


def _wipe_footer(path: Path) -> bool:
    """Make a finished job's file no job, for reuse (False if it is not of this format).
    Not synced: a crash before the wipe is on disk finds a finished job, not a new one."""
    try:
        with path.open("r+b") as out:
            size = os.fstat(out.fileno()).st_size
            if size < _FOOTER.size:
                return False
            out.seek(size - len(_MAGIC))
            if out.read(len(_MAGIC)) != _MAGIC:
                return False
            out.seek(size - len(_MAGIC))
            out.write(bytes(len(_MAGIC)))
            return True
    except FileNotFoundError:
        return False


def _is_wiped(path: Path) -> bool:
    with path.open("rb") as source:
        size = source.seek(0, os.SEEK_END)
        if size < _FOOTER.size:
            return False
        source.seek(size - len(_MAGIC))
        return source.read(len(_MAGIC)) == bytes(len(_MAGIC))


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
