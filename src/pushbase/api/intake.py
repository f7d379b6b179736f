"""The request half of a push: stream the body to disk, judge it cheaply, fsync.

No record is looked at here (DESIGN §7): the size, the gzip stream and the
content type are checked while the bytes go to the spool.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
from fastapi import Request

from pushbase.decode.formats import Inflater, format_for, invalid_payload, is_gzip
from pushbase.errors import PushbaseError
from pushbase.ingest import Payload
from pushbase.settings import Settings


def too_large(limit: int) -> PushbaseError:
    return PushbaseError(
        "payload_too_large", f"body exceeds {limit} bytes", 413, {"max_body_bytes": limit}
    )


async def receive_body(request: Request, settings: Settings, target: Path) -> Payload:
    """Write the body to `target` or raise a 4xx and leave nothing behind.

    The file is not fsync'd here: `ingest.submit` does it in the same thread hop as the
    enqueue, before anything is acknowledged."""
    content_type = request.headers.get("content-type")
    content_encoding = request.headers.get("content-encoding")
    format_for(content_type)  # 415 before reading anything
    gzip = is_gzip(content_encoding)
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    inflater = Inflater(settings.max_inflated_bytes) if gzip else None
    digest = hashlib.sha256()
    size = 0
    try:
        with open(target, "wb") as out:
            async for chunk in request.stream():
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                digest.update(chunk)
                out.write(chunk)
                if inflater is not None:
                    await anyio.to_thread.run_sync(inflater.feed, chunk, False)
            if size == 0:
                raise invalid_payload("the body is empty")
            if inflater is not None:
                inflater.finish()
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return Payload(target, size, digest.hexdigest(), content_type, content_encoding)
