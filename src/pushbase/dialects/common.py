"""What every dialect shares: its own error shape, bounded JSON bodies, rows → payload.

A dialect is translation only (DESIGN §5): it reads its wire format, calls the
core (`pushbase.ingest`, the store's read methods) and renders the results in
its own vocabulary. Nothing here decodes records or writes rows.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from pushbase.auth import ApiKey, Scope
from pushbase.decode.formats import Inflater, is_gzip
from pushbase.errors import PushbaseError
from pushbase.ingest import Services, check_queue, spool_bytes
from pushbase.jobs.model import Job
from pushbase.payload import Payload
from pushbase.schema import DATASET_ID_RE, Dataset

log = logging.getLogger("pushbase.dialects")

Renderer = Callable[[Request, PushbaseError], Response]


def dialect_route(render: Renderer) -> type[APIRoute]:
    """A route class whose every failure leaves in the dialect's shape, not the native envelope.

    Catches what the endpoint and its dependencies raise (authentication included):
    `PushbaseError`, a request that does not match its parameters, and anything
    unexpected (a 500, logged).
    """

    class DialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except PushbaseError as exc:
                    return render(request, exc)
                except RequestValidationError as exc:
                    first = exc.errors()[0] if exc.errors() else {}
                    where = ".".join(str(p) for p in first.get("loc", ()))
                    message = f"{where}: {first.get('msg', 'invalid request')}".strip(": ")
                    return render(request, PushbaseError("invalid_request", message, 400))
                except Exception:
                    log.exception("unexpected error on %s %s", request.method, request.url.path)
                    error = PushbaseError("internal_error", "internal server error", 500)
                    return render(request, error)

            return run

    return DialectRoute


# -- request bodies --------------------------------------------------------------------------


def too_large(limit: int) -> PushbaseError:
    return PushbaseError(
        "payload_too_large", f"body exceeds {limit} bytes", 413, {"max_body_bytes": limit}
    )


async def read_body(request: Request, svc: Services) -> bytearray:
    """The whole body, refused past `max_body_bytes` (413) before more is read; gzip
    inflated as it arrives, refused once it would pass `max_body_bytes` too (413), so a
    small gzip bomb never becomes a large buffer. A dialect's body is parsed whole in this
    process (its envelope holds the rows), so it may not inflate past what it may be sent
    as: `max_inflated_bytes` bounds payloads, which are decoded elsewhere. Call it only
    after the key's scope is checked: what an unauthorised caller sends is never read."""
    limit = svc.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    inflater = Inflater(limit) if is_gzip(request.headers.get("content-encoding")) else None
    body = bytearray()
    size = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if inflater is None:
            body += chunk
        else:
            # A small chunk may inflate to many megabytes: off the event loop.
            body += await run_in_threadpool(inflater.feed, chunk)
    if inflater is not None and size:
        inflater.finish()
    return body


async def read_json(request: Request, svc: Services, invalid: Callable[[str], Exception]) -> Any:
    """The body parsed as JSON (in a thread: a large body takes long to parse);
    `invalid(message)` is raised when it is empty or not JSON."""
    body = await read_body(request, svc)
    if not body or body.isspace():
        raise invalid("the request body is empty")
    try:
        return await run_in_threadpool(orjson.loads, body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from exc


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, whitespace allowed; ValueError when it is not base64."""
    cleaned = "".join(text.split())
    if "-" in cleaned or "_" in cleaned:
        cleaned = cleaned.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc


# -- keys, datasets, jobs --------------------------------------------------------------------


def require_scope(key: ApiKey, *scopes: Scope) -> None:
    """403 unless the key holds one of `scopes` (the same check as the native routes)."""
    if not any(key.allows(scope) for scope in scopes):
        key.check(scopes[0])


def find_dataset(
    svc: Services,
    ident: str,
    *,
    by_id: bool = True,
    by_name: bool = True,
    key: ApiKey | None = None,
) -> Dataset:
    """The dataset whose id (first) or name is `ident`; `dataset_not_found` (404) otherwise.

    With `key`, only the datasets the key may use are looked at, so neither a match nor an
    ambiguity can reveal another dataset's id. A name shared by several datasets is
    ambiguous (400): the caller must use the id.
    """
    if by_id and DATASET_ID_RE.match(ident) and (key is None or key.allows_dataset(ident)):
        dataset = svc.store.get_dataset(ident)
        if dataset is not None:
            return dataset
    if by_name:
        named = [
            d
            for d in svc.store.list_datasets()
            if d.name == ident and (key is None or key.allows_dataset(d.id))
        ]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            ids = sorted(d.id for d in named)
            raise PushbaseError(
                "ambiguous_dataset_name",
                f"several datasets are named {ident!r} ({', '.join(ids)}); use the id",
                400,
                {"datasets": ids},
            )
    raise PushbaseError("dataset_not_found", f"dataset {ident!r} does not exist", 404)


def usable(svc: Services, key: ApiKey, ident: str, *scopes: Scope, **lookup: bool) -> Dataset:
    """A dataset the key may use with one of `scopes`: the scope first (403), then the
    lookup among the key's datasets only (404, or 403 for a key limited to datasets).

    A key limited to some datasets gets 403 naming what it sent for any other id or name,
    existing or not, as on the native routes: it learns nothing about datasets outside
    its list (not their ids, not that a name is taken).
    """
    require_scope(key, *scopes)
    try:
        return find_dataset(svc, ident, key=key, **lookup)
    except PushbaseError as exc:
        if exc.status == 404 and key.datasets is not None:
            key.check(scopes[0], ident)
        raise


def writable(svc: Services, key: ApiKey, ident: str, **lookup: bool) -> Dataset:
    """A dataset the key may push to (write scope)."""
    return usable(svc, key, ident, Scope.write, **lookup)


def visible_job(svc: Services, key: ApiKey, job_id: str) -> Job:
    """A job the key may follow (read or write scope); 404 when unknown or not the key's."""
    require_scope(key, Scope.read, Scope.write)
    job = svc.store.get_job(job_id) if len(job_id) <= 64 else None
    if job is None or not key.allows_dataset(job.dataset_id):
        raise PushbaseError("job_not_found", f"job {job_id!r} does not exist", 404)
    return job


def spool(svc: Services, data: bytes, content_type: str) -> Payload:
    """Backpressure check, then the bytes on durable storage (DESIGN §3)."""
    check_queue(svc, len(data))
    return spool_bytes(svc, data, content_type)


def spool_rows(svc: Services, rows: list[Any]) -> Payload:
    """Rows serialised as one JSON array, the form the native API takes."""
    return spool(svc, orjson.dumps(rows), "application/json")


def openapi_body(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body the route reads itself."""
    body: dict[str, Any] = {
        "required": True,
        "content": {"application/json": {"schema": inline_refs(schema)}},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` inlined, so it can sit inside OpenAPI as is."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
