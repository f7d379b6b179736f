"""A received request body on its way to becoming a job's payload.

The request path keeps a body of up to about a megabyte in memory and spills larger
ones to a file in pieces (`api/intake.py`); either way nothing blocking runs on the
event loop. The store decides where the payload becomes durable: the embedded store
writes and fsyncs it into its spool as one file with the job (`save`), PostgreSQL
commits the bytes in a row.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PIECE_BYTES = 1 << 20


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (which makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Payload:
    path: Path  # holds the spilled part of the body, if any; the rest is in `tail`
    size: int
    content_type: str | None
    content_encoding: str | None = None
    tail: list[bytes] = field(default_factory=list)  # received, not yet written to `path`

    def save(self, target: Path, trailer: bytes = b"", durable: bool = True) -> None:
        """Make `target` hold the whole body then `trailer`, fsync'd and named (blocking;
        not fsync'd when not `durable`).

        A body held in memory is written straight to `target`; a spilled one gets the
        rest appended where it is, then is moved, never copied. On failure (a full disk)
        `target` is removed: a torn or undurable file must not pass for an accepted job;
        the spilled file, if any, is the caller's to discard."""
        spilled = self.path.exists()
        try:
            with (self.path if spilled else target).open("ab" if spilled else "wb") as out:
                out.writelines([*self.tail, trailer])
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            if spilled:
                os.replace(self.path, target)
            if durable:
                fsync_path(target.parent)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self.tail = []

    def read(self) -> bytes:
        """The whole body (blocking)."""
        spilled = self.path.read_bytes() if self.path.exists() else b""
        return b"".join([spilled, *self.tail])

    def pieces(self) -> Iterator[bytes]:
        """The body in pieces of at most about a megabyte, so that a large one is never
        whole in memory (blocking)."""
        if self.path.exists():
            with self.path.open("rb") as spilled:
                while piece := spilled.read(PIECE_BYTES):
                    yield piece
        yield from self.tail

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.path.exists():
            with self.path.open("rb") as spilled:
                digest = hashlib.file_digest(spilled, "sha256")
        for chunk in self.tail:
            digest.update(chunk)
        return digest.hexdigest()

    def discard(self) -> None:
        """Remove the file if the store did not take it."""
        self.path.unlink(missing_ok=True)
