"""The sans-IO half of postgres_changes (``trio_realtime.server._changes``): no database here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trio_realtime.server._changes import (
    Binding,
    BindingError,
    TypeInfo,
    commit_timestamp,
    convert_value,
    decode_change,
    elixir_inspect,
    parse_array_literal,
    parse_binding,
    parse_lsn,
    select_data,
)

INT4 = TypeInfo(name="int4", kind="number")
TEXT = TypeInfo(name="text")
TYPES = {23: INT4, 25: TEXT, 1184: TypeInfo(name="timestamptz", kind="timestamptz")}


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        ({"event": "insert", "schema": "public", "table": "t"}, ("INSERT", "public", "t")),
        ({"event": "TRUNCATE", "schema": "s"}, ("*", "s", "*")),
        ({"events": "UPDATE", "table": "t"}, ("*", "public", "t")),  # realtime-py 2.7's key
        ({"event": "*", "schema": "*", "table": "*"}, ("*", "*", "*")),
        ({"event": "*", "schema": "s", "table": "t", "filter": "   "}, ("*", "s", "t")),
    ],
)
def test_pg_parse_binding(binding: dict[str, Any], expected: tuple[str, str, str]) -> None:
    parsed = parse_binding({**binding, "id": 7})
    assert (parsed.event, parsed.schema, parsed.table) == expected
    assert parsed.id == 7
    assert parsed.conditions == ()


_NO_PARAMS = ("No subscription params provided. Please provide at least a `schema` or `table` to "
              "subscribe to: ")


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({}, _NO_PARAMS + "%{}"),
        ({"schema": 1}, _NO_PARAMS + '%{"schema" => 1}'),
        ({"table": "t", "filter": "id=eq.1"},  # a filter needs both schema and table
         _NO_PARAMS + '%{"filter" => "id=eq.1", "table" => "t"}'),
        ({"user_token": "secret"}, _NO_PARAMS + "<redacted>"),
        ({"schema": "s", "table": "t", "select": "a,b"},
         "Error parsing `select` params: expected a list of column name strings, e.g. "
         'select: ["col1", "col2"]'),
        ({"schema": "s", "select": ["a"]},
         "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table "
         "name."),
        ({"schema": "s", "table": "t", "filter": "a=eq.1,,b=eq.2"},
         "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"),
    ],
)
def test_pg_parse_binding_errors(binding: dict[str, Any], message: str) -> None:
    with pytest.raises(BindingError) as info:
        parse_binding({**binding, "id": 1})
    assert str(info.value) == message


def test_pg_binding_messages() -> None:
    binding = parse_binding({"id": 1, "event": "INSERT", "schema": "public", "table": "t",
                             "filter": 'name=in.(a,"b c"),id=not.gt.5', "select": ["name", 3]})
    assert binding.select == ("name",)
    assert binding.params_log() == (
        'event: INSERT, schema: public, table: t, filters: [{"name", "in", "{a,\\"b c\\"}", false}, '
        '{"id", "gt", "5", true}], select: ["name"]'
    )
    assert binding.not_found_message().endswith(f"connect parameters: [{binding.params_log()}]")


def test_pg_elixir_inspect() -> None:
    assert elixir_inspect({"b": [1, 2.5, None, True], "a": 'q"\\\n'}) == (
        '%{"a" => "q\\"\\\\\\n", "b" => [1, 2.5, nil, true]}'
    )
    assert elixir_inspect(("a", "eq", "1", False)) == '{"a", "eq", "1", false}'


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("{}", []),
        ("{1,2,NULL}", ["1", "2", None]),
        ('{"NULL",null, x }', ["NULL", None, "x"]),
        ('{"a b","c,d","e\\"f","g\\\\h",""}', ["a b", "c,d", 'e"f', "g\\h", ""]),
        ("{{1,2},{3,4}}", [["1", "2"], ["3", "4"]]),
        ("[0:1]={7,8}", ["7", "8"]),
        ("{{}}", [[]]),
    ],
)
def test_pg_parse_array_literal(literal: str, expected: list[Any]) -> None:
    assert parse_array_literal(literal) == expected


@pytest.mark.parametrize("literal", ["", "1,2", "{1,2", '{"a}', "{1}x", "{1 2,}"])
def test_pg_parse_array_literal_rejects(literal: str) -> None:
    with pytest.raises(ValueError, match=r"^malformed array literal"):
        parse_array_literal(literal)


@pytest.mark.parametrize(
    ("value", "info", "expected"),
    [
        ("2024-01-02 03:04:05.678+00", TypeInfo(name="timestamptz", kind="timestamptz"),
         "2024-01-02T03:04:05.678+00:00"),
        ("2024-01-02 03:04:05+05:30", TypeInfo(name="timestamptz", kind="timestamptz"),
         "2024-01-02T03:04:05+05:30"),
        ("infinity", TypeInfo(name="timestamptz", kind="timestamptz"), "infinity"),
        ("2024-01-02 03:04:05", TypeInfo(name="timestamp", kind="timestamp"), "2024-01-02T03:04:05"),
        ("12:00:00+02", TypeInfo(name="timetz", kind="timetz"), "12:00:00+02:00"),
        ('{"a": 1}', TypeInfo(name="jsonb", kind="json"), {"a": 1}),
        ("not json", TypeInfo(name="json", kind="json"), "not json"),
        ("{t,f,NULL}", TypeInfo(name="_bool", kind="array", element="bool"), [True, False, None]),
        ("{1.5,2}", TypeInfo(name="_numeric", kind="array", element="number"), [1.5, 2]),
        ('{"{\\"a\\": 1}"}', TypeInfo(name="_jsonb", kind="array", element="json"), [{"a": 1}]),
        ("{2024-01-02 03:04:05+00}", TypeInfo(name="_timestamptz", kind="array", element="timestamptz"),
         ["2024-01-02T03:04:05+00:00"]),
        ("7", TypeInfo(name="my_int_domain", kind="number"), 7),
        (7, INT4, 7),
        (None, TEXT, None),
        ("(1,2)", TypeInfo(name="point"), "(1,2)"),
    ],
)
def test_pg_convert_value(value: Any, info: TypeInfo, expected: Any) -> None:
    assert convert_value(value, info) == expected


def test_pg_commit_timestamp_and_lsn() -> None:
    assert commit_timestamp("2024-01-02 03:04:05.678999+00") == "2024-01-02T03:04:05.678Z"
    assert commit_timestamp("2024-01-02 05:04:05+02") == "2024-01-02T03:04:05.000Z"
    assert commit_timestamp("garbage") is None
    assert parse_lsn("0/15067F8") == 0x15067F8
    assert parse_lsn("16/B374D848") > parse_lsn("15/FFFFFFFF")


def _action(kind: str, **extra: Any) -> dict[str, Any]:
    return {"action": kind, "schema": "public", "table": "t", "timestamp": "2024-01-02 03:04:05.6+00",
            "pk": [{"name": "id", "type": "integer", "typeoid": 23}], **extra}


def _col(name: str, value: Any, oid: int = 25) -> dict[str, Any]:
    return {"name": name, "type": "x", "typeoid": oid, "value": value}


def test_pg_decode_update_takes_unchanged_toast_from_the_old_row() -> None:
    action = _action("U", columns=[_col("id", 1, 23), _col("a", "new")],
                     identity=[_col("id", 1, 23), _col("a", "old"), _col("big", "toasted")])
    change = decode_change(action, types=TYPES, table_columns=[("id", 23), ("a", 25), ("big", 25)], size=100)
    assert change is not None
    assert change.data == {
        "schema": "public", "table": "t", "commit_timestamp": "2024-01-02T03:04:05.600Z", "type": "UPDATE",
        "columns": [{"name": "id", "type": "int4"}, {"name": "a", "type": "text"},
                    {"name": "big", "type": "text"}],
        "record": {"id": 1, "a": "new", "big": "toasted"},
        "old_record": {"id": 1, "a": "old", "big": "toasted"},
        "errors": None,
    }
    assert change.column_types == {"id": "int4", "a": "text", "big": "text"}


def test_pg_decode_payload_too_large_keeps_small_values() -> None:
    action = _action("I", columns=[_col("id", 1, 23), _col("small", "x" * 62), _col("large", "y" * 63)])
    size = len(json.dumps(action))
    change = decode_change(action, types=TYPES, table_columns=None, size=size, max_record_bytes=size - 1)
    assert change is not None
    # 62 characters + 2 quotes = 64 bytes: kept; 65 bytes: dropped
    assert change.data["record"] == {"id": 1, "small": "x" * 62}
    assert change.data["errors"] == ["Error 413: Payload Too Large"]
    assert change.record == {"id": 1, "small": "x" * 62, "large": "y" * 63}  # filters see everything


def test_pg_decode_ignores_other_actions_and_select_narrows() -> None:
    assert decode_change({"action": "T", "schema": "s", "table": "t"}, types=TYPES, table_columns=None,
                         size=1) is None
    action = _action("I", columns=[_col("id", 1, 23), _col("a", "x"), _col("b", "y")])
    change = decode_change(action, types=TYPES, table_columns=None, size=1)
    assert change is not None
    narrowed = select_data(change, ("b",))
    assert narrowed["columns"] == [{"name": "id", "type": "int4"}, {"name": "b", "type": "text"}]
    assert narrowed["record"] == {"id": 1, "b": "y"}
    assert select_data(change, None) is change.data


def test_pg_binding_matches() -> None:
    action = _action("D", identity=[_col("id", 5, 23)])
    change = decode_change(action, types=TYPES, table_columns=None, size=1)
    assert change is not None

    def binding(**params: Any) -> Binding:
        return parse_binding({"id": 1, **params})

    assert binding(event="DELETE", schema="public", table="t", filter="id=eq.5").matches(change)
    assert not binding(event="DELETE", schema="public", table="t", filter="id=eq.6").matches(change)
    assert not binding(event="INSERT", schema="public", table="t").matches(change)
    assert binding(event="*", schema="*", table="t").matches(change)
    assert not binding(event="*", schema="other").matches(change)
    # a value the column cannot hold: no match (not an error)
    assert not binding(event="*", schema="*", table="*", filter="id=eq.abc").matches(change)
