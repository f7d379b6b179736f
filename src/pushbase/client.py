"""Python client for a pushbase server: `Client` (sync) and `AsyncClient` (asyncio), over httpx.

    from pushbase import Client

    with Client("http://127.0.0.1:8000", api_key="pb_...") as pb:
        pb.datasets.create("users", sample={"id": 1, "email": "a@b.c"}, unique_key=["id"])
        result = pb.push("users", [{"id": 1, "email": "ada@example.com"}], wait=True)
        print(result.inserted, result.failed, result.errors)

`push` takes a list of dicts, a pandas or polars DataFrame or a pyarrow Table; `push_file`
takes a JSON, NDJSON, CSV or Parquet file. Both cut the data into batches under the server's
advertised limits, send them in parallel, retry 429, 5xx and connection errors with the same
`Idempotency-Key` per batch, and (with `wait`) follow the jobs to their end.

Every HTTP error becomes a `PushbaseError` subclass carrying the server's `code`, `status`,
`message` and `details`.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from pushbase import batching
from pushbase.batching import Batch
from pushbase.errors import PushbaseError

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "PushResult",
    "PushbaseError",
    "QueueFull",
    "RowError",
    "RowsFailed",
    "ServerError",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationError",
    "WaitTimeout",
]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "pushbase-python"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
STAT_FIELDS = (
    "received",
    "inserted",
    "updated",
    "deleted",
    "not_found",
    "failed",
    "ignored_fields",
)


# -- errors --------------------------------------------------------------------------


class BadRequest(PushbaseError):
    """400: a broken domain rule (invalid id, unknown column, bad payload envelope...)."""


class Unauthorized(PushbaseError):
    """401: no API key, or one the server does not know."""


class Forbidden(PushbaseError):
    """403: the key lacks the scope, or may not use this dataset."""


class NotFound(PushbaseError):
    """404: no such dataset, job or key."""


class Conflict(PushbaseError):
    """409: dataset exists, idempotency key reused with another payload, job not cancellable."""


class PayloadTooLarge(PushbaseError):
    """413: a body over the server's max_body_bytes or max_inflated_bytes."""


class UnsupportedMediaType(PushbaseError):
    """415: a content type or encoding the server does not read."""


class ValidationError(PushbaseError):
    """422: a request body or parameter that does not fit its model."""


