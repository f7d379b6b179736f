"""Row errors, and how pushed text and values are shown in them (DESIGN §2, §10.1).

A row error repeats what was pushed: a field name, a value, a line that is not JSON.
What was pushed may be huge (a 450,000-character name), not JSON-safe (an integer
beyond 64 bits, NaN, a lone surrogate) or both; a job document must stay small and
encodable whatever it holds, so everything a row error carries is cut to a limit and
made JSON-safe here, the one place that knows how.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_TEXT_LIMIT = 200
_MORE = "…"
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
_DECIMAL_BITS = 10_000  # ints longer than this are not turned into decimal text (slow, refused)


def cut(text: str, limit: int = DEFAULT_TEXT_LIMIT) -> str:
    """`text` at most `limit` characters long, marked when shortened."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + _MORE


def safe_text(text: str, limit: int = DEFAULT_TEXT_LIMIT) -> str:
    """Cut, and lone surrogates (from invalid UTF-8 or a `\\ud800` escape) as `\\ud800`
    text: UTF-8 cannot encode them, so neither can a JSON encoder."""
    text = cut(text, limit)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def int_text(value: int) -> str:
    if value.bit_length() > _DECIMAL_BITS:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


def shown(value: Any, limit: int = 60) -> str:
    """A value as a message quotes it: repr, short, never failing (huge ints)."""
    if isinstance(value, str):
        return repr(cut(value, limit))
    if isinstance(value, int) and not isinstance(value, bool):
        return cut(int_text(value), limit)
    if isinstance(value, float):
        return repr(value)
    return cut(_json_text(value, limit + 1), limit)


def json_safe(value: Any, limit: int = DEFAULT_TEXT_LIMIT) -> Any:
    """`value` as a job document may hold it: JSON-encodable and at most about `limit`
    characters. Integers beyond 64 bits and non-finite floats travel as text; an object
    or array stays one when its JSON fits in `limit`, else it becomes its cut JSON text."""
    if isinstance(value, _SCALARS):
        return _scalar(value, limit)
    if isinstance(value, dict | list | tuple):
        text = _json_text(value, limit + 1)
        return orjson.loads(text) if len(text) <= limit else cut(text, limit)
    return safe_text(str(value), limit)


_SCALARS = (type(None), bool, int, float, str, bytes, bytearray, memoryview)


def _scalar(value: Any, limit: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return safe_text(value, limit)
    if isinstance(value, int):
        return value if INT64_MIN <= value <= UINT64_MAX else cut(int_text(value), limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return safe_text(bytes(value[: limit * 4]).decode("utf-8", "replace"), limit)


class _Full(Exception):
    pass


def _json_text(value: Any, budget: int) -> str:
    """JSON text of `value`, built only up to `budget` characters (a value may be huge)."""
    out: list[str] = []
    left = [budget]

    def put(piece: str) -> None:
        out.append(piece)
        left[0] -= len(piece)
        if left[0] <= 0:
            raise _Full

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            put("{")
            for number, (key, inner) in enumerate(item.items()):
                put(("," if number else "") + _atom(str(key), left[0]) + ":")
                walk(inner)
            put("}")
        elif isinstance(item, list | tuple):
            put("[")
            for number, inner in enumerate(item):
                if number:
                    put(",")
                walk(inner)
            put("]")
        else:
            put(_atom(item, left[0]))

    with contextlib.suppress(_Full, RecursionError):
        walk(value)
    return "".join(out)


def _atom(item: Any, budget: int) -> str:
    budget = max(1, budget)
    safe = _scalar(item, budget) if isinstance(item, _SCALARS) else safe_text(str(item), budget)
    return orjson.dumps(safe).decode()


@dataclass
class RowError:
    row: int
    column: str | None
    code: str
    message: str
    value: Any = None

    def bounded(self, limit: int = DEFAULT_TEXT_LIMIT) -> RowError:
        """This error with its text cut and its value JSON-safe (idempotent)."""
        column = None if self.column is None else safe_text(self.column, limit)
        return RowError(
            self.row,
            column,
            self.code,
            safe_text(self.message, limit),
            json_safe(self.value, limit),
        )

    def to_dict(self, limit: int = DEFAULT_TEXT_LIMIT) -> dict[str, Any]:
        bounded = self.bounded(limit)
        return {
            "row": bounded.row,
            "column": bounded.column,
            "code": bounded.code,
            "message": bounded.message,
            "value": bounded.value,
        }


def safe_error_dict(error: Any, limit: int = DEFAULT_TEXT_LIMIT) -> dict[str, Any]:
    """A stored row error (a dict, perhaps from before errors were made safe) made safe."""
    if not isinstance(error, dict):
        return {"row": None, "column": None, "code": "invalid_value", "message": "",
                "value": json_safe(error, limit)}  # fmt: skip
    row = error.get("row")
    column = error.get("column")
    return {
        "row": row if isinstance(row, int) and INT64_MIN <= row <= UINT64_MAX else None,
        "column": None if column is None else _as_text(column, limit),
        "code": _as_text(error.get("code", ""), limit),
        "message": _as_text(error.get("message", ""), limit),
        "value": json_safe(error.get("value"), limit),
    }


def _as_text(value: Any, limit: int) -> str:
    safe = json_safe(value, limit)
    return safe if isinstance(safe, str) else orjson.dumps(safe).decode()
