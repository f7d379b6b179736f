"""HTTP time limits: how long a client may take to send a request's headers and its body.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) and the open
connections (`limit_concurrency`), but not the time a request takes to arrive, so one
client sending a byte a second could hold a connection (and whatever the request holds)
for ever. Two pieces close that:

- `header_timeout_protocol` wraps uvicorn's HTTP protocol: a connection whose request
  headers are not complete within `http_header_timeout_seconds` of its first byte (or of
  the connection's opening) is answered 408 and closed.
- `BodyDeadline`, an ASGI middleware: a request whose body has not fully arrived within
  `http_body_timeout_seconds` of its headers fails with 408 `request_timeout` in the
  route's own error shape (native envelope or dialect), and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
from fastapi.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pushbase.errors import PushbaseError
from pushbase.settings import Settings

log = logging.getLogger("pushbase.api")


class BodyTimeout(PushbaseError, HTTPException):
    """408 for a body that did not arrive in time.

    Also an `HTTPException`, because FastAPI turns any other exception raised while it
    reads a body for a model into a 400; as a `PushbaseError` first, every route renders
    it in its own error shape."""

    def __init__(self, seconds: float) -> None:
        headers = {"Connection": "close"}  # the rest of the body is not worth waiting for
        message = f"the request body did not arrive within {seconds:g} seconds"
        PushbaseError.__init__(self, "request_timeout", message, 408, headers=headers)
        self.status_code = 408
        self.detail = message


class BodyDeadline:
    """Fails a request's `receive` with `BodyTimeout` once its body is late.

    The deadline runs from the moment the app gets the request (its headers are in) and
    applies only until the last body message: later `receive` calls (a streaming answer
    waiting for a disconnect) are passed through untouched."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            with anyio.move_on_after(deadline - time.monotonic()):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    complete = True
                return message
            raise BodyTimeout(self.seconds)

        await self.app(scope, timed_receive, send)


_TIMEOUT_BODY = b"the request headers did not arrive in time"
_TIMEOUT_RESPONSE = b"".join(
    [
        b"HTTP/1.1 408 Request Timeout\r\n",
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(_TIMEOUT_BODY),
        b"connection: close\r\n\r\n",
        _TIMEOUT_BODY,
    ]
)


class _HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol class (httptools or h11).

    The timer starts when the connection opens, and again at the first byte of each
    later request (the keep-alive timer covers the wait for it). Both uvicorn protocols
    make a new request cycle (`self.cycle`) exactly when a request's headers are
    complete, so "the cycle is the one we saw when the timer started" means the headers
    are still incomplete."""

    header_timeout: float = 10.0
    # Set by uvicorn's protocol classes:
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the first bytes of a new request
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is not None and self.cycle is not self._timed_cycle:
            self._disarm_header_timer()  # the headers are complete: a new cycle started

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._timed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not self._timed_cycle or self.transport.is_closing():
            return  # the headers came in time (a new cycle started)
        log.info("closing a connection whose request headers took over %gs", self.header_timeout)
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with a header
    timeout, for `uvicorn.run(http=...)`."""
    base: type[asyncio.Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - uvicorn without httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type("PushbaseHTTPProtocol", (_HeaderDeadline, base), {"header_timeout": seconds})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run options that bound what one connection may hold (settings)."""
    return {
        "http": header_timeout_protocol(settings.http_header_timeout_seconds),
        "timeout_keep_alive": settings.http_keepalive_seconds,
        "limit_concurrency": settings.http_max_connections,
    }
