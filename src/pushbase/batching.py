"""Cut files and in-memory frames into push-sized request bodies.

Used by `pushbase.Client.push` / `push_file` and so by `pushbase push`. Nothing here
talks to a server. The hot paths do no per-record Python work:

- NDJSON and CSV are cut on line boundaries by bytes. A CSV newline is a record boundary
  only when an even number of `"` precede it (RFC 4180 quoting, which is what the server
  reads), found with `bytes.count`; each batch repeats the header. The original bytes are
  sent unchanged, so the server sees exactly the cells of the file.
- A JSON array is parsed once with orjson and sliced; slices are serialised with orjson.
- Arrow data (Parquet files, pyarrow tables, pandas and polars frames) is sliced zero-copy
  and written with `pyarrow.csv.write_csv` when every column is flat, else as NDJSON.

Each `Batch` knows where its rows came from, so that row errors reported by the server
(0-based row positions in one request body) can be mapped back to file line numbers —
that mapping walks the batch only on the error path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("json", "ndjson", "csv", "parquet")
CONTENT_TYPES = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
}
_EXTENSIONS = {
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
ORJSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY
_READ_CHUNK = 4 * 1024 * 1024
_BLANK_LINE = re.compile(rb"(?m)^[ \t\r]*$")
_EMPTY_LINE = re.compile(rb"(?m)^\r?$")


class BatchError(ValueError):
    """The input cannot be cut into batches the server would accept."""


@dataclass
class Location:
    """Where a row of the input came from."""

    row: int  # 0-based position in the whole input
    line: int | None = None  # 1-based line in the file, when the input has lines
    label: str = ""  # "data.csv:12", "data.parquet row 7", "row 7"


@dataclass
class Batch:
    """One request body and what it covers."""

    index: int
    data: bytes
    content_type: str
    rows: int  # data rows in the body (exact for every source but blank-line oddities)
    first_row: int  # 0-based position of the first row in the whole input
    start: int = 0  # byte or row range of the input this batch covers
    end: int = 0
    locate: Callable[[int], Location] | None = field(default=None, repr=False)
    identity: str = ""  # the input's identity, for deterministic idempotency keys

    @property
    def size(self) -> int:
        return len(self.data)

    def location(self, row_in_batch: int) -> Location:
        if self.locate is not None:
            return self.locate(row_in_batch)
        row = self.first_row + row_in_batch
        return Location(row, None, f"row {row + 1}")

    def idempotency_key(self, scope: str) -> str:
        """A key that is the same for this batch of this input every time it is cut."""
        digest = hashlib.sha256()
        for part in (scope, self.identity, str(self.index), str(self.start), str(self.end)):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(hashlib.sha256(self.data).digest())
        return "pb-" + digest.hexdigest()[:40]


# -- sizes ---------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """`1MB`, `512k`, `2MiB`, `1048576` -> bytes (K, M and G are powers of 1024)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 1MB, 512KB or a number of bytes)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


# -- formats -------------------------------------------------------------------------


def format_of(path: str, explicit: str | None = None, head: bytes = b"") -> str:
    """The input format: explicit, else by extension (`.gz` looked through), else sniffed."""
    if explicit:
        if explicit not in FORMATS:
            raise BatchError(f"unknown format {explicit!r}: use one of {', '.join(FORMATS)}")
        return explicit
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    fmt = _EXTENSIONS.get(os.path.splitext(name)[1])
    if fmt:
        return fmt
    return sniff_format(head)


