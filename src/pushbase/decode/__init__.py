"""Payload bytes → a typed Arrow table of valid rows, plus the row errors.

`decode_payload` is what a worker calls; it is the only place that knows how a
record's fields map onto a dataset's columns (flattening, unknown-field policy,
key and nullability rules).
"""

from pushbase.decode.batch import DecodedBatch, DecodeOptions, RowError, decode_payload
from pushbase.decode.formats import PayloadFormat, format_for, is_gzip

__all__ = [
    "DecodeOptions",
    "DecodedBatch",
    "PayloadFormat",
    "RowError",
    "decode_payload",
    "format_for",
    "is_gzip",
]
