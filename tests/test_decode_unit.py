"""Unit tests of decode/ and the job document's row errors, without an app (fast)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import orjson
import pytest

from pushbase.decode import DecodeOptions, PayloadFormat, decode_payload
from pushbase.decode.batch import DecodeLimits
from pushbase.decode.formats import parse_csv, parse_ndjson, sniff_delimiter, split_header
from pushbase.decode.rowerrors import RowError, cut, json_safe, safe_error_dict, shown
from pushbase.errors import PushbaseError
from pushbase.jobs.decoding import Decoder, decode_job
from pushbase.jobs.model import Job, JobStatus, RowErrorLimits, record_row_errors
from pushbase.schema import Column, Dataset, UnknownFields, WriteMethod

NOW = datetime.now(UTC)


def dataset(*columns: Column, key: tuple[str, ...] = (), unknown: str = "reject") -> Dataset:
    return Dataset(
        id="t", name="t", columns=list(columns), unique_key=list(key),
        unknown_fields=UnknownFields(unknown), created_at=NOW, updated_at=NOW,
    )  # fmt: skip


KEYED = dataset(Column(name="id", type="integer"), Column(name="s"), key=("id",))


def decode(data: bytes, fmt: PayloadFormat, ds: Dataset = KEYED, **kw):
    method = kw.pop("method", WriteMethod.upsert)
    return decode_payload(data, fmt, False, ds, method, 1 << 30, **kw)


# -- JSON-safe, bounded values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10**30, str(10**30)),
        (2**64 - 1, 2**64 - 1),
        (-(2**63), -(2**63)),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        ("a\ud800b", "a\\ud800b"),
        ("nul\x00", "nul\x00"),
        (b"\xff\xfe", "\ufffd\ufffd"),
        ({"a": [10**30, float("inf")]}, {"a": [str(10**30), "inf"]}),
        (None, None),
        (True, True),
    ],
)
def test_json_safe_values_encode(value, expected):
    safe = json_safe(value)
    assert safe == expected
    orjson.dumps(safe)


def test_json_safe_cuts_long_text_and_large_structures():
    assert len(json_safe("x" * 10_000)) == 200
    big = json_safe({"k": list(range(100_000))}, 50)
    assert isinstance(big, str) and len(big) == 50 and big.startswith('{"k":[0,1,')
    assert len(json_safe(10**5000)) <= 200  # int() refuses to write it in decimal
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    orjson.dumps(json_safe(deep))


def test_cut_and_shown():
    assert cut("abc", 3) == "abc" and cut("abcd", 3) == "ab…"
    assert shown("x" * 100, 10) == repr("x" * 9 + "…")
    assert shown(10**5000).startswith("an integer of")


def test_a_row_error_is_bounded_everywhere():
    error = RowError(1, "c" * 1000, "code", "m" * 1000, 10**40).to_dict(100)
    assert len(error["column"]) == 100 and len(error["message"]) == 100
    assert error["value"] == str(10**40)


def test_a_stored_row_error_of_any_shape_is_made_safe():
    safe = safe_error_dict({"row": 10**30, "column": 5, "value": float("nan")})
    orjson.dumps(safe)
    assert safe["row"] is None and safe["column"] == "5" and safe["value"] == "nan"
    orjson.dumps(safe_error_dict("not a dict"))


# -- the job document: bounded errors, outcome -----------------------------------------------


def job(**kw) -> Job:
    return Job(dataset_id="t", method=WriteMethod.insert, **kw)


def test_record_row_errors_keeps_the_document_under_its_cap():
    errors = [RowError(i, "c" * 500, "invalid_value", "m" * 500, "v" * 500) for i in range(100)]
    target = job()
    limits = RowErrorLimits(max_row_errors=100, max_job_document_bytes=16 * 1024)
    record_row_errors(target, errors, limits)
    assert target.errors_total == 100 and target.stats.failed == 100
    assert 0 < len(target.errors) < 100
    assert len(orjson.dumps(target.document())) <= 16 * 1024
    assert [e["row"] for e in target.errors] == list(range(len(target.errors)))


def test_record_row_errors_keeps_at_most_max_row_errors():
    target = job()
    record_row_errors(target, [RowError(i, None, "x", "m") for i in range(300)], RowErrorLimits())
    assert len(target.errors) == 100 and target.errors_total == 300


def test_a_job_read_back_with_an_unsafe_error_is_made_safe():
    stored = job(errors=[{"row": 0, "column": "c", "code": "x", "message": "m"}])
    text = stored.model_dump_json().replace('"value":null', '"value":1' + "0" * 30)
    loaded = Job.model_validate_json(text)
    orjson.dumps(loaded.document())
    assert loaded.errors[0]["value"] == "1" + "0" * 30


@pytest.mark.parametrize(
    ("status", "received", "failed", "outcome"),
    [
        (JobStatus.queued, 0, 0, None),
        (JobStatus.running, 0, 0, None),
        (JobStatus.cancelled, 0, 0, None),
        (JobStatus.failed, 5, 0, "rejected"),
        (JobStatus.succeeded, 5, 0, "complete"),
        (JobStatus.succeeded, 0, 0, "complete"),
        (JobStatus.succeeded, 5, 2, "partial"),
        (JobStatus.succeeded, 5, 5, "rejected"),
    ],
)
def test_outcome(status, received, failed, outcome):
    target = job(status=status)
    target.stats.received, target.stats.failed = received, failed
    assert target.document()["outcome"] == outcome


# -- formats ------------------------------------------------------------------------------


def test_parse_ndjson_keeps_malformed_lines_in_place():
    records = parse_ndjson(b'{"a": 1}\n\n{"a": \n5\n{"a": 2}\n')
    assert records[0] == {"a": 1} and records[3] == {"a": 2}
    assert records[1].text == '{"a": ' and "line 3" in records[1].reason
    assert records[2].text == "5"


def test_parse_csv_numbers_malformed_records_across_blocks_and_quoted_newlines():
    lines = [b"a,b"]
    bad = []
    for i in range(60_000):
        if i % 7_919 == 0:
            lines.append(b"%d" % i)  # too few fields
            bad.append(i)
        elif i % 3 == 0:
            lines.append(b'"%d\nx",%d' % (i, i))  # a record over two lines
        else:
            lines.append(b"%d,%d" % (i, i))
    table, malformed = parse_csv(b"\n".join(lines) + b"\n")
    assert [row for row, _, _ in malformed] == bad
    assert table.num_rows == 60_000 - len(bad)
    assert all(text == str(row) for row, _, text in malformed)


@pytest.mark.parametrize("ragged", [b"7", b"\x80"], ids=["ragged-text", "ragged-invalid-utf8"])
def test_parse_csv_takes_a_record_of_invalid_utf8_out_alone(ragged: bytes):
    body = b"a,b\n1,2\n%s\n4,\xffz\n5,\xe2\x82\xac\n" % ragged
    table, malformed = parse_csv(body)
    assert table.to_pylist() == [{"a": "1", "b": "2"}, {"a": "5", "b": "\u20ac"}]
    assert [(row, message) for row, message, _ in malformed] == [
        (1, "record has 1 fields, the header 2"),
        (2, "record is not valid UTF-8 text"),
    ]
    assert malformed[1][2] == "4,\ufffdz"


def test_a_body_with_its_own_replacement_character_and_invalid_utf8_cannot_be_read():
    with pytest.raises(PushbaseError):
        parse_csv(b"a,b\n\xef\xbf\xbd,1\n\x80\n")


def test_a_header_field_past_pythons_csv_limit():
    header = "a;" + "b" * 200_000
    assert sniff_delimiter(header) == ";"
    assert split_header(header, ";") == ["a", "b" * 200_000]


# -- decode_payload ---------------------------------------------------------------------


def test_csv_malformed_rows_keep_payload_indices():
    batch = decode(b'id,s\n1,a\n2\n3,"c\nc"\n4,d,e\nx,f\n6,g\n', PayloadFormat.csv)
    assert batch.received == 6
    assert [(e.row, e.code) for e in batch.errors] == [
        (1, "malformed_row"), (3, "malformed_row"), (4, "invalid_value"),
    ]  # fmt: skip
    assert batch.rows.to_pylist() == [0, 2, 5]
    assert batch.table.column("id").to_pylist() == [1, 3, 6]


def test_positional_rows_of_the_wrong_shape_keep_their_code():
    body = b'[1, "a"]\n[2]\nnot json\n'
    batch = decode(body, PayloadFormat.ndjson, options=DecodeOptions(columns=["id", "s"]))
    assert [(e.row, e.code) for e in batch.errors] == [(1, "wrong_shape"), (2, "malformed_row")]


def test_the_decoded_table_holds_user_columns_only():
    ds = dataset(Column(name="id", type="integer"), Column(name="__row"))
    batch = decode(b'[{"id": 1, "__row": "hello"}]', PayloadFormat.json, ds)
    assert set(batch.table.column_names) == {"__row", "id"}
    assert batch.table.column("__row").to_pylist() == ["hello"]
    assert batch.rows.to_pylist() == [0]


def test_unknown_field_errors_share_one_name_and_cut_messages():
    name = "n" * 450_000
    body = orjson.dumps([{"id": i, name: i} for i in range(100)])
    batch = decode(body, PayloadFormat.json)
    assert len(batch.errors) == 100
    assert all(len(e.column) <= 200 and len(e.message) <= 200 for e in batch.errors)


def test_evolve_limits_and_refused_names():
    ds = dataset(Column(name="id", type="integer"), key=("id",), unknown="evolve")
    record = {"id": 1, "ID": 2, "x" * 200: 3, "bad\tname": 4, **{f"f{i}": i for i in range(5)}}
    batch = decode(
        orjson.dumps([record]), PayloadFormat.json, ds, limits=DecodeLimits(new_columns=2)
    )
    assert [c.name for c in batch.new_columns] == ["f0", "f1"]
    assert sorted({e.code for e in batch.errors}) == [
        "duplicate_column", "invalid_column_name", "too_many_new_columns",
    ]  # fmt: skip
    assert len(batch.errors) == 6


def test_records_without_fields_are_rows_of_nulls():
    ds = dataset(Column(name="a"), Column(name="b", type="integer"))
    batch = decode(b"[{}, {}]", PayloadFormat.json, ds, method=WriteMethod.insert)
    assert batch.table.num_rows == 2 and not batch.errors


def test_a_decode_past_its_memory_limit_fails_with_payload_too_large():
    """Needs a process of its own: the limit holds for the rest of its life."""
    ds = dataset(Column(name="a", type="integer"), unknown="ignore")
    body = gzip.compress(b"[" + b",".join([b'{"a":1,"b":2}'] * 3_000_000) + b"]", 6)
    target = Job(dataset_id="t", method=WriteMethod.insert, content_type="application/json",
                 content_encoding="gzip", bytes=len(body))  # fmt: skip
    decoder = Decoder(1, 1 << 30, memory_mb=256)
    with pytest.raises(Exception) as caught:
        decoder.decode(target, ds, body)
    assert getattr(caught.value, "code", None) == "payload_too_large"
    # Within the limit, the same pool (or its successor) decodes as before.
    small = gzip.compress(b'[{"a": 1}]')
    ok = Job(dataset_id="t", method=WriteMethod.insert, content_type="application/json",
             content_encoding="gzip", bytes=len(small))  # fmt: skip
    assert decoder.decode(ok, ds, small).received == 1
    assert decode_job(ok, ds, small, 1 << 30).received == 1
