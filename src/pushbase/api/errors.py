"""Every error leaves the server in one envelope: {"error": {code, message, details}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pushbase.errors import PushbaseError

log = logging.getLogger("pushbase.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
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
    return envelope(code, str(exc.detail), exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return envelope("internal_error", "internal server error", 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(PushbaseError, _pushbase_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
