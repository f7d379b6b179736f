"""Values are coerced to column types as DESIGN §1 lists; bad values become row errors."""

from __future__ import annotations

import pytest

from conftest import create_dataset, push, rows_of


def one_column(client, type_, **column):
    create_dataset(
        client,
        "t",
        [{"name": "k", "type": "integer"}, {"name": "v", "type": type_, **column}],
        unique_key=["k"],
    )


def stored(client, values, type_, **column):
    """Push each value in its own row; return (stored values, errors by row)."""
    one_column(client, type_, **column)
    job = push(client, "t", [{"k": i, "v": v} for i, v in enumerate(values)])
    assert job["status"] == "succeeded", job
    rows = {r["k"]: r["v"] for r in rows_of(client, "t")}
    errors = {e["row"]: e for e in job["errors"]}
    return [rows.get(i) for i in range(len(values))], errors


@pytest.mark.parametrize(
    ("type_", "given", "expected"),
    [
        ("string", ["a", 1, 2.5, True, None], ["a", "1", "2.5", "true", None]),
        ("integer", [1, 2.0, "42", "-7", None], [1, 2, 42, -7, None]),
        ("number", [1, 2.5, "3.25", "-1e3", None], [1.0, 2.5, 3.25, -1000.0, None]),
        (
            "boolean",
            [True, False, "true", "FALSE", "1", "0", "Yes", "no", 1, 0, None],
            [True, False, True, False, True, False, True, False, True, False, None],
        ),
        ("date", ["2024-02-29", None], ["2024-02-29", None]),
        (
            "json",
            [{"a": [1, {"b": None}]}, [1, 2], "s", 3, None],
            [{"a": [1, {"b": None}]}, [1, 2], "s", 3, None],
        ),
    ],
)
def test_accepted_inputs(client, type_, given, expected):
    values, errors = stored(client, given, type_)
    assert errors == {}
    assert values == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01", "2024-03-01T00:00:00Z"),
        ("2024-03-01 10:11", "2024-03-01T10:11:00Z"),
        ("2024-03-01T10:11", "2024-03-01T10:11:00Z"),
        ("2024-03-01 10:11:12", "2024-03-01T10:11:12Z"),
        ("2024-03-01T10:11:12", "2024-03-01T10:11:12Z"),
        ("2024-03-01T10:11:12.5", "2024-03-01T10:11:12.500000Z"),
        ("2024-03-01 10:11:12.123", "2024-03-01T10:11:12.123000Z"),
        ("2024-03-01T10:11:12.123456", "2024-03-01T10:11:12.123456Z"),
        ("2024-03-01T10:11:12.123456789", "2024-03-01T10:11:12.123456Z"),
        ("2024-03-01T10:11:12Z", "2024-03-01T10:11:12Z"),
        ("2024-03-01 10:11Z", "2024-03-01T10:11:00Z"),
        ("2024-03-01T10:11:12.25Z", "2024-03-01T10:11:12.250000Z"),
        ("2024-03-01T10:11:12+02:00", "2024-03-01T08:11:12Z"),
        ("2024-03-01T10:11:12.5-01:30", "2024-03-01T11:41:12.500000Z"),
        ("2024-03-01T01:00:00+05:00", "2024-02-29T20:00:00Z"),
        (1709287872000, "2024-03-01T10:11:12Z"),  # epoch milliseconds
    ],
)
def test_every_datetime_form_is_accepted_as_utc(client, text, expected):
    values, errors = stored(client, [text], "datetime")
    assert errors == {}
    assert values == [expected]


def test_datetime_forms_mixed_in_one_column(client):
    given = ["2024-03-01", "2024-03-01T10:11:12+02:00", 0, "2024-03-01 10:11:12.123456789"]
    values, errors = stored(client, given, "datetime")
    assert errors == {}
    assert values == [
        "2024-03-01T00:00:00Z",
        "2024-03-01T08:11:12Z",
        "1970-01-01T00:00:00Z",
        "2024-03-01T10:11:12.123456Z",
    ]


@pytest.mark.parametrize(
    ("column", "given", "expected"),
    [
        (
            {"type": "datetime", "format": "%d/%m/%Y %H:%M"},
            "31/01/2024 13:45",
            "2024-01-31T13:45:00Z",
        ),
        ({"type": "datetime", "format": "epoch_s"}, 1700000000, "2023-11-14T22:13:20Z"),
        ({"type": "datetime", "format": "epoch_ms"}, 1700000000123, "2023-11-14T22:13:20.123000Z"),
        ({"type": "date", "format": "%d.%m.%Y"}, "29.02.2024", "2024-02-29"),
    ],
)
def test_column_format(client, column, given, expected):
    column = dict(column)
    type_ = column.pop("type")
    values, errors = stored(client, [given], type_, **column)
    assert errors == {}
    assert values == [expected]


def test_column_format_rejects_other_forms(client):
    values, errors = stored(client, ["2024-01-31", "31/01/2024"], "date", format="%d/%m/%Y")
    assert values == [None, "2024-01-31"]
    assert errors[0]["code"] == "invalid_value" and errors[0]["value"] == "2024-01-31"