class QueueFull(PushbaseError):
    """429: the server's queue of unapplied payloads is full; retry after `retry_after`."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.headers)


class ServerError(PushbaseError):
    """5xx: the server failed."""


class ConnectionFailed(PushbaseError):
    """The server could not be reached (after the retries)."""


class WaitTimeout(PushbaseError):
    """A job was not finished within the time given."""


class RowsFailed(PushbaseError):
    """Raised by `PushResult.raise_for_errors()` when rows or jobs failed."""


_BY_STATUS: dict[int, type[PushbaseError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    429: QueueFull,
}


def error_from_response(response: httpx.Response) -> PushbaseError:
    """The typed exception for an error response (the `{"error": {...}}` envelope)."""
    status = response.status_code
    code, message, details = f"http_{status}", response.reason_phrase or "error", {}
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        details = error.get("details") or {}
    elif response.content:
        message = response.text[:500]
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else PushbaseError)
    return cls(code, message, status, details, dict(response.headers))


def _retry_after(headers: dict[str, str] | httpx.Headers | None) -> float | None:
    value = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# -- results -------------------------------------------------------------------------


@dataclass
class RowError:
    """A row the server did not write, mapped back to the input."""

    row: int  # 0-based position in the input
    location: str  # "users.csv:12", "record 3", "row 7"
    line: int | None
    column: str | None
    code: str
    message: str
    value: Any
    job_id: str | None

    def __str__(self) -> str:
        column = f" {self.column}" if self.column else ""
        value = "" if self.value is None else f" (value {self.value!r})"
        return f"{self.location}:{column} {self.code}: {self.message}{value}"


@dataclass
class PushResult:
    """The outcome of one `push` / `push_file`: summed job stats and the first row errors."""

    dataset_id: str
    method: str
    jobs: list[dict[str, Any]] = field(default_factory=list)  # latest document per batch
    batches: int = 0
    rows_sent: int = 0
    bytes_sent: int = 0
    received: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    not_found: int = 0
    failed: int = 0
    ignored_fields: int = 0
    errors: list[RowError] = field(default_factory=list)
    errors_total: int = 0
    batch_errors: list[str] = field(default_factory=list)  # jobs failed / batches refused
    finished: bool = False

    @property
    def job_ids(self) -> list[str]:
        return [j["id"] for j in self.jobs if j.get("id")]

    @property
    def ok(self) -> bool:
        return self.finished and self.failed == 0 and not self.batch_errors

    @property
    def stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STAT_FIELDS}

    def raise_for_errors(self) -> PushResult:
        if not self.ok:
            first = self.batch_errors[:1] or [str(e) for e in self.errors[:1]]
            what = "not finished" if not self.finished else f"{self.failed} rows failed"
            raise RowsFailed(
                "rows_failed",
                f"push to {self.dataset_id!r}: {what}" + (f"; first: {first[0]}" if first else ""),
                0,
                {"stats": self.stats, "errors": [str(e) for e in self.errors[:10]]},
            )
        return self


class _PushRun:
    """Shared bookkeeping of one push, for the thread and the asyncio drivers."""

    def __init__(
        self,
        dataset_id: str,
        method: str,
        on_progress: Callable[[_PushRun], None] | None,
        max_errors: int,
    ) -> None:
        self.dataset_id = dataset_id
        self.method = method
        self.on_progress = on_progress
        self.max_errors = max_errors
        self.lock = threading.Lock()
        self.batches: list[Batch] = []
        self.docs: dict[int, dict[str, Any]] = {}
        self.refused: dict[int, PushbaseError] = {}
        self.bytes_sent = 0
        self.rows_sent = 0
        self.rows_applied = 0
        self.rows_read = 0
        self.bytes_read = 0
        self.sending_done = False
        self.cancelled = threading.Event()

    # called by the drivers
    def add(self, batch: Batch) -> int:
        with self.lock:
            self.batches.append(batch)
            self.rows_read += batch.rows
            self.bytes_read += batch.size
            return len(self.batches) - 1

    def accepted(self, seq: int, status: int, body: dict[str, Any]) -> None:
        batch = self.batches[seq]
        with self.lock:
            self.bytes_sent += batch.size
            self.rows_sent += batch.rows
            doc = (
                body if status == 200 else {"id": body.get("job_id"), "status": body.get("status")}
            )
            self._store(seq, doc)
        self.progress()

    def refuse(self, seq: int, error: PushbaseError) -> None:
        batch = self.batches[seq]
        with self.lock:
            self.bytes_sent += batch.size
            self.rows_sent += batch.rows
            self.refused[seq] = error
            self.rows_applied += batch.rows
        self.progress()

    def update(self, doc: dict[str, Any]) -> None:
        with self.lock:
            for seq, known in self.docs.items():
                if known.get("id") == doc.get("id"):
                    self._store(seq, doc)

    def _store(self, seq: int, doc: dict[str, Any]) -> None:
        old = self.docs.get(seq)
        if old is not None and old.get("status") in TERMINAL:
            return
        self.docs[seq] = doc
        if doc.get("status") in TERMINAL:
            self.rows_applied += self.batches[seq].rows

    def unfinished(self) -> list[str]:
        with self.lock:
            return [d["id"] for d in self.docs.values() if d.get("status") not in TERMINAL]

    def progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self)

    def result(self) -> PushResult:
        with self.lock:
            res = PushResult(self.dataset_id, self.method, batches=len(self.batches))
            res.bytes_sent, res.rows_sent = self.bytes_sent, self.rows_sent
            for seq, batch in enumerate(self.batches):
                if seq in self.refused:
                    err = self.refused[seq]
                    res.failed += batch.rows
                    res.batch_errors.append(f"{_span(batch)}: refused: {err.code}: {err.message}")
                    res.jobs.append({"id": None, "status": "refused", "error": err.to_dict()})
                    continue
                doc = self.docs.get(seq, {"id": None, "status": "not_sent"})
                res.jobs.append(doc)
                status = doc.get("status")
                stats = doc.get("stats") or {}
                if status == "succeeded":
                    for name in STAT_FIELDS:
                        setattr(res, name, getattr(res, name) + int(stats.get(name) or 0))
                elif status in ("failed", "cancelled"):
                    res.failed += batch.rows
                    error = doc.get("error") or {"code": status, "message": f"job {status}"}
                    res.batch_errors.append(
                        f"{_span(batch)}: job {doc.get('id')} {status}: "
                        f"{error.get('code')}: {error.get('message')}"
                    )
                res.errors_total += int(doc.get("errors_total") or 0)
                for item in doc.get("errors") or []:
                    if len(res.errors) >= self.max_errors:
                        break
                    res.errors.append(_row_error(batch, item, doc.get("id")))
            res.finished = all(
                seq in self.refused or self.docs.get(seq, {}).get("status") in TERMINAL
                for seq in range(len(self.batches))
            )
            return res


def _span(batch: Batch) -> str:
    first = batch.location(0)
    last = batch.location(max(0, batch.rows - 1))
    if first.label == last.label:
        return first.label
    if first.line is not None and last.line is not None:
        return f"{first.label}-{last.line}"
    return f"{first.label} to {last.label}"


def _row_error(batch: Batch, item: dict[str, Any], job_id: str | None) -> RowError:
    row = item.get("row")
    if isinstance(row, int):
        where = batch.location(row)
        position, line, label = where.row, where.line, where.label
    else:
        position, line, label = batch.first_row, None, _span(batch)
    return RowError(
        row=position,
        location=label,
        line=line,
        column=item.get("column"),
        code=str(item.get("code", "error")),
        message=str(item.get("message", "")),
        value=item.get("value"),
        job_id=job_id,
    )


# -- request specs shared by both flavours --------------------------------------------


@dataclass
class _Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    parse: Callable[[httpx.Response], Any] = lambda r: _json(r)
    idempotent: bool | None = None  # None: by HTTP method


def _json(response: httpx.Response) -> Any:
    return orjson.loads(response.content) if response.content else None


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class _Datasets:
    """`client.datasets`: create, get, list, update, drop, infer, instructions, rows."""

    def __init__(self, client: Any) -> None:
        self._c = client

    def create(
        self,
        id: str | None = None,
        *,
        columns: list[dict[str, Any]] | None = None,
        sample: Any = None,
        unique_key: list[str] | str | None = None,
        name: str | None = None,
        description: str | None = None,
        unknown_fields: str | None = None,
    ) -> Any:
        """Create a dataset from `columns` or a `sample` record (types inferred)."""
        if isinstance(unique_key, str):
            unique_key = [k.strip() for k in unique_key.split(",") if k.strip()]
        body = _clean(
            {
                "id": id,
                "columns": columns,
                "sample": sample,
                "name": name,
                "description": description,
                "unknown_fields": unknown_fields,
                "unique_key": unique_key,
            }
        )
        return self._c._call(_Call("POST", "/v1/datasets", json=body))

    def get(self, id: str) -> Any:
        return self._c._call(_Call("GET", f"/v1/datasets/{id}"))

    def list(self) -> Any:
        return self._c._call(_Call("GET", "/v1/datasets", parse=lambda r: _json(r)["datasets"]))

    def update(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        unknown_fields: str | None = None,
        add_columns: list[dict[str, Any]] | None = None,
    ) -> Any:
        body = _clean(
            {
                "name": name,
                "description": description,
                "unknown_fields": unknown_fields,
                "add_columns": add_columns,
            }
        )
        return self._c._call(_Call("PATCH", f"/v1/datasets/{id}", json=body))

    def drop(self, id: str) -> Any:
        return self._c._call(_Call("DELETE", f"/v1/datasets/{id}", parse=lambda r: None))

    def infer(self, sample: Any) -> Any:
        """The columns the server would infer from a sample record or records."""
        return self._c._call(
            _Call(
                "POST",
                "/v1/schema/infer",
                json={"sample": sample},
                parse=lambda r: _json(r)["columns"],
                idempotent=True,
            )
        )

    def instructions(self, id: str) -> Any:
        return self._c._call(_Call("GET", f"/v1/datasets/{id}/instructions"))

    def rows(
        self,
        id: str,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: str | None = None,
        **filters: Any,
    ) -> Any:
        """A page of rows: `{"rows", "total", "limit", "offset"}`; keyword filters are col=value."""
        params = _clean({"limit": limit, "offset": offset, "order_by": order_by, **filters})
        return self._c._call(_Call("GET", f"/v1/datasets/{id}/records", params=params))


class _Jobs:
    """`client.jobs`: get, list, cancel (and `wait`, per flavour)."""

    def __init__(self, client: Any) -> None:
        self._c = client

    def get(self, id: str) -> Any:
        return self._c._call(_Call("GET", f"/v1/jobs/{id}"))

    def list(
        self, *, dataset: str | None = None, status: str | None = None, limit: int = 100
    ) -> Any:
        params = _clean({"dataset": dataset, "status": status, "limit": limit})
        return self._c._call(
            _Call("GET", "/v1/jobs", params=params, parse=lambda r: _json(r)["jobs"])
        )

    def cancel(self, id: str) -> Any:
        return self._c._call(_Call("POST", f"/v1/jobs/{id}/cancel", idempotent=True))


class _SyncJobs(_Jobs):
    def wait(self, id: str, timeout: float | None = None, interval: float = 0.5) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; `WaitTimeout` after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while True:
            doc = self.get(id)
            if doc["status"] in TERMINAL:
                return doc
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout("timeout", f"job {id} not finished after {timeout}s", 0, doc)
            time.sleep(pause)
            pause = min(interval, pause * 2)


class _AsyncJobs(_Jobs):
    async def wait(
        self, id: str, timeout: float | None = None, interval: float = 0.5
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while True:
            doc = await self.get(id)
            if doc["status"] in TERMINAL:
                return doc
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout("timeout", f"job {id} not finished after {timeout}s", 0, doc)
            await asyncio.sleep(pause)
            pause = min(interval, pause * 2)


class _Keys:
    """`client.keys`: create (returns the secret once), list, revoke."""

    def __init__(self, client: Any) -> None:
        self._c = client

    def create(
        self, name: str, scopes: list[str] | str = "admin", datasets: list[str] | None = None
    ) -> Any:
        if isinstance(scopes, str):
            scopes = [s.strip() for s in scopes.split(",") if s.strip()]
        body = _clean({"name": name, "scopes": scopes, "datasets": datasets})
        return self._c._call(_Call("POST", "/v1/keys", json=body))

    def list(self) -> Any:
        return self._c._call(_Call("GET", "/v1/keys", parse=lambda r: _json(r)["keys"]))

    def revoke(self, id: str) -> Any:
        return self._c._call(_Call("DELETE", f"/v1/keys/{id}", parse=lambda r: None))


class _Base:
    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.url = (url or os.environ.get("PUSHBASE_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("PUSHBASE_API_KEY")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._limits: dict[str, Any] | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"user-agent": USER_AGENT}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff, max(0.05, retry_after))
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)

    def _encode(self, call: _Call) -> tuple[dict[str, str], bytes | None]:
        headers = dict(call.headers or {})
        content = call.content
        if call.json is not None:
            content = orjson.dumps(call.json, option=batching.ORJSON_OPTIONS, default=str)
            headers.setdefault("content-type", "application/json")
        return headers, content

    @staticmethod
    def _retryable(call: _Call, exc: Exception | None, status: int | None) -> bool:
        idempotent = call.idempotent
        if idempotent is None:
            idempotent = call.method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        if status is not None:
            return status in RETRY_STATUSES if idempotent else status in (429, 503)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True  # never reached the server
        return bool(idempotent) and isinstance(exc, httpx.TransportError)

    def _push_setup(self, batch_bytes: int | str | None, limits: dict[str, Any]) -> tuple[int, int]:
        hard_max = int(min(limits["max_body_bytes"], limits["max_inflated_bytes"]))
        target = batching.parse_size(batch_bytes) if batch_bytes else limits["optimal_batch_bytes"]
        return max(1, min(int(target), hard_max)), hard_max

    @staticmethod
    def _keys_for(
        batches: Iterable[Batch], scope: str, fixed: str | None
    ) -> Iterator[tuple[Batch, str]]:
        """Each batch with its idempotency key: `fixed` alone for one batch, else derived."""
        iterator = iter(batches)
        first = next(iterator, None)
        if first is None:
            return
        second = next(iterator, None)
        if fixed is not None and second is None:
            yield first, fixed
            return
        yield first, first.idempotency_key(scope)
        if second is not None:
            yield second, second.idempotency_key(scope)
        for batch in iterator:
            yield batch, batch.idempotency_key(scope)

    @staticmethod
    def _wait_seconds(wait: bool | float) -> float | None:
        """None: no waiting; inf: until done; else seconds."""
        if wait is False or wait is None or wait == 0:
            return None
        if wait is True:
            return float("inf")
        return float(wait)


def _scope(dataset: str, method: str, atomic: bool, run_id: str) -> str:
    return f"{run_id}\0{dataset}\0{method}\0{atomic}"


def _push_params(method: str, atomic: bool, server_wait: float) -> dict[str, Any]:
    params: dict[str, Any] = {"method": method}
    if atomic:
        params["atomic"] = "true"
    if server_wait:
        params["wait"] = server_wait
    return params


class Client(_Base):
    """A pushbase server (sync). Thread-safe; use as a context manager or call `close()`.

    `url` and `api_key` default to `PUSHBASE_URL` and `PUSHBASE_API_KEY`. Requests that are
    safe to repeat (reads, and pushes, which always carry an `Idempotency-Key`) are retried
    on 429, 5xx and connection errors, `retries` times with exponential backoff.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff)
        self._own_http = http is None
        self._http = http or httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )
        self.datasets = _Datasets(self)
        self.jobs = _SyncJobs(self)
        self.keys = _Keys(self)
        self._stop = threading.Event()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._own_http:
            self._http.close()

    # -- plumbing --------------------------------------------------------------------

    def _call(self, call: _Call) -> Any:
        return call.parse(self._send(call))

    def _send(self, call: _Call, cancelled: threading.Event | None = None) -> httpx.Response:
        headers, content = self._encode(call)
        headers = {**self._headers(), **headers}
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    self.url + call.path,
                    params=call.params,
                    content=content,
                    headers=headers,
                )
            except httpx.TransportError as exc:
                if attempt >= self.retries or not self._retryable(call, exc, None):
                    raise ConnectionFailed(
                        "connection_error", f"{call.method} {self.url}{call.path}: {exc}", 0
                    ) from exc
                self._sleep(self._delay(attempt, None), cancelled)
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            if attempt < self.retries and self._retryable(call, None, response.status_code):
                self._sleep(self._delay(attempt, _retry_after(response.headers)), cancelled)
                attempt += 1
                continue
            raise error_from_response(response)

    def _sleep(self, seconds: float, cancelled: threading.Event | None) -> None:
        if self._stop.wait(seconds) or (cancelled is not None and cancelled.is_set()):
            raise ConnectionFailed("cancelled", "the push was interrupted", 0)

    # -- small calls -------------------------------------------------------------------

    def limits(self) -> dict[str, Any]:
        """What the server accepts per request (GET /v1/limits), cached."""
        if self._limits is None:
            self._limits = self._call(_Call("GET", "/v1/limits"))
        return self._limits

    def health(self) -> bool:
        try:
            return self._http.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def rows(self, dataset: str, **kwargs: Any) -> dict[str, Any]:
        """Shortcut for `client.datasets.rows(...)`."""
        return self.datasets.rows(dataset, **kwargs)

    def delete_all(self, dataset: str, *, wait: bool | float = False) -> dict[str, Any]:
        """Empty a dataset (a job, in order with the pushes before it)."""
        job = self._call(
            _Call(
                "DELETE",
                f"/v1/datasets/{dataset}/records",
                headers={"idempotency-key": f"pb-{uuid.uuid4().hex}"},
            )
        )
        seconds = self._wait_seconds(wait)
        job_id = job.get("job_id") or job.get("id")
        if seconds is None or job.get("status") in TERMINAL:
            return job
        return self.jobs.wait(job_id, None if seconds == float("inf") else seconds)

    def export(
        self,
        dataset: str,
        format: str = "ndjson",
        path: str | os.PathLike[str] | None = None,
        file: IO[bytes] | None = None,
    ) -> bytes | None:
        """Every row as csv, ndjson or parquet: written to `path` or `file`, else returned."""
        url = f"{self.url}/v1/datasets/{dataset}/export"
        sink: IO[bytes] | None = file
        opened = None
        try:
            with self._http.stream(
                "GET", url, params={"format": format}, headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                if path is not None:
                    opened = sink = open(path, "wb")  # noqa: SIM115
                if sink is None:
                    return response.read()
                for chunk in response.iter_bytes(1 << 20):
                    sink.write(chunk)
        except httpx.TransportError as exc:
            raise ConnectionFailed("connection_error", f"GET {url}: {exc}", 0) from exc
        finally:
            if opened is not None:
                opened.close()
        return None

    # -- pushing -----------------------------------------------------------------------

    def push(
        self,
        dataset: str,
        data: Any,
        *,
        method: str = "upsert",
        wait: bool | float = False,
        atomic: bool = False,
        batch_bytes: int | str | None = None,
        concurrency: int = 4,
        idempotency_key: str | None = None,
        on_progress: Callable[[Any], None] | None = None,
        max_errors: int = 100,
    ) -> PushResult:
        """Push a list of dicts, a pandas/polars DataFrame or a pyarrow Table.

        `wait=True` follows the jobs to their end (a number: at most that many seconds).
        Large data is cut into batches under the server's limits and sent `concurrency` at
        a time; `idempotency_key` (default: random per call) keys the batches.
        """
        target, hard_max = self._push_setup(batch_bytes, self.limits())
        batches = list(batching.data_batches(data, target, hard_max))
        seconds = self._wait_seconds(wait)
        server_wait = min(seconds, 60.0) if seconds and len(batches) == 1 else 0
        scope = _scope(dataset, method, atomic, idempotency_key or uuid.uuid4().hex)
        keyed = self._keys_for(batches, scope, idempotency_key)
        return self._run(
            dataset,
            keyed,
            method=method,
            atomic=atomic,
            wait=seconds,
            concurrency=concurrency,
            on_progress=on_progress,
            max_errors=max_errors,
            server_wait=server_wait,
        )

    def push_file(
        self,
        dataset: str,
        *paths: str | os.PathLike[str],
        format: str | None = None,
        method: str = "upsert",
        wait: bool | float = False,
        atomic: bool = False,
        batch_bytes: int | str | None = None,
        concurrency: int = 8,
        run_id: str = "",
        on_progress: Callable[[Any], None] | None = None,
        max_errors: int = 100,
    ) -> PushResult:
        """Push JSON, NDJSON, CSV or Parquet files (`-`: standard input), format by extension.

        Batch idempotency keys derive from each file's path and size and each batch's byte
        range and content, so running the same push again (say after an interruption)
        applies nothing twice. Give another `run_id` to push the same file again on purpose.
        """
        target, hard_max = self._push_setup(batch_bytes, self.limits())
        scope = _scope(dataset, method, atomic, run_id)

        def all_batches() -> Iterator[tuple[Batch, str]]:
            for path in paths:
                _, batches = batching.file_batches(os.fspath(path), target, hard_max, fmt=format)
                for batch in batches:
                    yield batch, batch.idempotency_key(scope)

        return self._run(
            dataset,
            all_batches(),
            method=method,
            atomic=atomic,
            wait=self._wait_seconds(wait),
            concurrency=concurrency,
            on_progress=on_progress,
            max_errors=max_errors,
        )

    def _run(
        self,
        dataset: str,
        keyed: Iterable[tuple[Batch, str]],
        *,
        method: str,
        atomic: bool,
        wait: float | None,
        concurrency: int,
        on_progress: Callable[[Any], None] | None,
        max_errors: int,
        server_wait: float = 0,
    ) -> PushResult:
        run = _PushRun(dataset, method, on_progress, max_errors)
        params = _push_params(method, atomic, server_wait)
        concurrency = max(1, concurrency)
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="pushbase-push")
        in_flight: dict[Future[None], int] = {}
        follow = wait is not None
        next_poll = time.monotonic() + 0.5

        def send(seq: int, batch: Batch, key: str) -> None:
            call = _Call(
                "POST",
                f"/v1/datasets/{dataset}/records",
                params=params,
                content=batch.data,
                idempotent=True,
                headers={"content-type": batch.content_type, "idempotency-key": key},
            )
            try:
                response = self._send(call, run.cancelled)
            except (BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationError) as exc:
                run.refuse(seq, exc)
                return
            run.accepted(seq, response.status_code, orjson.loads(response.content))

        def drain(block: bool) -> None:
            nonlocal next_poll
            if not in_flight:
                return
            done, _ = wait_futures(
                list(in_flight), timeout=0.25 if block else 0, return_when=FIRST_COMPLETED
            )
            for future in done:
                in_flight.pop(future)
                future.result()  # a fatal error (401, 404, connection lost) ends the push
            if follow and time.monotonic() >= next_poll:
                self._poll(run)
                next_poll = time.monotonic() + 0.5

        try:
            for batch, key in keyed:
                seq = run.add(batch)
                while len(in_flight) >= concurrency * 2:
                    drain(True)
                in_flight[pool.submit(send, seq, batch, key)] = seq
                drain(False)
            run.sending_done = True
            run.progress()
            while in_flight:
                drain(True)
        except BaseException:
            run.cancelled.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        if follow:
            deadline = time.monotonic() + wait if wait != float("inf") else None
            pause = 0.05
            while run.unfinished():
                self._poll(run)
                run.progress()
                if not run.unfinished():
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(pause)
                pause = min(0.5, pause * 2)
        result = run.result()
        run.progress()
        return result

    def _poll(self, run: _PushRun) -> None:
        """Refresh unfinished jobs: one list call when many are open, else one call each."""
        open_ids = run.unfinished()
        if not open_ids:
            return
        if len(open_ids) > 8:
            docs = self.jobs.list(dataset=run.dataset_id, limit=1000)
            for doc in docs:
                run.update(doc)
            seen = {d["id"] for d in docs}
            open_ids = [i for i in open_ids if i not in seen][:8]
        for job_id in open_ids:
            run.update(self.jobs.get(job_id))
        run.progress()


