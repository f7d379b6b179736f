"""Datasets and columns: the types of DESIGN §1 and the naming rules.

Everything here is plain data; storage backends and the decoder read it, nobody
else defines what a column is.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pushbase.errors import PushbaseError

DATASET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_COLUMN_NAME = 128
MAX_COLUMNS = 1000
# Names the engines keep for their own columns: PostgreSQL's system columns and DuckDB's
# rowid. A table cannot hold them (PostgreSQL) or they would hide the engine's (DuckDB), so
# they are refused, case-insensitively as column names are compared.
RESERVED_COLUMN_NAMES = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid", "rowid"})


class ColumnType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"
    date = "date"
    datetime = "datetime"
    json = "json"


class UnknownFields(StrEnum):
    reject = "reject"
    ignore = "ignore"
    evolve = "evolve"


class WriteMethod(StrEnum):
    insert = "insert"
    upsert = "upsert"
    replace = "replace"
    delete = "delete"
    delete_all = "delete_all"


def check_dataset_id(value: str) -> str:
    if not isinstance(value, str) or not DATASET_ID_RE.match(value):
        raise PushbaseError(
            "invalid_dataset_id",
            "dataset id must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
            400,
            {"id": value if isinstance(value, str) else repr(value)},
        )
    return value


def check_column_name(value: str) -> str:
    """The rules for a name given to a new column (create, PATCH, evolve)."""
    _check_name_shape(value)
    if value.casefold() in RESERVED_COLUMN_NAMES:
        raise PushbaseError(
            "reserved_column_name",
            f"column name {value!r} is reserved by the storage engine; choose another",
            400,
            {"column": value},
        )
    return value


def _check_name_shape(value: str) -> str:
    """What every stored name satisfies. Reserved names are checked only where a column
    is added, so a catalog written before they were refused still loads."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_COLUMN_NAME:
        raise PushbaseError(
            "invalid_column_name",
            f"column names must be 1 to {MAX_COLUMN_NAME} characters",
            400,
            {"column": value if isinstance(value, str) else repr(value)},
        )
    if _CONTROL_RE.search(value):
        raise PushbaseError(
            "invalid_column_name",
            "column names may not contain control characters",
            400,
            {"column": value},
        )
    return value


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    name: str
    type: ColumnType = ColumnType.string
    nullable: bool = True
    format: str | None = Field(
        default=None, description="for date/datetime: a strftime pattern, `epoch_s` or `epoch_ms`"
    )
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name_shape(value)

    @model_validator(mode="after")
    def _format_only_for_dates(self) -> Column:
        if self.format is not None and self.type not in (ColumnType.date, ColumnType.datetime):
            raise PushbaseError(
                "invalid_column",
                f"column {self.name!r}: format applies to date and datetime columns only",
                400,
            )
        if self.format == "" or (self.format is not None and len(self.format) > 64):
            raise PushbaseError("invalid_column", f"column {self.name!r}: bad format", 400)
        return self


def check_columns(columns: list[Column], unique_key: list[str], stored: int = 0) -> list[Column]:
    """Apply the dataset-level rules: unique names (case-insensitive), a valid key.

    The first `stored` columns are already in the dataset: only the others are checked
    as new names, so a dataset stored with names refused today can still be changed."""
    if len(columns) > MAX_COLUMNS:
        raise PushbaseError("too_many_columns", f"at most {MAX_COLUMNS} columns", 400)
    seen: dict[str, str] = {}
    for index, column in enumerate(columns):
        folded = column.name.casefold()
        if index < stored:
            seen.setdefault(folded, column.name)
            continue
        check_column_name(column.name)
        if folded in seen:
            raise PushbaseError(
                "duplicate_column",
                f"column {column.name!r} clashes with {seen[folded]!r} (case-insensitive)",
                400,
                {"column": column.name},
            )
        seen[folded] = column.name
    by_name = {c.name: c for c in columns}
    if len(set(unique_key)) != len(unique_key):
        raise PushbaseError("invalid_unique_key", "unique_key repeats a column", 400)
    for name in unique_key:
        column = by_name.get(name)
        if column is None:
            raise PushbaseError(
                "invalid_unique_key",
                f"unique_key names {name!r}, which is not a column",
                400,
                {"column": name},
            )
        if column.type is ColumnType.json:
            raise PushbaseError(
                "invalid_unique_key",
                f"json column {name!r} cannot be part of the unique key",
                400,
                {"column": name},
            )
        column.nullable = False
    return columns


DatasetId = Annotated[str, Field(pattern=DATASET_ID_RE.pattern)]


class Dataset(BaseModel):
    """The catalog entry of one dataset; `row_count` is filled in when shown."""

    id: str
    name: str
    description: str | None = None
    columns: list[Column]
    unique_key: list[str] = []
    unknown_fields: UnknownFields = UnknownFields.reject
    row_count: int | None = None
    created_at: datetime
    updated_at: datetime

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    def find_column(self, name: str) -> Column | None:
        """Look a column up case-insensitively, as names are unique that way."""
        folded = name.casefold()
        for column in self.columns:
            if column.name.casefold() == folded:
                return column
        return None

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
