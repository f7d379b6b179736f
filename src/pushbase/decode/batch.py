"""Records → columns → coerced Arrow table, with per-row errors (DESIGN §1, §2)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pushbase.decode.coerce import ARROW_TYPES, coerce_column
from pushbase.decode.formats import (
    Malformed,
    PayloadFormat,
    inflate,
    invalid_payload,
    parse_csv,
    parse_json,
    parse_ndjson,
)
from pushbase.decode.known_fields import known_field_columns
from pushbase.decode.rowerrors import DEFAULT_TEXT_LIMIT, RowError, cut, json_safe
from pushbase.errors import PushbaseError
from pushbase.infer import infer_type
from pushbase.schema import (
    MAX_COLUMNS,
    Column,
    Dataset,
    UnknownFields,
    WriteMethod,
    check_column_name,
)

MALFORMED = "malformed_row"  # a record that cannot be read: not JSON, not an object, ragged
# Rows that are not records at all: no other check reports them again.
_NOT_RECORDS = frozenset({MALFORMED, "wrong_shape"})


@dataclass
class DecodedBatch:
    """The valid rows of one payload, typed, ready for a store to write.

    `table` holds the dataset columns that the payload mentions, and nothing else: a
    user column may have any name. `rows[i]` is the payload index of the table's row i.
    `present[name]` is set for upserts when some records omit `name`: True where
    the record carried the field (absent fields keep the stored value).
    """

    table: pa.Table
    present: dict[str, pa.Array]
    errors: list[RowError]
    received: int
    ignored_fields: int = 0
    new_columns: list[Column] = field(default_factory=list)
    rows: pa.Array = field(default_factory=lambda: pa.array([], pa.int64()))

    @property
    def failed(self) -> int:
        return len({e.row for e in self.errors})


@dataclass(frozen=True)
class DecodeLimits:
    """What one payload may cost in row errors and new columns (the settings of the
    same names)."""

    text: int = DEFAULT_TEXT_LIMIT  # max_row_errors_text
    new_columns: int = 100  # max_new_columns_per_push


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
    limits: DecodeLimits | None = None,
) -> DecodedBatch:
    options = options or DecodeOptions()
    limits = limits or DecodeLimits()
    if method is WriteMethod.upsert and not dataset.unique_key:
        method = WriteMethod.insert  # upsert appends without a key: nothing to merge with
    if gzip:
        data = inflate(data, max_inflated)
    if fmt is PayloadFormat.csv:
        table, malformed = parse_csv(data)
        del data
        errors: list[RowError] = []
        if malformed:
            table = _with_malformed(table, malformed, errors)
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
        return _build(raw, present, table.num_rows, errors, dataset, method, limits, unknown)
    if options.columns is None and not options.drop:
        known = known_field_columns(data, fmt, dataset)
        if known is not None:
            raw, present, received = known
            present = present if method is WriteMethod.upsert else {}  # as in _from_records
            _add_constants(raw, options, received)
            return _build(raw, present, received, [], dataset, method, limits)
    if fmt is PayloadFormat.json:
        records = parse_json(data)
    else:
        records = parse_ndjson(data, objects=options.columns is None)
    del data  # the caller holds no other reference: free the raw bytes before building columns
    errors = []
    if options.columns is not None:
        records = _positional(records, options.columns, errors)
    return _from_records(records, dataset, method, options, errors, limits)


def _with_malformed(
    table: pa.Table, malformed: list[tuple[int, str, str]], errors: list[RowError]
) -> pa.Table:
    """The well-formed records back in their payload positions, a null row where each
    malformed record stood (it fails with `malformed_row`, the others keep their index)."""
    received = table.num_rows + len(malformed)
    positions = [row for row, _, _ in malformed]
    if positions != sorted(set(positions)) or not 0 <= positions[0] <= positions[-1] < received:
        raise invalid_payload("CSV records cannot be numbered")
    bad = pc.is_in(_row_numbers(received), pa.array(positions, pa.int64()))
    good = pc.invert(bad)
    index = pc.subtract(pc.cumulative_sum(pc.cast(good, pa.int64())), 1)
    table = table.take(pc.if_else(good, index, pa.scalar(None, pa.int64())))
    for row, message, text in malformed:
        errors.append(RowError(row, None, MALFORMED, message, text))
    return table


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
        elif isinstance(record, Malformed):
            objects.append(record)  # reported with the other malformed records
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
    limits: DecodeLimits,
) -> DecodedBatch:
    objects = [r if isinstance(r, dict) else None for r in records]
    if None in objects:
        for row, record in enumerate(records):
            if not isinstance(record, dict) and record is not _NOT_A_ROW:
                errors.append(_malformed(row, record, limits.text))
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
    return _build(raw, present, len(records), errors, dataset, method, limits, unknown)


def _malformed(row: int, record: Any, limit: int) -> RowError:
    """A record that is not a JSON object, its raw text (cut) as the value."""
    if isinstance(record, Malformed):
        return RowError(row, None, MALFORMED, record.reason, cut(record.text, limit))
    text = orjson.dumps(json_safe(record, limit)).decode()
    return RowError(row, None, MALFORMED, "each record must be a JSON object", cut(text, limit))


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
    limits: DecodeLimits,
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
        refused: dict[str, tuple[str, str]] = {}
        if policy is UnknownFields.reject:
            for name in unknown:
                message = f"field {cut(name, limits.text)!r} is not a column of this dataset"
                refused[name] = ("unknown_column", message)
        elif policy is UnknownFields.ignore:
            ignored = sum(sum(v is not None for v in values) for values in unknown.values())
        else:
            new_columns = _new_columns(unknown, dataset, limits, refused)
            for column in new_columns:
                raw[column.name] = unknown[column.name]
        for name, (code, message) in refused.items():
            # The name is one object shared by its errors; the message holds it cut.
            for row, value in enumerate(unknown[name]):
                if value is not None:
                    errors.append(RowError(row, name, code, message, value))
    columns = {c.name: c for c in [*dataset.columns, *new_columns]}
    arrays: dict[str, pa.Array] = {}
    for name, values in raw.items():
        column = columns[name]
        result = coerce_column(values, column)
        arrays[name] = result.array
        for row, code, message in result.errors:
            errors.append(RowError(row, name, code, message, _value_at(values, row)))
    _check_required(arrays, present, received, dataset, method, errors, columns)
    if not arrays and dataset.columns and method is not WriteMethod.delete:
        # Records without a single field (`[{}]`): a row of nulls, in one column's name.
        first = dataset.columns[0]
        arrays[first.name] = pa.nulls(received, ARROW_TYPES[first.type])
    rows = _row_numbers(received)
    table = pa.table(arrays) if arrays else pa.table({})
    rejected = sorted({e.row for e in errors})
    if rejected:
        keep = pc.invert(pc.is_in(rows, pa.array(rejected, pa.int64())))
        rows = rows.filter(keep)
        table = table.filter(keep) if arrays else table
        present = {name: mask.filter(keep) for name, mask in present.items()}
    errors = [e.bounded(limits.text) for e in errors]
    errors.sort(key=lambda e: (e.row, e.column or ""))
    return DecodedBatch(table, present, errors, received, ignored, new_columns, rows)


def _new_columns(
    unknown: dict[str, list[Any]],
    dataset: Dataset,
    limits: DecodeLimits,
    refused: dict[str, tuple[str, str]],
) -> list[Column]:
    """The columns an `evolve` dataset gains from a payload's unknown fields. A field that
    cannot be a column (a refused name, one clashing with a column case-insensitively)
    or one beyond what a push may add goes to `refused`: its values are row errors."""
    taken = {c.name.casefold(): c.name for c in dataset.columns}
    room = min(limits.new_columns, MAX_COLUMNS - len(dataset.columns))
    added: list[Column] = []
    for name, values in unknown.items():
        shown = repr(cut(name, limits.text))
        if name.casefold() in taken:
            other = cut(taken[name.casefold()], limits.text)
            message = f"field {shown} clashes with column {other!r} (names ignore case)"
            refused[name] = ("duplicate_column", message)
            continue
        if len(added) >= room:
            message = f"field {shown} would be a new column beyond the {room} a push may add"
            refused[name] = ("too_many_new_columns", message)
            continue
        try:
            column = Column(name=check_column_name(name), type=infer_type(values))
        except PushbaseError as exc:
            refused[name] = (exc.code, f"field {shown} cannot be a column: {exc.message}")
            continue
        taken[name.casefold()] = name
        added.append(column)
    return added


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
    not_objects = {e.row for e in errors if e.code in _NOT_RECORDS}
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
