"""Payloads travel to PostgreSQL compressed by this process.

An acknowledgement waits for the row that holds its payload to commit. Sent as it came,
a 1 MB JSON body costs the server about 5 ms of work to receive, compress (lz4) and
TOAST, and the commit then flushes that row's WAL behind the workers' writes. Compressed
here first with zstd (level 1, about 1.5 ms per MB, outside the GIL), the same body is
about an eighth of the bytes: the server only stores them (`STORAGE EXTERNAL`), in about
1 ms, and writes less WAL. Bodies that came gzip'd are stored as they are, and so is a
body that compression would not make smaller. The codec is kept beside the bytes, so a
row stored before this (codec NULL) reads back unchanged.
"""

from __future__ import annotations

import pyarrow as pa

from pushbase.decode.formats import is_gzip
from pushbase.payload import Payload

CODEC = "zstd"
StoredPayload = tuple[bytes | memoryview, str | None]  # the bytes in the row, their codec


def pack(payload: Payload) -> StoredPayload:
    """The bytes to store for `payload` and their codec (None: the body as received).
    A spilled body is compressed piece by piece, never read whole (blocking)."""
    if is_gzip(payload.content_encoding) or not pa.Codec.is_available(CODEC):
        return payload.read(), None
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, CODEC) as packed:
        for piece in payload.pieces():
            packed.write(piece)
    data = sink.getvalue()
    if data.size >= payload.size:
        return payload.read(), None
    return memoryview(data), CODEC


def unpack(data: bytes, codec: str | None, size: int) -> bytes:
    """The body of `size` bytes that `pack` stored as `data`."""
    if codec is None:
        return data
    return pa.decompress(data, decompressed_size=size, codec=codec, asbytes=True)
