"""Records → columns → coerced Arrow table, with per-row errors (DESIGN §1, §2)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pushbase.decode.coerce import coerce_column
from pushbase.decode.formats import PayloadFormat, inflate, parse_csv, parse_json, parse_ndjson
from pushbase.decode.known_fields import known_field_columns
from pushbase.infer import infer_type
from pushbase.schema import Column, Dataset, UnknownFields, WriteMethod

ROW_COLUMN = "__row"  # payload index of each row, carried next to the data


@dataclass
class RowError:
    row: int
    column: str | None
    code: str
    message: str
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "column": self.column,
            "code": self.code,
            "message": self.message,
            "value": self.value,
        }


@dataclass
class DecodedBatch:
    """The valid rows of one payload, typed, ready for a store to write.

    `table` holds the dataset columns that the payload mentions plus `__row`.
    `present[name]` is set for upserts when some records omit `name`: True where
    the record carried the field (absent fields keep the stored value).
    """

    table: pa.Table
    present: dict[str, pa.Array]
    errors: list[RowError]
    received: int
    ignored_fields: int = 0
    new_columns: list[Column] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len({e.row for e in self.errors})


class DecodeOptions(BaseModel):
    """How a payload maps onto columns beyond the plain rules; set by dialects.

    `columns`: records are arrays, positional in this column order.
    `constants`: a value given to every row for these columns.
    `empty_is_absent`: on upsert, an empty CSV cell keeps the stored value
    instead of writing null.
    `drop`: payload fields (CSV columns, top-level record fields) dropped before
    they meet the schema: neither written, nor rejected, nor counted as ignored.
    """

    columns: list[str] | None = None
    constants: dict[str, Any] = {}
    empty_is_absent: bool = False
    drop: list[str] = []


def decode_payload(
    data: bytes,
    fmt: PayloadFormat,
    gzip: bool,
    dataset: Dataset,
    method: WriteMethod,
    max_inflated: int,
    options: DecodeOptions | None = None,
) -> DecodedBatch:
    options = options or DecodeOptions()
    if method is WriteMethod.upsert and not dataset.unique_key:
        method = WriteMethod.insert  # upsert appends without a key: nothing to merge with
    if gzip:
        data = inflate(data, max_inflated)
    if fmt is PayloadFormat.csv:
        table = parse_csv(data)
        dropped = set(options.drop)
        raw: dict[str, Any] = {
            name: table.column(name).combine_chunks()
            for name in table.column_names
            if name not in dropped
        }
        unknown = {n: raw.pop(n).to_pylist() for n in list(raw) if dataset.column(n) is None}
        present: dict[str, pa.Array] = {}
        if options.empty_is_absent and method is WriteMethod.upsert:
            present = {
                name: _non_empty(array)
                for name, array in raw.items()
                if name not in dataset.unique_key
            }
        _add_constants(raw, options, table.num_rows)
        return _build(raw, present, table.num_rows, [], dataset, method, unknown)
    if options.columns is None and not options.drop:
        known = known_field_columns(data, fmt, dataset)
        if known is not None:
            raw, present, received = known
            present = present if method is WriteMethod.upsert else {}  # as in _from_records
            _add_constants(raw, options, received)
            return _build(raw, present, received, [], dataset, method)
    records = parse_json(data) if fmt is PayloadFormat.json else parse_ndjson(data)
    del data  # the caller holds no other reference: free the raw bytes before building columns
    errors: list[RowError] = []
    if options.columns is not None:
        records = _positional(records, options.columns, errors)
    return _from_records(records, dataset, method, options, errors)


def _non_empty(array: pa.Array) -> pa.Array:
    if pa.types.is_string(array.type):
        return pc.fill_null(pc.not_equal(array, ""), False)
    return array.is_valid()


def _add_constants(raw: dict[str, Any], options: DecodeOptions, rows: int) -> None:
    for name, value in options.constants.items():
        raw[name] = [value] * rows


def _positional(records: list[Any], names: list[str], errors: list[RowError]) -> list[Any]:
    """Arrays in `names` order → records; a row of the wrong shape is a row error."""
    width = len(names)
    objects: list[Any] = []
    for row, record in enumerate(records):
        if isinstance(record, list) and len(record) == width:
            objects.append(dict(zip(names, record, strict=True)))
        else:
            message = f"each row must be an array of {width} values, in column order"
            errors.append(RowError(row, None, "wrong_shape", message, record))
            objects.append(_NOT_A_ROW)
    return objects


def _from_records(
    records: list[Any],
    dataset: Dataset,
    method: WriteMethod,
    options: DecodeOptions,
    errors: list[RowError],
) -> DecodedBatch:
    objects = [r if isinstance(r, dict) else None for r in records]
    if None in objects:
        for row, record in enumerate(records):
            if not isinstance(record, dict) and record is not _NOT_A_ROW:
                message = "each record must be a JSON object"
                errors.append(RowError(row, None, "not_an_object", message, record))
    raw: dict[str, Any] = {}
    unknown: dict[str, list[Any]] = {}
    present: dict[str, pa.Array] = {}
    _split_fields(objects, "", dataset, raw, unknown, present)
    for name in options.drop:
        raw.pop(name, None)
        unknown.pop(name, None)
        present.pop(name, None)
    # Only an upsert tells absent from null; only columns need a mask.
    present = {n: m for n, m in present.items() if n in raw and method is WriteMethod.upsert}
    _add_constants(raw, options, len(records))
    return _build(raw, present, len(records), errors, dataset, method, unknown)


_NOT_A_ROW = object()  # stands for a rejected positional row
_ABSENT = object()


def _split_fields(
    objects: list[dict[str, Any] | None],
    prefix: str,
    dataset: Dataset,
    raw: dict[str, Any],
    unknown: dict[str, list[Any]],
    present: dict[str, pa.Array],
) -> None:
    """Sort each field path into dataset columns (`raw`) or unknown fields.

    Works a column at a time: one list per field, no loop over a record's fields.
    `present[path]` is recorded where some records lack the field (absent is not null).
    """
    holes = None in objects
    keys = set().union(*(o for o in objects if o is not None)) if holes else set().union(*objects)
    # When every record carries every key, no field is absent anywhere at this level.
    complete = not holes and set(map(len, objects)) <= {len(keys)}
    for key in sorted(keys):
        path = f"{prefix}{key}"
        if complete:
            values = list(map(itemgetter(key), objects))
        else:
            values = [o.get(key, _ABSENT) if o is not None else _ABSENT for o in objects]
            present[path] = pa.array([v is not _ABSENT for v in values], pa.bool_())
            values = [None if v is _ABSENT else v for v in values]
        if dataset.column(path) is not None:
            raw[path] = values
            continue
        has_children = any(c.name.startswith(f"{path}.") for c in dataset.columns)
        nested = [v if isinstance(v, dict) else None for v in values]
        if has_children or nested.count(None) < len(nested):
            _split_fields(nested, f"{path}.", dataset, raw, unknown, present)
            leftovers = [None if isinstance(v, dict) else v for v in values]
            if any(v is not None for v in leftovers):
                unknown[path] = leftovers
        else:
            unknown[path] = values


def _build(
    raw: dict[str, Any],
    present: dict[str, pa.Array],
    received: int,
    errors: list[RowError],
    dataset: Dataset,
    method: WriteMethod,
    unknown: dict[str, list[Any]] | None = None,
) -> DecodedBatch:
    unknown = dict(unknown or {})
    ignored = 0
    new_columns: list[Column] = []
    keyed = set(dataset.unique_key)
    if method is WriteMethod.delete:
        # Only the key matters; other fields are ignored, never rejected.
        raw = {k: v for k, v in raw.items() if k in keyed}
        unknown = {}
    elif unknown:
        policy = dataset.unknown_fields
        if policy is UnknownFields.reject:
            for name, values in unknown.items():
                for row, value in enumerate(values):
                    if value is not None:
                        message = f"field {name!r} is not a column of this dataset"
                        errors.append(RowError(row, name, "unknown_column", message, value))
        elif policy is UnknownFields.ignore:
            ignored = sum(sum(v is not None for v in values) for values in unknown.values())
        else:
            for name, values in unknown.items():
                column = Column(name=name, type=infer_type(values))
                new_columns.append(column)
                raw[name] = values
    columns = {c.name: c for c in [*dataset.columns, *new_columns]}
    arrays: dict[str, pa.Array] = {}
    for name, values in raw.items():
        column = columns[name]
        result = coerce_column(values, column)
        arrays[name] = result.array
        for row, code, message in result.errors:
            errors.append(RowError(row, name, code, message, _value_at(values, row)))
    _check_required(arrays, present, received, dataset, method, errors, columns)
    rejected = sorted({e.row for e in errors})
    table = pa.table({**arrays, ROW_COLUMN: _row_numbers(received)})
    if rejected:
        keep = pc.invert(pc.is_in(table.column(ROW_COLUMN), pa.array(rejected, pa.int64())))
        table = table.filter(keep)
        present = {name: mask.filter(keep.combine_chunks()) for name, mask in present.items()}
    errors.sort(key=lambda e: (e.row, e.column or ""))
    return DecodedBatch(table, present, errors, received, ignored, new_columns)


SHARED_ROW_NUMBERS = 1 << 16


@functools.cache
def _shared_row_numbers() -> pa.Array:
    # Built on first use, not on import: a conversion at import would load pandas (when
    # installed) into a decoding process before it can refuse it (`jobs.decoding`).
    return pa.array(range(SHARED_ROW_NUMBERS), pa.int64())


def _row_numbers(count: int) -> pa.Array:
    """0 … count-1, copied out of one shared array: microseconds, where building 4,500
    from a `range` takes 0.3 ms. A copy, not a slice: a pickled slice carries the whole
    shared buffer to the process that receives it."""
    if count > SHARED_ROW_NUMBERS:
        return pa.array(range(count), pa.int64())
    return pa.concat_arrays([_shared_row_numbers().slice(0, count)])


def _value_at(values: Any, row: int) -> Any:
    value = values[row]
    return value.as_py() if isinstance(value, pa.Scalar) else value


def _check_required(
    arrays: dict[str, pa.Array],
    present: dict[str, pa.Array],
    received: int,
    dataset: Dataset,
    method: WriteMethod,
    errors: list[RowError],
    columns: dict[str, Column],
) -> None:
    """Key columns must be given and non-null; non-nullable columns never null.

    For upsert an absent non-key field is fine (the stored value stays); a new
    row missing one is caught by the store, which alone knows which keys exist.
    """
    not_objects = {e.row for e in errors if e.code in ("not_an_object", "wrong_shape")}
    for name in dataset.unique_key:
        array = arrays.get(name)
        if array is None:
            for row in range(received):
                if row not in not_objects:
                    message = f"key column {name!r} is missing"
                    errors.append(RowError(row, name, "missing_key", message))
        elif array.null_count:
            already = not_objects | {e.row for e in errors if e.column == name}
            for row in pc.indices_nonzero(array.is_null()).to_pylist():
                if row not in already:
                    message = f"key column {name!r} is missing or null"
                    errors.append(RowError(row, name, "missing_key", message))
    if method is WriteMethod.delete:
        return
    for column in columns.values():
        if column.nullable or column.name in dataset.unique_key:
            continue
        array = arrays.get(column.name)
        if array is None:
            if method is not WriteMethod.upsert:
                for row in sorted(set(range(received)) - not_objects):
                    message = f"column {column.name!r} is required"
                    errors.append(RowError(row, column.name, "missing_value", message))
            continue
        if not array.null_count:
            continue
        nulls = array.is_null()
        mask = present.get(column.name)
        if mask is not None:  # absent is allowed on upsert, explicit null is not
            nulls = pc.and_(nulls, mask)
        failed_rows = not_objects | {e.row for e in errors if e.column == column.name}
        for row in pc.indices_nonzero(nulls).to_pylist():
            if row not in failed_rows:
                message = f"column {column.name!r} may not be null"
                errors.append(RowError(row, column.name, "null_not_allowed", message))
