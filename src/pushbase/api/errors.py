"""Every error leaves the server in one envelope: {"error": {code, message, details}}."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from pushbase.errors import PushbaseError

log = logging.getLogger("pushbase.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def envelope(code: str, message: str, status: int, details: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def _pushbase_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PushbaseError)
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return envelope(exc.code, exc.message, exc.status, exc.details, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "location": ".".join(str(part) for part in error.get("loc", ())),
            "message": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    first = problems[0] if problems else {"location": "", "message": "invalid request"}
    message = f"{first['location']}: {first['message']}" if first["location"] else first["message"]
    return envelope("validation_error", message, 422, {"problems": problems})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # The router names only the first route on the path; Allow must list them all.
        headers["Allow"] = ", ".join(allowed_methods(request))
    return envelope(code, str(exc.detail), exc.status_code, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path."""
    try:  # FastAPI >= 0.16x keeps included routers lazily; this walks them
        from fastapi.routing import iter_route_contexts

        routes = [(c.path, c.methods) for c in iter_route_contexts(request.app.routes)]
    except ImportError:  # pragma: no cover - older FastAPI flattens routes itself
        routes = [(getattr(r, "path", ""), getattr(r, "methods", None)) for r in request.app.routes]
    methods: set[str] = set()
    for path, route_methods in routes:
        if route_methods and _path_regex(path).match(request.url.path):
            methods.update(route_methods)
    return sorted(methods)


@functools.cache
def _path_regex(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return envelope("internal_error", "internal server error", 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(PushbaseError, _pushbase_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
