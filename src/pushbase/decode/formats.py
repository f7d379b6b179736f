"""Payload bytes → records: content types, gzip, JSON, NDJSON and CSV parsing.

JSON and NDJSON become a list of Python objects (orjson, in C); CSV becomes an
Arrow table of strings (pyarrow's reader, in C). Nothing here knows a schema.
"""

from __future__ import annotations

import csv
import io
import zlib
from enum import StrEnum
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pushbase.errors import PushbaseError

CSV_DELIMITERS = (",", ";", "\t", "|")
_BOM = b"\xef\xbb\xbf"


class PayloadFormat(StrEnum):
    json = "json"
    ndjson = "ndjson"
    csv = "csv"


_MEDIA_TYPES = {
    "application/json": PayloadFormat.json,
    "text/json": PayloadFormat.json,
    "application/x-ndjson": PayloadFormat.ndjson,
    "application/ndjson": PayloadFormat.ndjson,
    "application/jsonl": PayloadFormat.ndjson,
    "application/x-jsonlines": PayloadFormat.ndjson,
    "text/csv": PayloadFormat.csv,
    "application/csv": PayloadFormat.csv,
}


def invalid_payload(message: str, **details: Any) -> PushbaseError:
    return PushbaseError("invalid_payload", message, 400, details)


def format_for(content_type: str | None) -> PayloadFormat:
    """The payload format named by a Content-Type header (JSON when absent)."""
    if not content_type:
        return PayloadFormat.json
    media = content_type.split(";", 1)[0].strip().lower()
    found = _MEDIA_TYPES.get(media)
    if found is None:
        raise PushbaseError(
            "unsupported_media_type",
            f"content type {media!r} is not accepted; use one of {sorted(_MEDIA_TYPES)}",
            415,
        )
    return found


def is_gzip(content_encoding: str | None) -> bool:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return False
    if encoding in ("gzip", "x-gzip"):
        return True
    raise PushbaseError(
        "unsupported_encoding", f"content encoding {encoding!r} is not accepted (gzip only)", 415
    )


class Inflater:
    """Streams gzip through a size limit; used by the request path to judge a body cheaply."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._z = zlib.decompressobj(wbits=31)
        self._started = False

    def feed(self, chunk: bytes, keep: bool = True) -> bytes:
        out = bytearray()
        data = chunk
        while data:
            try:
                piece = self._z.decompress(data, 1 << 20)
            except zlib.error as exc:
                raise invalid_payload(f"gzip body is corrupt: {exc}") from exc
            self._started = True
            self.size += len(piece)
            if self.size > self.limit:
                raise PushbaseError(
                    "payload_too_large",
                    f"decompressed body exceeds {self.limit} bytes",
                    413,
                    {"max_inflated_bytes": self.limit},
                )
            if keep:
                out += piece
            data = self._z.unconsumed_tail
            if self._z.eof and self._z.unused_data:
                # Concatenated gzip members are valid gzip: start the next one.
                data = self._z.unused_data + data
                self._z = zlib.decompressobj(wbits=31)
        return bytes(out)

    def finish(self) -> None:
        if not self._z.eof:
            raise invalid_payload("gzip body is truncated")


def inflate(data: bytes, limit: int) -> bytes:
    inflater = Inflater(limit)
    out = inflater.feed(data)
    inflater.finish()
    return out


def parse_json(data: bytes) -> list[Any]:
    """A JSON array, or an object holding the array under `data` or `rows`."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        _out_of_memory(exc)
        raise invalid_payload(f"body is not valid JSON: {exc}") from exc
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for field in ("data", "rows"):
            if field in document:
                records = document[field]
                if not isinstance(records, list):
                    raise invalid_payload(f"{field!r} must be an array of records")
                return records
        return [document]  # one record on its own
    raise invalid_payload(
        'body must be a JSON array of records, one record, or {"data": [...]} / {"rows": [...]}'
    )


def _out_of_memory(exc: orjson.JSONDecodeError) -> None:
    """orjson reports a failed allocation as a decode error: it is one no longer."""
    if "not enough memory" in str(exc).lower():
        raise MemoryError(str(exc)) from exc


class Malformed:
    """A record that could not be read (a line that is not JSON): a row error of its own,
    never the payload's (DESIGN §10.1). Keeps a bounded piece of its raw text."""

    __slots__ = ("reason", "text")

    def __init__(self, text: bytes | str, reason: str) -> None:
        if isinstance(text, bytes):
            text = text[:MALFORMED_TEXT_BYTES].decode("utf-8", "replace")
        self.text = text[:MALFORMED_TEXT_BYTES]
        self.reason = reason


MALFORMED_TEXT_BYTES = 1024  # of a malformed record's raw text kept (the error cuts it more)


def parse_ndjson(data: bytes, objects: bool = True) -> list[Any]:
    """One record per non-blank line; a line that is not JSON, or (with `objects`) not a
    JSON object, is a `Malformed` record, which keeps the line's text. Positional rows
    (dialects) are arrays: `objects=False` leaves their shape to the caller."""
    records: list[Any] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            if objects and not isinstance(record, dict):
                record = Malformed(line.strip(), "each record must be a JSON object")
            records.append(record)
        except orjson.JSONDecodeError as exc:
            _out_of_memory(exc)
            records.append(Malformed(line.rstrip(b"\r"), f"line {number} is not valid JSON: {exc}"))
    return records


def sniff_delimiter(header: str) -> str:
    """The candidate that splits the header line into the most fields, outside quotes."""
    best, best_count = ",", 0
    for delimiter in CSV_DELIMITERS:
        try:
            fields = split_header(header, delimiter)
        except PushbaseError:
            continue
        if len(fields) - 1 > best_count:
            best, best_count = delimiter, len(fields) - 1
    return best