def sniff_format(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "ndjson"
    return "csv"


# -- line-oriented inputs: NDJSON and CSV --------------------------------------------


def _last_boundary(buf: bytes, limit: int, quoted: bool) -> int:
    """End (exclusive) of the last whole record that fits in buf[:limit], or -1."""
    pos = buf.rfind(b"\n", 0, limit)
    if pos < 0 or not quoted:
        return pos + 1 if pos >= 0 else -1
    odd = buf.count(b'"', 0, pos) & 1
    while odd:  # that newline is inside a quoted field: step back to the one before
        prev = buf.rfind(b"\n", 0, pos)
        if prev < 0:
            return -1
        odd ^= buf.count(b'"', prev, pos) & 1
        pos = prev
    return pos + 1


def _first_boundary(buf: bytes, quoted: bool) -> int:
    """End (exclusive) of the first whole record in buf, or -1 when it is not complete."""
    pos = buf.find(b"\n")
    if pos < 0 or not quoted:
        return pos + 1 if pos >= 0 else -1
    odd = buf.count(b'"', 0, pos) & 1
    while odd:
        nxt = buf.find(b"\n", pos + 1)
        if nxt < 0:
            return -1
        odd ^= buf.count(b'"', pos, nxt) & 1
        pos = nxt
    return pos + 1


def _blank_lines(text: bytes, pattern: re.Pattern[bytes]) -> int:
    """Lines of `text` the server skips (whitespace-only for NDJSON, empty for CSV)."""
    blank = len(pattern.findall(text))
    return blank - (1 if text.endswith(b"\n") or not text else 0)  # the "line" after the last \n


def _lines(text: bytes) -> int:
    return text.count(b"\n") + (0 if not text or text.endswith(b"\n") else 1)


def _count_ndjson_rows(chunk: bytes) -> int:
    return _lines(chunk) - _blank_lines(chunk, _BLANK_LINE)


def _count_csv_rows(chunk: bytes) -> int:
    if b'"' in chunk:  # quoted fields (odd pieces between quotes) reduced to one character
        chunk = b"Q".join(chunk.split(b'"')[0::2])
    return _lines(chunk) - _blank_lines(chunk, _EMPTY_LINE)


def _ndjson_locator(chunk: bytes, first_line: int, first_row: int, name: str):
    def locate(row_in_batch: int) -> Location:
        seen = -1
        for offset, line in enumerate(chunk.split(b"\n")):
            if line.strip():
                seen += 1
                if seen == row_in_batch:
                    number = first_line + offset
                    return Location(first_row + row_in_batch, number, f"{name}:{number}")
        row = first_row + row_in_batch
        return Location(row, None, f"{name} row {row + 1}")

    return locate


def _csv_locator(chunk: bytes, first_line: int, first_row: int, name: str):
    def locate(row_in_batch: int) -> Location:
        seen = -1
        odd = False
        for offset, line in enumerate(chunk.split(b"\n")):
            if not odd and line.strip(b"\r"):  # a record starts on this line
                seen += 1
                if seen == row_in_batch:
                    number = first_line + offset
                    return Location(first_row + row_in_batch, number, f"{name}:{number}")
            if line.count(b'"') & 1:
                odd = not odd
        row = first_row + row_in_batch
        return Location(row, None, f"{name} row {row + 1}")

    return locate


def split_lines(
    stream: IO[bytes],
    fmt: str,
    target: int,
    hard_max: int,
    *,
    name: str = "-",
    identity: str = "",
) -> Iterator[Batch]:
    """NDJSON or CSV from a binary stream, cut on record boundaries near `target` bytes."""
    csv = fmt == "csv"
    content_type = CONTENT_TYPES[fmt]
    buf = b""
    eof = False
    offset = 0  # file offset of buf[0]
    line = 1  # file line number of buf[0]
    header = b""

    def fill(want: int) -> None:
        nonlocal buf, eof
        parts = [buf]
        have = len(buf)
        while have < want and not eof:
            data = stream.read(max(want - have, _READ_CHUNK))
            if not data:
                eof = True
                break
            parts.append(data)
            have += len(data)
        buf = b"".join(parts)

    if csv:  # the header is the first record
        while True:
            fill(len(buf) + _READ_CHUNK)
            end = _first_boundary(buf, True)
            if end >= 0 or eof:
                break
        end = len(buf) if end < 0 else end
        header = buf[:end]
        if not header.strip():
            return
        buf = buf[end:]
        offset, line = end, 1 + header.count(b"\n")
        if header.startswith(b"\xef\xbb\xbf"):
            header = header[3:]
        if not header.endswith(b"\n"):
            header += b"\n"
        if len(header) >= hard_max:
            raise BatchError(f"{name}: the CSV header alone exceeds {hard_max} bytes")
    budget = max(1, target - len(header))
    limit = hard_max - len(header)
    index = 0
    first_row = 0
    while True:
        fill(budget + 1)
        if not buf:
            return
        if eof and len(buf) <= budget:
            cut = len(buf)
        else:
            cut = _last_boundary(buf, budget, csv)
            while cut <= 0:  # one record longer than the budget: take it whole
                cut = _first_boundary(buf, csv)
                if cut > 0:
                    break
                if eof:
                    cut = len(buf)
                    break
                fill(len(buf) + _READ_CHUNK)
        chunk = buf[:cut]
        buf = buf[cut:]
        if len(chunk) > limit:
            raise BatchError(
                f"{name}:{line}: a record of {len(chunk)} bytes exceeds the server's "
                f"limit of {hard_max} bytes per request"
            )
        rows = _count_csv_rows(chunk) if csv else _count_ndjson_rows(chunk)
        if rows > 0:
            locator = (_csv_locator if csv else _ndjson_locator)(chunk, line, first_row, name)
            yield Batch(
                index=index,
                data=header + chunk if csv else chunk,
                content_type=content_type,
                rows=rows,
                first_row=first_row,
                start=offset,
                end=offset + cut,
                locate=locator,
                identity=identity,
            )
            index += 1
            first_row += rows
        offset += cut
        line += chunk.count(b"\n")


# -- JSON documents ------------------------------------------------------------------


def _json_records(value: Any) -> tuple[list[Any], bool]:
    """The records of a JSON document and whether it is a top-level array."""
    if isinstance(value, list):
        return value, True
    if isinstance(value, dict):
        for wrapper in ("data", "rows"):
            inner = value.get(wrapper)
            if len(value) == 1 and isinstance(inner, list):
                return inner, False
        return [value], False
    raise BatchError("a JSON file must hold an array of records, {'data': [...]} or one record")


_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},\n]')


