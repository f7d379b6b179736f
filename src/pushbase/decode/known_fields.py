"""The common JSON push, decoded straight into columns: flat records of known fields.

Most bulk pushes are an array (or NDJSON lines) of flat objects whose fields are all
columns of the dataset. msgspec decodes those into one Struct per record whose fields
are the columns, in C: no dict per record, no key strings, no pass over every record
to learn its fields (an unknown field stops the decode). The values are the same
Python objects orjson would give, so `batch._build` coerces and checks them by the
very same rules.

Anything else returns None and the general path (`batch._from_records`) decodes the
payload and explains every error: an unknown or nested field, a row that is not an
object, an enveloped body (`{"data": [...]}`), invalid JSON.
"""

from __future__ import annotations

import functools
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa

from pushbase.decode.formats import PayloadFormat
from pushbase.schema import ColumnType, Dataset

_ABSENT = msgspec.UNSET


Decoders = tuple[msgspec.json.Decoder, msgspec.json.Decoder]  # array of records, one record


@functools.lru_cache(maxsize=64)
def _decoders(names: tuple[str, ...]) -> tuple[Decoders, Decoders] | None:
    """Decoders for records with these fields: (every field required, any may be absent)."""
    rename = {f"f{i}": name for i, name in enumerate(names)}
    pairs = []
    for fields in (
        [(f"f{i}", Any) for i in range(len(names))],
        [(f"f{i}", Any, _ABSENT) for i in range(len(names))],
    ):
        try:
            record = msgspec.defstruct(
                "Record",
                fields,
                rename=rename,
                forbid_unknown_fields=True,
                gc=False,  # records hold no cycles: keep them out of the collector's way
            )
        except ValueError:  # msgspec refuses field names with `"`, `\\` or control characters
            return None
        pairs.append((msgspec.json.Decoder(list[record]), msgspec.json.Decoder(record)))
    return pairs[0], pairs[1]


def _decode(data: bytes, fmt: PayloadFormat, decoders: Decoders) -> list[Any]:
    many, one = decoders
    return many.decode(data) if fmt is PayloadFormat.json else one.decode_lines(data)


def known_field_columns(
    data: bytes, fmt: PayloadFormat, dataset: Dataset
) -> tuple[dict[str, list[Any]], dict[str, pa.Array], int] | None:
    """(values per column, presence masks, records) or None for the general path.

    Like the general path, a column appears only if some record has the field, and a
    presence mask (True where the record has the field) only if some record lacks it.
    """
    columns = dataset.columns
    if not columns or any("." in c.name or c.type is ColumnType.json for c in columns):
        return None  # nested fields are flattened, JSON values re-encoded: general path
    decoders = _decoders(tuple(c.name for c in columns))
    if decoders is None:
        return None
    complete, partial = decoders
    # Most pushes carry every field in every record. Decoded with every field required,
    # no column needs a search for absent values (a tenth of the decode); a record that
    # lacks one stops that decode where it stands, and the payload is decoded again
    # with fields allowed to be absent.
    absent_possible = False
    try:
        records = _decode(data, fmt, complete)
    except msgspec.ValidationError:
        absent_possible = True
        try:
            records = _decode(data, fmt, partial)
        except (msgspec.MsgspecError, ValueError):
            return None
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
        return None
    if not records:
        return None
    raw: dict[str, list[Any]] = {}
    present: dict[str, pa.Array] = {}
    for position, name in sorted(enumerate(c.name for c in columns), key=lambda item: item[1]):
        values = list(map(attrgetter(f"f{position}"), records))
        if absent_possible and _ABSENT in values:
            has = [v is not _ABSENT for v in values]
            if not any(has):
                continue
            present[name] = pa.array(has, pa.bool_())
            values = [None if v is _ABSENT else v for v in values]
        raw[name] = values
    return raw, present, len(records)