def split_header(header: str, delimiter: str) -> list[str]:
    """A CSV header line's fields. Python's reader refuses fields over 131,072 characters
    (`csv.Error`); such a header is read by Arrow's reader, which has no such limit."""
    try:
        return next(csv.reader([header], delimiter=delimiter), [])
    except csv.Error:
        pass
    line = header.encode("utf-8", "surrogatepass") + b"\n"
    try:
        return pacsv.read_csv(
            io.BytesIO(line),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=len(line) + 64),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
        ).column_names
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise invalid_payload("CSV header cannot be read") from exc


# A record is a row error of its own when pyarrow's reader finds it has the wrong number
# of fields: `number` is the record's position, the header counting as 1 (blank lines not
# counted, a quoted newline not starting a record).
_FIRST_RECORD_NUMBER = 2


def parse_csv(
    data: bytes, delimiter: str | None = None
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """A CSV with a header row → an Arrow table of strings (empty unquoted cell = null) of
    its well-formed records, and (record index, message, raw text) of each record with
    the wrong number of fields or invalid UTF-8 text, in order."""
    try:
        return _parse_csv(data, delimiter, replaced=False)
    except PushbaseError:
        # pyarrow decodes a ragged record's text before its handler sees it, and fails the
        # body if it is not UTF-8: read the body again with U+FFFD for each invalid byte,
        # and let that character mark the records that held one (only where the body had
        # none of its own, else it cannot tell; never in the header).
        if _is_utf8(data) or _REPLACEMENT in data or not _is_utf8(data.split(b"\n", 1)[0]):
            raise
        return _parse_csv(data.decode("utf-8", "replace").encode(), delimiter, replaced=True)


_REPLACEMENT = "\ufffd".encode()


def _parse_csv(
    data: bytes, delimiter: str | None, replaced: bool
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    first_line_end = data.find(b"\n")
    header_bytes = data if first_line_end < 0 else data[:first_line_end]
    try:
        header = header_bytes.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise invalid_payload("CSV header is not valid UTF-8") from exc
    if not header.strip():
        raise invalid_payload("CSV body needs a header row")
    if data.count(b'"') % 2:
        # RFC 4180 quotes come in pairs; an odd count means a field never closed,
        # which a lenient reader would silently run to the end of the body.
        raise invalid_payload("CSV has an unterminated quoted field (unbalanced quotes)")
    delimiter = delimiter or sniff_delimiter(header)
    names = split_header(header, delimiter)
    if any(not name for name in names):
        raise invalid_payload("CSV header has an empty column name")
    if len(set(names)) != len(names):
        raise invalid_payload("CSV header repeats a column name")
    malformed: list[tuple[int, str, str]] = []

    def skip(row: Any) -> str:  # called only for a malformed record
        if row.number is None:  # the reader could not say where: refuse rather than guess
            return "error"
        message = f"record has {row.actual_columns} fields, the header {row.expected_columns}"
        malformed.append(
            (row.number - _FIRST_RECORD_NUMBER, message, row.text[:MALFORMED_TEXT_BYTES])
        )
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(
                use_threads=False,  # also keeps the malformed records in order
                block_size=max(1 << 20, 2 * len(header_bytes) + 64),  # the header fits a block
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=skip
            ),
            convert_options=pacsv.ConvertOptions(
                # Bytes first, text below: invalid UTF-8 then costs its record, not the body.
                column_types={name: pa.binary() for name in names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise invalid_payload(f"CSV cannot be read: {exc}") from exc
    return _as_text(table, malformed, delimiter, replaced), malformed


def _as_text(
    table: pa.Table, malformed: list[tuple[int, str, str]], delimiter: str, replaced: bool
) -> pa.Table:
    """The records' fields as UTF-8 text (one validating cast per column). A record with
    invalid UTF-8 in a field (or, when `replaced`, U+FFFD standing for it) leaves the
    table and joins `malformed`, kept in order."""
    text = pa.schema([(name, pa.string()) for name in table.column_names])
    bad: set[int] = set()
    if replaced:
        table = table.cast(text)
        for column in table.columns:
            marked = pc.fill_null(pc.match_substring(column, "\ufffd"), False)
            bad.update(pc.indices_nonzero(marked).to_pylist())
    else:
        try:
            return table.cast(text)
        except pa.ArrowInvalid:
            pass
        for column in table.columns:  # only a body with invalid text comes here
            for row, value in enumerate(column.to_pylist()):
                if value is not None and not _is_utf8(value):
                    bad.add(row)
    if not bad:
        return table
    skipped = sorted(row for row, _, _ in malformed)
    for row in sorted(bad):
        cells = [_raw(c[row].as_py()) for c in table.columns]
        raw = delimiter.encode().join(cells)[:MALFORMED_TEXT_BYTES].decode("utf-8", "replace")
        malformed.append((_record_index(row, skipped), "record is not valid UTF-8 text", raw))
    malformed.sort()
    keep = pa.array([row not in bad for row in range(table.num_rows)], pa.bool_())
    return table.filter(keep).cast(text)


def _raw(cell: bytes | str | None) -> bytes:
    if cell is None:
        return b""
    return cell.encode() if isinstance(cell, str) else cell


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _record_index(row: int, skipped: list[int]) -> int:
    """The payload index of the table's `row`, records at `skipped` indices being absent."""
    index = row
    for gap in skipped:  # ascending: each record skipped at or before moves it one on
        if gap <= index:
            index += 1
    return index
