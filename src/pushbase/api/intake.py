"""The request half of a push: receive the body, judge it cheaply, spill large ones to disk.

No record is looked at here (DESIGN §7): the size, the gzip stream and the
content type are checked while the bytes arrive.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import Request

from pushbase.decode.formats import Inflater, format_for, invalid_payload, is_gzip
from pushbase.errors import PushbaseError, storage_error
from pushbase.payload import Payload
from pushbase.settings import Settings

SPILL_BYTES = 1 << 20  # a body's bytes held in memory before they go to its file


def too_large(limit: int) -> PushbaseError:
    return PushbaseError(
        "payload_too_large", f"body exceeds {limit} bytes", 413, {"max_body_bytes": limit}
    )


async def receive_body(request: Request, settings: Settings, target: Path) -> Payload:
    """Receive the body for `target` or raise a 4xx and leave nothing behind.

    No file operation runs on the event loop: a body up to `SPILL_BYTES` stays in memory
    until the store makes it durable, in the enqueue's thread hop (`ingest.submit`); a
    larger one is appended to `target` in `SPILL_BYTES` pieces from a worker thread."""
    content_type = request.headers.get("content-type")
    content_encoding = request.headers.get("content-encoding")
    format_for(content_type)  # 415 before reading anything
    gzip = is_gzip(content_encoding)
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    inflater = Inflater(settings.max_inflated_bytes) if gzip else None
    held: list[bytes] = []
    held_bytes = size = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            if inflater is not None:
                await anyio.to_thread.run_sync(inflater.feed, chunk, False)
            held.append(chunk)
            held_bytes += len(chunk)
            if held_bytes >= SPILL_BYTES:
                try:
                    await anyio.to_thread.run_sync(_append, target, held)
                except OSError as exc:  # a full disk: 507 before anything is acknowledged
                    raise storage_error(exc, "the push") from exc
                held, held_bytes = [], 0
        if size == 0:
            raise invalid_payload("the body is empty")
        if inflater is not None:
            inflater.finish()
    except BaseException:
        target.unlink(missing_ok=True)  # a spilled part
        raise
    return Payload(target, size, content_type, content_encoding, tail=held)


def _append(target: Path, chunks: list[bytes]) -> None:
    with target.open("ab") as out:
        out.writelines(chunks)