class AsyncClient(_Base):
    """A pushbase server (asyncio). Same methods as `Client`, awaited.

    async with AsyncClient(url, api_key) as pb:
        result = await pb.push("users", rows, wait=True)
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )
        self.datasets = _Datasets(self)
        self.jobs = _AsyncJobs(self)
        self.keys = _Keys(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def _call(self, call: _Call) -> Any:
        return call.parse(await self._send(call))

    async def _send(self, call: _Call) -> httpx.Response:
        headers, content = self._encode(call)
        headers = {**self._headers(), **headers}
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    self.url + call.path,
                    params=call.params,
                    content=content,
                    headers=headers,
                )
            except httpx.TransportError as exc:
                if attempt >= self.retries or not self._retryable(call, exc, None):
                    raise ConnectionFailed(
                        "connection_error", f"{call.method} {self.url}{call.path}: {exc}", 0
                    ) from exc
                await asyncio.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            if attempt < self.retries and self._retryable(call, None, response.status_code):
                await asyncio.sleep(self._delay(attempt, _retry_after(response.headers)))
                attempt += 1
                continue
            raise error_from_response(response)

    async def limits(self) -> dict[str, Any]:
        if self._limits is None:
            self._limits = await self._call(_Call("GET", "/v1/limits"))
        return self._limits

    async def health(self) -> bool:
        try:
            return (await self._http.get(self.url + "/healthz", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def rows(self, dataset: str, **kwargs: Any) -> dict[str, Any]:
        return await self.datasets.rows(dataset, **kwargs)

    async def delete_all(self, dataset: str, *, wait: bool | float = False) -> dict[str, Any]:
        job = await self._call(
            _Call(
                "DELETE",
                f"/v1/datasets/{dataset}/records",
                headers={"idempotency-key": f"pb-{uuid.uuid4().hex}"},
            )
        )
        seconds = self._wait_seconds(wait)
        if seconds is None or job.get("status") in TERMINAL:
            return job
        return await self.jobs.wait(job["job_id"], None if seconds == float("inf") else seconds)

    async def export(
        self,
        dataset: str,
        format: str = "ndjson",
        path: str | os.PathLike[str] | None = None,
    ) -> bytes | None:
        url = f"{self.url}/v1/datasets/{dataset}/export"
        try:
            async with self._http.stream(
                "GET", url, params={"format": format}, headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response)
                if path is None:
                    return await response.aread()
                with open(path, "wb") as sink:
                    async for chunk in response.aiter_bytes(1 << 20):
                        sink.write(chunk)
        except httpx.TransportError as exc:
            raise ConnectionFailed("connection_error", f"GET {url}: {exc}", 0) from exc
        return None

    async def push(
        self,
        dataset: str,
        data: Any,
        *,
        method: str = "upsert",
        wait: bool | float = False,
        atomic: bool = False,
        batch_bytes: int | str | None = None,
        concurrency: int = 4,
        idempotency_key: str | None = None,
        on_progress: Callable[[Any], None] | None = None,
        max_errors: int = 100,
    ) -> PushResult:
        """See `Client.push`."""
        target, hard_max = self._push_setup(batch_bytes, await self.limits())
        batches = list(batching.data_batches(data, target, hard_max))
        seconds = self._wait_seconds(wait)
        server_wait = min(seconds, 60.0) if seconds and len(batches) == 1 else 0
        scope = _scope(dataset, method, atomic, idempotency_key or uuid.uuid4().hex)
        keyed = self._keys_for(batches, scope, idempotency_key)
        return await self._run(
            dataset,
            keyed,
            method=method,
            atomic=atomic,
            wait=seconds,
            concurrency=concurrency,
            on_progress=on_progress,
            max_errors=max_errors,
            server_wait=server_wait,
        )

    async def push_file(
        self,
        dataset: str,
        *paths: str | os.PathLike[str],
        format: str | None = None,
        method: str = "upsert",
        wait: bool | float = False,
        atomic: bool = False,
        batch_bytes: int | str | None = None,
        concurrency: int = 8,
        run_id: str = "",
        on_progress: Callable[[Any], None] | None = None,
        max_errors: int = 100,
    ) -> PushResult:
        """See `Client.push_file`."""
        target, hard_max = self._push_setup(batch_bytes, await self.limits())
        scope = _scope(dataset, method, atomic, run_id)

        def all_batches() -> Iterator[tuple[Batch, str]]:
            for path in paths:
                _, batches = batching.file_batches(os.fspath(path), target, hard_max, fmt=format)
                for batch in batches:
                    yield batch, batch.idempotency_key(scope)

        return await self._run(
            dataset,
            all_batches(),
            method=method,
            atomic=atomic,
            wait=self._wait_seconds(wait),
            concurrency=concurrency,
            on_progress=on_progress,
            max_errors=max_errors,
        )

    async def _run(
        self,
        dataset: str,
        keyed: Iterable[tuple[Batch, str]],
        *,
        method: str,
        atomic: bool,
        wait: float | None,
        concurrency: int,
        on_progress: Callable[[Any], None] | None,
        max_errors: int,
        server_wait: float = 0,
    ) -> PushResult:
        run = _PushRun(dataset, method, on_progress, max_errors)
        params = _push_params(method, atomic, server_wait)
        slots = asyncio.Semaphore(max(1, concurrency))
        tasks: set[asyncio.Task[None]] = set()

        async def send(seq: int, batch: Batch, key: str) -> None:
            call = _Call(
                "POST",
                f"/v1/datasets/{dataset}/records",
                params=params,
                content=batch.data,
                idempotent=True,
                headers={"content-type": batch.content_type, "idempotency-key": key},
            )
            try:
                response = await self._send(call)
                run.accepted(seq, response.status_code, orjson.loads(response.content))
            except (BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationError) as exc:
                run.refuse(seq, exc)
            finally:
                slots.release()

        try:
            for batch, key in keyed:
                await slots.acquire()
                for task in [t for t in tasks if t.done()]:
                    tasks.discard(task)
                    task.result()
                seq = run.add(batch)
                tasks.add(asyncio.create_task(send(seq, batch, key)))
            run.sending_done = True
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        if wait is not None:
            deadline = time.monotonic() + wait if wait != float("inf") else None
            pause = 0.05
            while run.unfinished():
                await self._poll(run)
                if not run.unfinished():
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(0.5, pause * 2)
        run.progress()
        return run.result()

    async def _poll(self, run: _PushRun) -> None:
        open_ids = run.unfinished()
        if not open_ids:
            return
        if len(open_ids) > 8:
            docs = await self.jobs.list(dataset=run.dataset_id, limit=1000)
            for doc in docs:
                run.update(doc)
            seen = {d["id"] for d in docs}
            open_ids = [i for i in open_ids if i not in seen][:8]
        for doc in await asyncio.gather(*(self.jobs.get(i) for i in open_ids)):
            run.update(doc)
        run.progress()


def load_sample(path: str | Path, rows: int = 100) -> list[dict[str, Any]]:
    """The first records of a JSON, NDJSON, CSV or Parquet file (for `datasets.create`)."""
    return batching.read_sample(os.fspath(path), rows=rows)