@pytest.mark.parametrize(
    ("type_", "bad", "code"),
    [
        ("integer", "4.5", "invalid_value"),
        ("integer", 4.5, "invalid_value"),
        ("integer", "forty", "invalid_value"),
        ("integer", True, "type_mismatch"),
        ("integer", 2**63, "out_of_range"),
        ("integer", {"a": 1}, "type_mismatch"),
        ("number", "abc", "invalid_value"),
        ("number", False, "type_mismatch"),
        ("number", [1], "type_mismatch"),
        ("boolean", "maybe", "invalid_value"),
        ("boolean", 2, "invalid_value"),
        ("date", "2024-02-30", "invalid_value"),
        ("date", "01/02/2024", "invalid_value"),
        ("date", "2024-01-01T10:00:00", "invalid_value"),
        ("datetime", "yesterday", "invalid_value"),
        ("datetime", "2024-13-01T00:00:00", "invalid_value"),
        ("datetime", "2024-01-01T25:00:00", "invalid_value"),
        ("datetime", "2024-01-01T10:00:00+0200", "invalid_value"),
        ("datetime", True, "type_mismatch"),
        ("string", {"nested": "object"}, "type_mismatch"),
    ],
)
def test_bad_values_fail_their_row_and_say_why(client, type_, bad, code):
    # The good rows around the bad one are written.
    values, errors = stored(client, [None, bad, None], type_)
    assert sorted(errors) == [1]
    error = errors[1]
    assert error["column"] == "v"
    assert error["code"] == code
    assert error["value"] == bad
    assert error["message"]
    assert values == [None, None, None]
    assert len(rows_of(client, "t")) == 2


def test_row_errors_report_index_column_code_message_and_value(client):
    create_dataset(
        client,
        "t",
        [
            {"name": "k", "type": "integer"},
            {"name": "n", "type": "integer"},
            {"name": "d", "type": "date"},
        ],
        unique_key=["k"],
    )
    job = push(
        client,
        "t",
        [
            {"k": 1, "n": 1},
            {"k": 2, "n": "x", "d": "nope"},
            {"k": 3},
            {"n": 5},
        ],
    )
    assert job["stats"]["received"] == 4
    assert job["stats"]["inserted"] == 2
    assert job["stats"]["failed"] == 2
    assert job["errors_total"] == 3
    assert [(e["row"], e["column"], e["code"]) for e in job["errors"]] == [
        (1, "d", "invalid_value"),
        (1, "n", "invalid_value"),
        (3, "k", "missing_key"),
    ]


def test_only_the_first_hundred_errors_are_kept(client):
    one_column(client, "integer")
    job = push(client, "t", [{"k": i, "v": "bad"} for i in range(250)])
    assert job["stats"]["failed"] == 250
    assert job["errors_total"] == 250
    assert len(job["errors"]) == 100
    assert job["errors"][0]["row"] == 0 and job["errors"][-1]["row"] == 99


def test_non_nullable_columns_reject_null(client):
    create_dataset(
        client,
        "t",
        [{"name": "k", "type": "integer"}, {"name": "v", "nullable": False}],
        unique_key=["k"],
    )
    job = push(client, "t", [{"k": 1, "v": None}, {"k": 2, "v": "ok"}], "insert")
    assert [(e["row"], e["code"]) for e in job["errors"]] == [(0, "null_not_allowed")]
    job = push(client, "t", [{"k": 3}], "insert")
    assert [(e["row"], e["code"]) for e in job["errors"]] == [(0, "missing_value")]


def test_non_object_records_are_row_errors(client):
    one_column(client, "string")
    job = push(client, "t", [{"k": 1}, 5, "text", [1], None])
    assert job["stats"]["inserted"] == 1 and job["stats"]["failed"] == 4
    assert {e["code"] for e in job["errors"]} == {"malformed_row"}  # DESIGN §10.1


# -- unknown fields ------------------------------------------------------------------


def test_unknown_fields_rejected_by_default(client):
    one_column(client, "string")
    job = push(client, "t", [{"k": 1, "v": "a", "extra": 1}, {"k": 2, "v": "b"}])
    assert job["stats"]["inserted"] == 1 and job["stats"]["failed"] == 1
    assert job["errors"][0]["code"] == "unknown_column"
    assert job["errors"][0]["column"] == "extra" and job["errors"][0]["value"] == 1


def test_unknown_fields_ignored_are_counted(client):
    create_dataset(client, "t", [{"name": "k", "type": "integer"}], unknown_fields="ignore")
    job = push(client, "t", [{"k": 1, "x": 1, "y": {"z": 2}}, {"k": 2, "x": 3}])
    assert job["stats"]["inserted"] == 2 and job["stats"]["failed"] == 0
    assert job["stats"]["ignored_fields"] == 3
    assert rows_of(client, "t") == [{"k": 1}, {"k": 2}]


def test_unknown_fields_evolve_the_schema(client):
    create_dataset(
        client, "t", [{"name": "k", "type": "integer"}], unknown_fields="evolve", unique_key=["k"]
    )
    job = push(
        client,
        "t",
        [
            {
                "k": 1,
                "score": 1.5,
                "when": "2024-01-01T00:00:00Z",
                "addr": {"city": "Oslo"},
                "tags": [1],
            },
            {"k": 2, "score": 2},
        ],
    )
    assert job["stats"]["inserted"] == 2 and job["stats"]["failed"] == 0, job
    columns = {c["name"]: c["type"] for c in client.get("/v1/datasets/t").json()["columns"]}
    assert columns == {
        "k": "integer",
        "score": "number",
        "when": "datetime",
        "addr.city": "string",
        "tags": "json",
    }
    assert rows_of(client, "t")[0] == {
        "k": 1,
        "score": 1.5,
        "when": "2024-01-01T00:00:00Z",
        "addr.city": "Oslo",
        "tags": [1],
    }


def test_a_json_column_takes_nested_objects_whole(client):
    create_dataset(
        client, "t", [{"name": "k", "type": "integer"}, {"name": "meta", "type": "json"}]
    )
    push(client, "t", [{"k": 1, "meta": {"a": {"b": [1, 2]}}}])
    assert rows_of(client, "t") == [{"k": 1, "meta": {"a": {"b": [1, 2]}}}]
