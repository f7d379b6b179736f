"""Coercion of one column's raw values to its type (DESIGN §1).

Each column is first tried as a whole with Arrow compute (the fast path: C speed,
no Python per value). When that cannot be done — mixed JSON types, an unparsable
value — the column falls back to `coerce_value`, which is the reference
definition of every rule and explains each rejected value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pushbase.decode.rowerrors import shown
from pushbase.schema import Column, ColumnType

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.string: pa.string(),
    ColumnType.integer: pa.int64(),
    ColumnType.number: pa.float64(),
    ColumnType.boolean: pa.bool_(),
    ColumnType.date: pa.date32(),
    ColumnType.datetime: pa.timestamp("us"),
    ColumnType.json: pa.string(),  # JSON text
}

DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$"
)
# What Arrow's own ISO parser takes exactly as we mean it (fractions up to µs).
_FAST_NAIVE = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$"
_FAST_ZONED = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})$"
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})
# Types whose values mostly arrive as JSON strings.
_FROM_TEXT = frozenset({ColumnType.string, ColumnType.date, ColumnType.datetime})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
EPOCH = datetime(1970, 1, 1)


class CoerceError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ColumnResult:
    """A coerced column: values (null where rejected) and the rejected positions."""

    array: pa.Array
    errors: list[tuple[int, str, str]]  # (position, code, message)


def coerce_column(values: Sequence[Any], column: Column) -> ColumnResult:
    """Coerce raw values (Python objects or an Arrow string array from CSV)."""
    if isinstance(values, pa.Array):
        if column.type is ColumnType.json:
            return _json_from_text(values.to_pylist())
        fast = _fast_from_arrow(values, column)
        if fast is not None:
            return ColumnResult(fast, [])
        values = values.to_pylist()
    else:
        fast = _fast_from_python(values, column)
        if fast is not None:
            return ColumnResult(fast, [])
    return _slow(values, column)


def _fast_from_python(values: Sequence[Any], column: Column) -> pa.Array | None:
    if column.type is ColumnType.json:
        return None
    if column.type in _FROM_TEXT:
        # Most often every value is a string: converting with the type known is ~10x
        # faster than letting Arrow infer it. Any non-string fails, then infer as before.
        try:
            text = pa.array(values, pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        else:
            if text.null_count < len(text):  # all null: the inferred null type says so
                return _fast_from_arrow(text, column)
    try:
        natural = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return None
    return _fast_from_arrow(natural, column)


def _fast_from_arrow(arr: pa.Array, column: Column) -> pa.Array | None:
    """Vectorised coercion of a homogeneous Arrow array, or None to take the slow path."""
    target = ARROW_TYPES[column.type]
    kind = arr.type
    if pa.types.is_null(kind):
        return pa.nulls(len(arr), target)
    if column.type is ColumnType.json:
        return None
    try:
        if column.type is ColumnType.string:
            return arr if pa.types.is_string(kind) else None
        if column.type is ColumnType.integer:
            if pa.types.is_integer(kind):
                return arr.cast(pa.int64())
            if pa.types.is_floating(kind):
                integral = pc.all(pc.equal(pc.floor(arr), arr)).as_py()
                return arr.cast(pa.int64()) if integral is not False else None
            if pa.types.is_string(kind):
                return pc.cast(arr, pa.int64())
            return None
        if column.type is ColumnType.number:
            if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind):
                return pc.cast(arr, pa.float64())
            return None
        if column.type is ColumnType.boolean:
            return _fast_boolean(arr)
        if column.format is not None:
            return _fast_formatted(arr, column)
        if column.type is ColumnType.date:
            if pa.types.is_string(kind) and _all_match(arr, DATE_RE.pattern):
                return pc.cast(arr, pa.date32())
            return None
        return _fast_datetime(arr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        return None


def _all_match(arr: pa.Array, pattern: str) -> bool:
    return pc.all(pc.match_substring_regex(arr, pattern)).as_py() is not False


def _fast_boolean(arr: pa.Array) -> pa.Array | None:
    kind = arr.type
    if pa.types.is_boolean(kind):
        return arr
    if pa.types.is_integer(kind):
        if pc.all(pc.is_in(arr, pa.array([0, 1], kind))).as_py() is False:
            return None
        return pc.equal(arr, 1)
    if pa.types.is_string(kind):
        lowered = pc.utf8_lower(arr)
        known = pc.or_(
            pc.is_in(lowered, pa.array(sorted(TRUE_WORDS))),
            pc.is_in(lowered, pa.array(sorted(FALSE_WORDS))),
        )
        if pc.all(known).as_py() is False:
            return None
        return pc.is_in(lowered, pa.array(sorted(TRUE_WORDS)))
    return None


def _fast_datetime(arr: pa.Array) -> pa.Array | None:
    kind = arr.type
    if pa.types.is_integer(kind):
        return _epoch_to_timestamp(arr, 1000)
    if not pa.types.is_string(kind):
        return None
    zoned = pc.match_substring_regex(arr, _FAST_ZONED)
    if pc.all(zoned).as_py():  # the common case, every value with its offset: one parse
        return pc.cast(arr, pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
    naive = pc.match_substring_regex(arr, _FAST_NAIVE)
    if pc.all(pc.or_(zoned, naive)).as_py() is False:
        return None
    if pc.any(zoned).as_py():
        as_utc = pc.cast(
            pc.if_else(zoned, arr, pa.scalar(None, pa.string())), pa.timestamp("us", tz="UTC")
        ).cast(pa.timestamp("us"))
        as_naive = pc.cast(pc.if_else(zoned, pa.scalar(None, pa.string()), arr), pa.timestamp("us"))
        return pc.if_else(zoned, as_utc, as_naive)
    return pc.cast(arr, pa.timestamp("us"))


def _epoch_to_timestamp(arr: pa.Array, per_second: int) -> pa.Array:
    micros = pc.multiply_checked(arr.cast(pa.int64()), 1_000_000 // per_second)
    return micros.cast(pa.timestamp("us"))


def _fast_formatted(arr: pa.Array, column: Column) -> pa.Array | None:
    fmt = column.format
    kind = arr.type
    if fmt in ("epoch_s", "epoch_ms"):
        if not pa.types.is_integer(kind):
            return None
        stamps = _epoch_to_timestamp(arr, 1 if fmt == "epoch_s" else 1000)
    else:
        if not pa.types.is_string(kind):
            return None
        stamps = pc.strptime(arr, format=fmt, unit="us", error_is_null=True)
        if stamps.null_count != arr.null_count:
            return None
    return stamps.cast(pa.date32()) if column.type is ColumnType.date else stamps


def _json_from_text(texts: list[str | None]) -> ColumnResult:
    """A json column read from text (CSV): each cell must itself be JSON."""
    out: list[str | None] = []
    errors: list[tuple[int, str, str]] = []
    for position, text in enumerate(texts):
        try:
            out.append(None if text is None else orjson.dumps(orjson.loads(text)).decode())
        except orjson.JSONDecodeError:
            out.append(None)
            errors.append((position, "invalid_value", f"{shown(text, 50)} is not JSON"))
    return ColumnResult(pa.array(out, pa.string()), errors)


def _slow(values: Sequence[Any], column: Column) -> ColumnResult:
    out: list[Any] = []
    errors: list[tuple[int, str, str]] = []
    for position, value in enumerate(values):
        try:
            out.append(coerce_value(value, column))
        except CoerceError as exc:
            out.append(None)
            errors.append((position, exc.code, exc.message))
    return ColumnResult(pa.array(out, ARROW_TYPES[column.type]), errors)


def coerce_value(value: Any, column: Column) -> Any:
    """The reference rule for one value; returns what the column stores."""
    if value is None:
        return None
    if type(value) is int and not INT64_MIN <= value <= UINT64_MAX:
        try:
            value = float(value)  # a JSON integer beyond 64 bits reads as a float, as orjson
        except OverflowError as exc:
            raise CoerceError("out_of_range", f"{shown(value)} is out of range") from exc
    kind = column.type
    if kind is ColumnType.json:
        return orjson.dumps(value).decode()
    if isinstance(value, dict | list):
        raise CoerceError("type_mismatch", f"expected {kind.value}, got {_json_kind(value)}")
    if kind is ColumnType.string:
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if kind is ColumnType.integer:
        return _to_integer(value)
    if kind is ColumnType.number:
        return _to_number(value)
    if kind is ColumnType.boolean:
        return _to_boolean(value)
    stamp = _to_timestamp(value, column)
    return stamp.date() if kind is ColumnType.date else stamp


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


def _to_integer(value: Any) -> int:
    if isinstance(value, bool):
        raise CoerceError("type_mismatch", "expected integer, got boolean")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise CoerceError("invalid_value", f"{shown(value)} is not an integral number")
        result = int(value)
    else:
        text = value.strip()
        if not re.fullmatch(r"-?\d+", text):
            raise CoerceError("invalid_value", f"{shown(value)} is not a decimal integer")
        if len(text.lstrip("-").lstrip("0")) > 20:  # past 64 bits; int() refuses 4,300 digits
            raise CoerceError("out_of_range", f"{shown(value)} does not fit in 64 bits")
        result = int(text)
    if not INT64_MIN <= result <= INT64_MAX:
        raise CoerceError("out_of_range", f"{shown(value)} does not fit in 64 bits")
    return result


def _to_number(value: Any) -> float:
    if isinstance(value, bool):
        raise CoerceError("type_mismatch", "expected number, got boolean")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError as exc:
            raise CoerceError("out_of_range", f"{shown(value)} is too large") from exc
    try:
        result = float(value.strip())
    except ValueError as exc:
        raise CoerceError("invalid_value", f"{shown(value)} is not a number") from exc
    if math.isinf(result) and "inf" not in value.lower():
        raise CoerceError("out_of_range", f"{shown(value)} is too large")
    return result


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        folded = value.strip().lower()
        if folded in TRUE_WORDS:
            return True
        if folded in FALSE_WORDS:
            return False
    raise CoerceError("invalid_value", f"{shown(value)} is not a boolean")


def _to_timestamp(value: Any, column: Column) -> datetime:
    fmt = column.format
    if isinstance(value, bool):
        raise CoerceError("type_mismatch", f"expected {column.type.value}, got boolean")
    if isinstance(value, int | float):
        if fmt not in (None, "epoch_s", "epoch_ms"):
            raise CoerceError("type_mismatch", f"expected a string in format {fmt!r}")
        if column.type is ColumnType.date and fmt is None:
            raise CoerceError("type_mismatch", "expected a date string yyyy-MM-dd")
        seconds = value if fmt == "epoch_s" else value / 1000
        try:
            return EPOCH + timedelta(seconds=seconds)
        except OverflowError as exc:
            raise CoerceError("out_of_range", f"{shown(value)} is out of range") from exc
    if fmt in ("epoch_s", "epoch_ms"):
        raise CoerceError("type_mismatch", f"expected an integer ({fmt})")
    if fmt is not None:
        try:
            parsed = datetime.strptime(value, fmt)
        except ValueError as exc:
            raise CoerceError("invalid_value", f"{shown(value)} does not match {fmt!r}") from exc
        return _as_naive_utc(parsed)
    if column.type is ColumnType.date:
        if not DATE_RE.match(value):
            raise CoerceError("invalid_value", f"{shown(value)} is not a date (yyyy-MM-dd)")
        try:
            return datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError as exc:
            raise CoerceError("invalid_value", f"{shown(value)} is not a valid date") from exc
    return parse_datetime(value)


def parse_datetime(text: str) -> datetime:
    """The datetime family of DESIGN §1, as naive UTC."""
    match = DATETIME_RE.match(text)
    if not match:
        raise CoerceError("invalid_value", f"{shown(text)} is not an ISO-8601 datetime")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        stamp = datetime(
            int(year), int(month), int(day),
            int(hour or 0), int(minute or 0), int(second or 0), micros,
        )  # fmt: skip
    except ValueError as exc:
        raise CoerceError("invalid_value", f"{shown(text)} is not a valid datetime") from exc
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if offset > timedelta(hours=18):
            raise CoerceError("invalid_value", f"{shown(text)} has an impossible offset")
        try:
            stamp = stamp - sign * offset
        except OverflowError as exc:
            raise CoerceError("out_of_range", f"{shown(text)} is out of range") from exc
    return stamp


def _as_naive_utc(stamp: datetime) -> datetime:
    if stamp.tzinfo is None:
        return stamp
    return stamp.astimezone(UTC).replace(tzinfo=None)


def looks_like(text: str) -> ColumnType:
    """What a sample string holds, for inference: date, datetime or plain string."""
    if DATE_RE.match(text):
        try:
            date.fromisoformat(text)
            return ColumnType.date
        except ValueError:
            return ColumnType.string
    if DATETIME_RE.match(text):
        try:
            parse_datetime(text)
            return ColumnType.datetime
        except CoerceError:
            return ColumnType.string
    return ColumnType.string