def _array_element_lines(data: bytes, needed: int) -> list[int]:
    """1-based line of each element of a top-level JSON array, up to index `needed`."""
    lines: list[int] = []
    line = 1
    depth = 0
    expecting = False
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        if token == b"\n":
            line += 1
            continue
        if depth == 1 and expecting and token not in (b"]", b","):
            lines.append(line)
            expecting = False
            if len(lines) > needed:
                break
        if token in (b"[", b"{"):
            depth += 1
            if depth == 1:
                expecting = True
        elif token in (b"]", b"}"):
            depth -= 1
        elif token == b"," and depth == 1:
            expecting = True
        elif token.startswith(b'"'):
            line += token.count(b"\n")
    return lines


def dump_records(records: list[Any]) -> bytes:
    return orjson.dumps(records, option=ORJSON_OPTIONS, default=str)


def slice_records(
    records: list[Any],
    target: int,
    hard_max: int,
    *,
    encoded: bytes | None = None,
    identity: str = "",
    locate_row: Callable[[int], Location] | None = None,
) -> Iterator[Batch]:
    """A list of records as JSON-array bodies of about `target` bytes each."""
    if not records:
        return
    whole = encoded if encoded is not None else dump_records(records)
    if len(whole) <= target:
        yield _json_batch(0, whole, 0, len(records), identity, locate_row)
        return
    per_row = max(1.0, len(whole) / len(records))
    count = max(1, int(target / per_row))
    index = 0
    start = 0
    while start < len(records):
        n = min(count, len(records) - start)
        body = dump_records(records[start : start + n])
        while len(body) > hard_max and n > 1:
            n = max(1, n // 2)
            body = dump_records(records[start : start + n])
        if len(body) > hard_max:
            raise BatchError(
                f"record {start + 1} alone is {len(body)} bytes, over the server's "
                f"limit of {hard_max} bytes per request"
            )
        yield _json_batch(index, body, start, n, identity, locate_row)
        index += 1
        start += n


def _json_batch(index, body, start, n, identity, locate_row) -> Batch:
    locate = None
    if locate_row is not None:

        def locate(row_in_batch: int, _start: int = start) -> Location:
            return locate_row(_start + row_in_batch)

    return Batch(index, body, CONTENT_TYPES["json"], n, start, start, start + n, locate, identity)


def json_document_batches(
    data: bytes, target: int, hard_max: int, *, name: str = "-", identity: str = ""
) -> Iterator[Batch]:
    """A JSON file: an array (or {"data": [...]}, or one record); JSON lines as NDJSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n")
        if stripped.startswith(b"{"):  # JSON lines in a .json file
            yield from split_lines(
                io.BytesIO(data), "ndjson", target, hard_max, name=name, identity=identity
            )
            return
        raise BatchError(f"{name}: not valid JSON: {exc}") from exc
    records, top_array = _json_records(value)
    cache: list[int] = []

    def locate_row(row: int) -> Location:
        if top_array:
            if len(cache) <= row:
                cache[:] = _array_element_lines(data, row)
            if row < len(cache):
                return Location(row, cache[row], f"{name}:{cache[row]}")
        return Location(row, None, f"{name} record {row + 1}")

    yield from slice_records(records, target, hard_max, identity=identity, locate_row=locate_row)


# -- Arrow: Parquet files, pyarrow / pandas / polars frames ---------------------------


def _flat(data_type: pa.DataType) -> bool:
    import pyarrow as pa

    t = pa.types
    return bool(
        t.is_integer(data_type)
        or t.is_floating(data_type)
        or t.is_boolean(data_type)
        or t.is_string(data_type)
        or t.is_large_string(data_type)
        or getattr(t, "is_string_view", lambda _: False)(data_type)
        or t.is_date(data_type)
        or t.is_timestamp(data_type)
        or t.is_decimal(data_type)
        or t.is_null(data_type)
        or (t.is_dictionary(data_type) and _flat(data_type.value_type))
    )


def _csv_ready(table: pa.Table) -> pa.Table:
    """NaN as null (the server reads an empty cell as null), views as plain strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for column in table.columns:
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
        elif pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if getattr(pa.types, "is_string_view", lambda _: False)(column.type):
            column = column.cast(pa.large_string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def encode_arrow(table: pa.Table, as_csv: bool) -> bytes:
    if as_csv:
        import pyarrow.csv as pacsv

        sink = io.BytesIO()
        pacsv.write_csv(_csv_ready(table), sink)
        return sink.getvalue()
    try:  # nested values: NDJSON, by polars' native writer when it is installed
        import polars

        return polars.from_arrow(table).write_ndjson().encode()  # type: ignore[union-attr]
    except Exception:  # no polars, or a type it cannot take: one row at a time
        rows = table.to_pylist()
        return b"".join(orjson.dumps(r, option=ORJSON_OPTIONS, default=str) + b"\n" for r in rows)


def arrow_batches(
    tables: Iterator[pa.Table | pa.RecordBatch],
    target: int,
    hard_max: int,
    *,
    name: str | None = None,
    identity: str = "",
) -> Iterator[Batch]:
    """Arrow data sliced (zero-copy) into bodies of about `target` bytes.

    Flat schemas go as CSV written by pyarrow, nested ones as NDJSON. The slice size adapts
    to the measured bytes per row, deterministically for a given input and target.
    """
    import pyarrow as pa

    label = f"{name} row" if name else "row"
    rows_per_batch = 1000
    index = 0
    first_row = 0
    pending: pa.Table | None = None
    as_csv: bool | None = None
    source = iter(tables)
    exhausted = False
    while True:
        while not exhausted and (pending is None or pending.num_rows < rows_per_batch):
            try:
                part = next(source)
            except StopIteration:
                exhausted = True
                break
            if isinstance(part, pa.RecordBatch):
                part = pa.Table.from_batches([part])
            if as_csv is None:
                as_csv = all(_flat(f.type) for f in part.schema)
            pending = part if pending is None else pa.concat_tables([pending, part])
        if pending is None or pending.num_rows == 0:
            return
        n = min(rows_per_batch, pending.num_rows)
        body = encode_arrow(pending.slice(0, n), bool(as_csv))
        while len(body) > hard_max and n > 1:
            n = max(1, n // 2)
            body = encode_arrow(pending.slice(0, n), bool(as_csv))
        if len(body) > hard_max:
            raise BatchError(f"{label} {first_row + 1} alone exceeds {hard_max} bytes")

        def locate(row_in_batch: int, _first: int = first_row) -> Location:
            row = _first + row_in_batch
            return Location(row, None, f"{label} {row + 1}")

        content_type = CONTENT_TYPES["csv" if as_csv else "ndjson"]
        yield Batch(
            index, body, content_type, n, first_row, first_row, first_row + n, locate, identity
        )
        index += 1
        first_row += n
        pending = pending.slice(n)
        per_row = len(body) / n
        rows_per_batch = max(1, int(target / per_row))


def frame_to_arrow(data: Any) -> pa.Table | None:
    """A pyarrow Table/RecordBatch, pandas or polars DataFrame as an Arrow table, else None."""
    module = type(data).__module__.split(".")[0]
    if module == "pyarrow":
        import pyarrow as pa

        if isinstance(data, pa.RecordBatch):
            return pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            return data
    if module == "pandas" and hasattr(data, "to_dict"):
        import pyarrow as pa

        return pa.Table.from_pandas(data, preserve_index=False)
    if module == "polars" and hasattr(data, "to_arrow"):
        if hasattr(data, "collect") and not hasattr(data, "height"):  # LazyFrame
            data = data.collect()
        return data.to_arrow()
    return None


def data_batches(data: Any, target: int, hard_max: int, *, identity: str = "") -> Iterator[Batch]:
    """Anything `Client.push` accepts, as batches."""
    table = frame_to_arrow(data)
    if table is not None:
        yield from arrow_batches(
            iter(table.to_batches(max_chunksize=65536)), target, hard_max, identity=identity
        )
        return
    if isinstance(data, dict):
        data = [data]
    elif not isinstance(data, list):
        try:
            data = list(data)
        except TypeError:
            raise TypeError(
                "push takes a list of dicts, a pandas or polars DataFrame or a pyarrow Table; "
                f"got {type(data).__name__}"
            ) from None
    yield from slice_records(data, target, hard_max, identity=identity)


# -- files -------------------------------------------------------------------------


def file_identity(path: str) -> str:
    if path == "-":
        return "stdin"
    resolved = Path(path).resolve()
    return f"{resolved}:{resolved.stat().st_size}"


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


class _Peeked(io.RawIOBase):
    """A binary stream with its first bytes already read (to sniff stdin's format)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head = head
        self.rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0:
                data, self.head = self.head + self.rest.read(), b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.rest.read(size)


def file_batches(
    path: str, target: int, hard_max: int, *, fmt: str | None = None
) -> tuple[str, Iterator[Batch]]:
    """(format, batches) of a file; `-` reads standard input."""
    name = "stdin" if path == "-" else os.path.basename(path)
    identity = file_identity(path)
    stream = _open(path)
    head = b""
    if fmt is None and format_of(path, None, b"\0") == "csv" and not _known_extension(path):
        head = stream.read(4096)
        stream = _Peeked(head, stream)  # type: ignore[assignment]
    chosen = format_of(path, fmt, head)

    def generate() -> Iterator[Batch]:
        try:
            if chosen in ("ndjson", "csv"):
                yield from split_lines(
                    stream, chosen, target, hard_max, name=name, identity=identity
                )
            elif chosen == "json":
                yield from json_document_batches(
                    stream.read(), target, hard_max, name=name, identity=identity
                )
            else:
                import pyarrow.parquet as pq

                source = stream if path not in ("-",) else io.BytesIO(stream.read())
                parquet = pq.ParquetFile(source)
                yield from arrow_batches(
                    (pa_table for pa_table in parquet.iter_batches(batch_size=65536)),
                    target,
                    hard_max,
                    name=name,
                    identity=identity,
                )
        finally:
            if path != "-":
                stream.close()

    return chosen, generate()


def _known_extension(path: str) -> bool:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1] in _EXTENSIONS


def file_size(path: str) -> int | None:
    if path == "-":
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    return None if path.lower().endswith(".gz") else size


def read_sample(path: str, fmt: str | None = None, rows: int = 100) -> list[dict[str, Any]]:
    """The first records of a file, as JSON-ready dicts (for schema inference)."""
    name = "stdin" if path == "-" else path
    with _open(path) as stream:
        data = stream.read() if fmt in (None, "json", "parquet") else stream.read(4 * 1024**2)
    chosen = format_of(path, fmt, data[:4096])
    if chosen == "json":
        try:
            records, _ = _json_records(orjson.loads(data))
            return records[:rows]
        except orjson.JSONDecodeError:
            chosen = "ndjson"
    if chosen == "ndjson":
        out = []
        for line in data.splitlines():
            if line.strip():
                out.append(orjson.loads(line))
                if len(out) >= rows:
                    break
        return out
    import pyarrow as pa

    if chosen == "csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(io.BytesIO(data), parse_options=_sniffed_csv(data))
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
    if not isinstance(table, pa.Table):  # pragma: no cover
        raise BatchError(f"{name}: cannot read a sample")
    return orjson.loads(dump_records(table.slice(0, rows).to_pylist()))


def _sniffed_csv(data: bytes):
    import pyarrow.csv as pacsv

    header = data.split(b"\n", 1)[0]
    delimiter = max(",;\t|", key=lambda d: header.count(d.encode()))
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
