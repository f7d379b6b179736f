"""The one error type every layer raises; the HTTP layer turns it into the envelope.

`{"error": {"code": "...", "message": "...", "details": {...}}}` with `status` as the
HTTP status (DESIGN §4).
"""

from __future__ import annotations

import errno
from typing import Any


class PushbaseError(Exception):
    """A failure with a machine-readable `code`, a human `message` and an HTTP status."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses process boundaries (decoding runs in worker processes) with every field.
        return (type(self), (self.code, self.message, self.status, self.details, self.headers))

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


def not_found(what: str, ident: str) -> PushbaseError:
    return PushbaseError(f"{what}_not_found", f"{what} {ident!r} does not exist", 404)


class StoreUnavailable(PushbaseError):
    """The store cannot serve now but may soon (out of memory, connection lost): 503
    with `Retry-After`. A job whose write meets it goes back to the queue, not to failed."""

    def __init__(self, code: str, message: str, retry_after: int = 1) -> None:
        super().__init__(code, message, 503, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.retry_after))


class InsufficientStorage(StoreUnavailable):
    """The disk that holds accepted payloads or the store is full: 507 to a push, which is
    then not accepted; a job whose write meets it goes back to the queue."""

    def __init__(self, message: str, retry_after: int = 30) -> None:
        super().__init__("insufficient_storage", message, retry_after)
        self.status = 507

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.retry_after))


# errno values that mean "no room": the disk, or the user's quota on it.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


def storage_error(exc: OSError, what: str) -> StoreUnavailable:
    """What to answer when writing `what` to local disk failed: full (507), or an I/O
    failure that may pass (503). The cause goes to the log, not to the client."""
    if exc.errno in _NO_ROOM:
        return InsufficientStorage(
            f"the server's disk is full: {what} could not be stored; retry later"
        )
    return StoreUnavailable(
        "store_io_error", f"the server could not write {what} to its disk; retry later", 5
    )
