"""JSON rendering with orjson: datetimes as ISO-8601 UTC with `Z`, json columns verbatim."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
from fastapi.responses import Response

from pushbase.schema import ColumnType, Dataset

OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=OPTIONS)


def table_rows(table: pa.Table, dataset: Dataset) -> list[dict[str, Any]]:
    """Arrow rows as dicts; json columns embedded as JSON, not as strings."""
    json_columns = [c.name for c in dataset.columns if c.type is ColumnType.json]
    rows = table.to_pylist()
    if json_columns:
        for row in rows:
            for name in json_columns:
                if row.get(name) is not None:
                    row[name] = orjson.Fragment(row[name])
    return rows
