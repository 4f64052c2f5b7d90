"""The postgres_changes filter grammar: official parse texts, SQL evaluation, the typed builder."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_realtime._errors import LocalProtocolError
from trio_realtime.protocol._filters import (
    FILTER_OPERATORS,
    Condition,
    Filter,
    FilterError,
    check_columns,
    evaluate_filter,
    parse_filter,
    validate_filter,
)

PREFIX = "Error parsing `filter` params: "


def cond(column: str, op: str, value: Any, negate: bool = False) -> Condition:
    raw = value if isinstance(value, str) else ""
    return Condition(column=column, op=op, value=value, negate=negate, raw_value=raw)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   ", "\t\n ", "\u3000"])
def test_empty_filter_means_no_conditions(text: str | None) -> None:
    assert parse_filter(text) == ()


@pytest.mark.parametrize("op", [op for op in FILTER_OPERATORS if op != "in"])
def test_every_operator_parses(op: str) -> None:
    (parsed,) = parse_filter(f"col={op}.value.with.dots")
    assert parsed == cond("col", op, "value.with.dots")
    (negated,) = parse_filter(f"col=not.{op}.x")
    assert negated == cond("col", op, "x", negate=True)
    assert negated.as_tuple() == ("col", op, "x", True)


def test_official_docstring_examples() -> None:
    assert [c.as_tuple() for c in parse_filter("subject=eq.hey")] == [("subject", "eq", "hey", False)]
    assert [c.as_tuple() for c in parse_filter("subject=in.(hidee,ho)")] == [
        ("subject", "in", "{hidee,ho}", False)
    ]
    assert [c.as_tuple() for c in parse_filter("subject=not.like.hey%")] == [
        ("subject", "like", "hey%", True)
    ]
    assert [c.as_tuple() for c in parse_filter("id=gt.0,id=lt.100")] == [
        ("id", "gt", "0", False),
        ("id", "lt", "100", False),
    ]


def test_in_values_are_array_elements() -> None:
    (parsed,) = parse_filter('id=in.(1, 2 ,"a,b","x\\"y",null,"null",NULL )')
    assert parsed.op == "in"
    assert parsed.value == ("1", "2", "a,b", 'x"y', None, "null", None)
    assert parsed.raw_value == '{1, 2 ,"a,b","x\\"y",null,"null",NULL }'
    (empty,) = parse_filter("id=in.()")
    assert empty.value == ()
    assert empty.raw_value == "{}"


def test_in_with_a_malformed_array_parses_but_does_not_validate() -> None:
    # The official parser only checks the parentheses; the database rejects the literal.
    (parsed,) = parse_filter("id=in.(a,,b)")
    assert parsed.value is None
    assert parsed.raw_value == "{a,,b}"
    with pytest.raises(FilterError, match=r'^malformed array literal: "\{a,,b\}"$') as info:
        validate_filter([parsed], {"id": "text"})
    assert info.value.sqlstate == "22P02"
    with pytest.raises(FilterError, match="malformed array literal"):
        evaluate_filter([parsed], {"id": "a"}, {"id": "text"})


def test_splitting_respects_parentheses_and_quotes() -> None:
    parsed = parse_filter('name=eq."a,b",id=in.(1,2),note=eq."x(y",z=eq.(p,q)')
    assert [(c.column, c.value) for c in parsed] == [
        ("name", "a,b"),
        ("id", ("1", "2")),
        ("note", "x(y"),
        ("z", "(p,q)"),
    ]
    # an unbalanced "(" swallows the rest of the filter, as on the official server
    assert [c.value for c in parse_filter("a=eq.x(y,b=eq.1")] == ["x(y,b=eq.1"]
    # ")" never goes below depth 0
    assert [c.value for c in parse_filter("a=eq.x),b=eq.1")] == ["x)", "1"]


def test_a_quote_opens_only_after_dot_paren_or_comma() -> None:
    # mid-value quote: plain character, the comma still splits
    assert [c.value for c in parse_filter('a=eq.x"y,b=eq.1')] == ['x"y', "1"]
    # right after a top-level comma the scanner forgot the comma: no quoted run
    with pytest.raises(FilterError, match=r'^Error parsing `filter` params: \["\\"b"\]$'):
        parse_filter('a=eq.1,"b,c=eq.2')
    # after "." it opens, and an unterminated run swallows everything
    assert [c.value for c in parse_filter('a=eq."x,b=eq.1')] == ['"x,b=eq.1']


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        ('"a,b"', "a,b"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('"a\\nb"', "anb"),  # backslash escapes any character (no \n magic)
        ('""', ""),
        ('"abc', '"abc'),  # unterminated: literal
        ('"a"b', '"a"b'),  # trailing garbage: literal
        ('"a\\', '"a\\'),  # escape at the end: literal
        ('"', '"'),
        ('a"b"', 'a"b"'),  # not starting with a quote: literal
        ("", ""),
        ("  spaced", "  spaced"),
        ("é€😀", "é€😀"),
    ],
)
def test_postgrest_quoting(wire: str, value: str) -> None:
    (parsed,) = parse_filter(f"c=eq.{wire}")
    assert parsed.value == value
    assert parsed.raw_value == value


def test_whitespace_trimming_follows_elixir() -> None:
    # segments are trimmed; the column and value inside are not
    (parsed,) = parse_filter("  id =eq. 1  ")
    assert parsed.column == "id "
    assert parsed.value == " 1"
    # Elixir's String.trim keeps non-breaking spaces
    (nbsp,) = parse_filter("id=eq.1\u00a0")
    assert nbsp.value == "1\u00a0"
    assert [c.value for c in parse_filter("a=eq.1 , b=eq.2")] == ["1", "2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject=foo.hey", 'Error parsing `filter` params: ["foo", "hey"]'),
        ("undefined", 'Error parsing `filter` params: ["undefined"]'),
        ("id=eq.1,,id=eq.2", PREFIX + "filter must not contain empty segments (check for extra commas)"),
        ("id=eq.1,", PREFIX + "filter must not contain empty segments (check for extra commas)"),
        (",id=eq.1", PREFIX + "filter must not contain empty segments (check for extra commas)"),
        ("id=eq.1, ,id=eq.2", PREFIX + "filter must not contain empty segments (check for extra commas)"),
        ("id=in.1,2", PREFIX + "`in` filter value must be wrapped by parentheses"),
        ("id=in.(1,2", PREFIX + "`in` filter value must be wrapped by parentheses"),
        ("id=in.", PREFIX + "`in` filter value must be wrapped by parentheses"),
        ("id=in.)", PREFIX + "`in` filter value must be wrapped by parentheses"),
        ("id=eq", PREFIX + '["eq"]'),
        ("id=", PREFIX + '[""]'),
        ("id=not.", PREFIX + '[""]'),
        ("id=not.eq", PREFIX + '["eq"]'),
        ("id=not.foo.1", PREFIX + '["foo", "1"]'),
        ("id=not.not.eq.1", PREFIX + '["not", "eq.1"]'),
        ("id=EQ.1", PREFIX + '["EQ", "1"]'),
        ('id=x"y.1', PREFIX + '["x\\"y", "1"]'),
        ("a\\b", PREFIX + '["a\\\\b"]'),
        ("id=#{x}.1", PREFIX + '["\\#{x}", "1"]'),
        ("a\nb", PREFIX + '["a\\nb"]'),
        ("a\x00b", PREFIX + "[<<97, 0, 98>>]"),
        ("id=eq.1,subject=foo.hey", 'Error parsing `filter` params: ["foo", "hey"]'),
    ],
)
def test_official_parse_errors(text: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert str(info.value) == message
    assert info.value.sqlstate is None
    assert info.value.db_message == message


def test_first_error_wins() -> None:
    with pytest.raises(FilterError, match=r'\["bad"\]'):
        parse_filter("bad,id=in.1")


def test_long_unparsable_segment_is_inspected_with_the_printable_limit() -> None:
    with pytest.raises(FilterError) as info:
        parse_filter("x" * 5000)
    assert str(info.value) == PREFIX + '["' + "x" * 4096 + '" <> ...]'


def test_filter_error_is_copy_and_pickle_safe() -> None:
    exc = FilterError("invalid column for filter x", "P0001")
    for clone in (copy.copy(exc), copy.deepcopy(exc), pickle.loads(pickle.dumps(exc))):
        assert type(clone) is FilterError
        assert str(clone) == "invalid column for filter x"
        assert clone.sqlstate == "P0001"
        assert clone.db_message == "ERROR P0001 (raise_exception) invalid column for filter x"
    assert isinstance(exc, ValueError)


# ---------------------------------------------------------------------------------------------
# Validation (what the official database refuses at subscribe time)
# ---------------------------------------------------------------------------------------------

TYPES = {
    "id": "int4",
    "big": "int8",
    "small": "int2",
    "price": "numeric",
    "ratio": "float8",
    "name": "text",
    "title": "varchar",
    "done": "bool",
    "at": "timestamptz",
    "local": "timestamp",
    "day": "date",
    "uid": "uuid",
    "meta": "jsonb",
    "raw": "json",
    "tags": "_text",
    "nums": "_int4",
}


def test_check_columns() -> None:
    check_columns(parse_filter("id=eq.1,name=eq.x"), TYPES)
    with pytest.raises(FilterError) as info:
        check_columns(parse_filter("id=eq.1,notacolumn=eq.123"), TYPES)
    assert str(info.value) == "invalid column for filter notacolumn"
    assert info.value.db_message == "ERROR P0001 (raise_exception) invalid column for filter notacolumn"


@pytest.mark.parametrize(
    "text",
    [
        "id=eq.1",
        "id=not.in.(1,2,3)",
        "big=gt.9223372036854775807",
        "price=lte.1.5e3",
        "ratio=eq.NaN",
        "ratio=lt.-Infinity",
        "name=like.a%",
        "title=ilike.%B_",
        "name=match.^a[[:digit:]]+$",
        "title=imatch.x",
        "done=is.true",
        "done=not.is.unknown",
        "id=is.null",
        "at=gte.2024-01-01T00:00:00Z",
        "at=lt.2024-01-01 00:00:00+00",
        "local=eq.2024-01-01T10:00:00",
        "day=isdistinct.2024-02-29",
        "uid=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        str(Filter.eq("meta", '{"a": [1, true]}')),
        'tags=eq."{a,b}"',
        "done=eq.yes",
        "id=in.()",
        "name=eq.",
    ],
)
def test_valid_filters_validate(text: str) -> None:
    validate_filter(parse_filter(text), TYPES)


@pytest.mark.parametrize(
    ("text", "message", "sqlstate"),
    [
        ("nope=eq.1", "invalid column for filter nope", "P0001"),
        ("id=eq.abc", 'invalid input syntax for type integer: "abc"', "22P02"),
        ("id=eq.1.5", 'invalid input syntax for type integer: "1.5"', "22P02"),
        ("id=eq.99999999999", 'value "99999999999" is out of range for type integer', "22003"),
        ("small=eq.40000", 'value "40000" is out of range for type smallint', "22003"),
        ("price=eq.x", 'invalid input syntax for type numeric: "x"', "22P02"),
        ("ratio=eq.1,2", None, None),  # "2" is a segment without "=": a parse error
        ("done=eq.maybe", 'invalid input syntax for type boolean: "maybe"', "22P02"),
        ("at=eq.yesterday", 'invalid input syntax for type timestamp with time zone: "yesterday"', "22007"),
        ("uid=eq.123", 'invalid input syntax for type uuid: "123"', "22P02"),
        ("meta=eq.{nope", "invalid input syntax for type json", "22P02"),
        ("id=in.(1,x)", 'invalid input syntax for type integer: "x"', "22P02"),
        ("id=in.(1,{2})", 'malformed array literal: "{1,{2}}"', "22P02"),
        ("done=is.maybe", "invalid value for is filter: must be null, true, false, or unknown", "P0001"),
        ("done=is.NULL", "invalid value for is filter: must be null, true, false, or unknown", "P0001"),
        ("id=is.true", "is true filter requires a boolean column, got integer", "P0001"),
        ("name=not.is.unknown", "is unknown filter requires a boolean column, got text", "P0001"),
        (
            "id=like.1%",
            "operator like is not supported on column id of type integer: "
            "operator does not exist: integer ~~ integer",
            "P0001",
        ),
        (
            "uid=imatch.x",
            "operator imatch is not supported on column uid of type uuid: "
            "operator does not exist: uuid ~* uuid",
            "P0001",
        ),
        (
            "name=like.ab\\",
            "operator like is not supported on column name of type text: "
            "LIKE pattern must not end with escape character",
            "P0001",
        ),
        (
            "raw=eq.{}",
            "operator eq is not supported on column raw of type json: operator does not exist: json = json",
            "P0001",
        ),
        ("tags=in.(a)", None, "P0001"),
        ("tags=eq.a", 'malformed array literal: "a"', "22P02"),
    ],
)
def test_validation_errors(text: str, message: str | None, sqlstate: str | None) -> None:
    with pytest.raises(FilterError) as info:
        validate_filter(parse_filter(text), TYPES)
    if message is not None:
        assert str(info.value) == message
    assert info.value.sqlstate == sqlstate


def test_invalid_regex_is_refused() -> None:
    with pytest.raises(FilterError) as info:
        validate_filter(parse_filter("name=match.a(b"), TYPES)
    assert str(info.value).startswith(
        "invalid regular expression for match filter: invalid regular expression"
    )
    assert info.value.sqlstate == "P0001"


def test_in_allows_at_most_100_values() -> None:
    validate_filter(parse_filter("id=in.(" + ",".join(map(str, range(100))) + ")"), TYPES)
    with pytest.raises(FilterError) as info:
        validate_filter(parse_filter("id=in.(" + ",".join(map(str, range(101))) + ")"), TYPES)
    assert str(info.value) == "too many values for `in` filter. Maximum 100"


def test_validation_goes_condition_by_condition() -> None:
    # the official trigger checks column then value for each filter in turn
    with pytest.raises(FilterError, match="integer"):
        validate_filter(parse_filter("id=eq.abc,nope=eq.1"), TYPES)
    with pytest.raises(FilterError, match="invalid column for filter nope"):
        validate_filter(parse_filter("nope=eq.1,id=eq.abc"), TYPES)


def test_column_type_aliases() -> None:
    types = {"a": "integer", "b": "integer[]", "c": "timestamp with time zone", "d": "boolean"}
    conditions = parse_filter('a=eq.1,b=eq."{1,2}",c=lt.2030-01-01,d=is.true')
    validate_filter(conditions, types)
    assert evaluate_filter(conditions, {"a": 1, "b": [1, 2], "c": "2024-01-01T00:00:00Z", "d": True}, types)


# ---------------------------------------------------------------------------------------------
# Evaluation (SQL semantics on decoded wal2json rows)
# ---------------------------------------------------------------------------------------------

ROW: dict[str, Any] = {
    "id": 5,
    "big": 9007199254740993,  # not representable as a float
    "small": -3,
    "price": 19.99,
    "ratio": 0.1,
    "name": "Alice",
    "title": "a_b%c",
    "done": True,
    "at": "2024-01-01T12:00:00.123+00:00",
    "local": "2024-01-01T12:00:00",
    "day": "2024-02-29",
    "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "meta": {"a": [1, True], "b": None},
    "raw": {"x": 1},
    "tags": ["x", "y"],
    "nums": [1, 2, None],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # integers
        ("id=eq.5", True),
        ("id=eq.+5", True),
        ("id=eq. 5 ", True),
        ("id=neq.5", False),
        ("id=lt.6", True),
        ("id=lt.5", False),
        ("id=lte.5", True),
        ("id=gt.4", True),
        ("id=gt.10", False),  # numeric, not text, ordering ("5" > "10" as text)
        ("id=gte.5", True),
        ("id=not.eq.5", False),
        ("id=not.gt.10", True),
        ("big=eq.9007199254740993", True),
        ("big=eq.9007199254740992", False),
        ("small=lt.0", True),
        # numeric / float compare as decimals
        ("price=eq.19.99", True),
        ("price=eq.19.990", True),
        ("price=gt.19.989", True),
        ("price=lt.1e2", True),
        ("ratio=eq.0.1", True),
        ("ratio=lt.NaN", True),  # NaN sorts above everything
        ("ratio=gt.-Infinity", True),
        # text (codepoint order)
        ("name=eq.Alice", True),
        ("name=eq.alice", False),
        ("name=neq.Bob", True),
        ("name=lt.Bob", True),
        ("name=gt.B", False),
        ("name=in.(Bob,Alice)", True),
        ("name=in.(Bob,Carol)", False),
        ("name=not.in.(Bob,Carol)", True),
        ('name=in.("Alice",x)', True),
        # like / ilike
        ("name=like.A%", True),
        ("name=like.a%", False),
        ("name=ilike.a%", True),
        ("name=like.A_ice", True),
        ("name=like.A_ce", False),
        ("name=like.%lic%", True),
        ("name=like.Alice", True),
        ("name=like.Ali", False),  # LIKE is anchored
        ("name=not.like.B%", True),
        ("title=like.a\\_b\\%c", True),  # escaped wildcards are literal
        ("title=like.a\\_b\\%", False),
        ("title=like.a.b%", False),  # regex metacharacters are literal
        ("title=like.a_b%c", True),
        ("name=ilike.%LIC%", True),
        # match / imatch
        ("name=match.^Al", True),
        ("name=match.lic", True),  # unanchored
        ("name=match.^al", False),
        ("name=imatch.^al", True),
        ("name=match.^[[:alpha:]]+$", True),
        ("name=match.[[:digit:]]", False),
        ("name=not.match.^B", True),
        # bool
        ("done=eq.true", True),
        ("done=eq.t", True),
        ("done=eq.yes", True),
        ("done=eq.f", False),
        ("done=neq.false", True),
        ("done=is.true", True),
        ("done=is.false", False),
        ("done=not.is.false", True),
        ("done=is.unknown", False),
        ("done=gt.false", True),
        # timestamps
        ("at=eq.2024-01-01T12:00:00.123Z", True),
        ("at=eq.2024-01-01 12:00:00.123+00", True),
        ("at=eq.2024-01-01T13:00:00.123+01:00", True),
        ("at=gt.2024-01-01T12:00:00Z", True),
        ("at=lt.2024-01-01T12:00:00Z", False),
        ("at=lt.infinity", True),
        ("at=gt.-infinity", True),
        ("at=eq.2024-01-01T12:00:00.123", True),  # no zone: UTC
        ("local=eq.2024-01-01 12:00:00", True),
        ("local=eq.2024-01-01T12:00:00+05", True),  # timestamp input ignores a zone
        ("day=eq.2024-02-29", True),
        ("day=lt.2024-03-01", True),
        ("day=in.(2024-02-28,2024-02-29)", True),
        # uuid
        ("uid=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", True),
        ("uid=eq.a0eebc999c0b4ef8bb6d6bb9bd380a11", True),
        ("uid=neq.a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12", True),
        # jsonb
        (str(Filter.eq("meta", '{"b": null, "a": [1, true]}')), True),
        (str(Filter.eq("meta", '{"a": [1.0, true], "b": null}')), True),
        (str(Filter.eq("meta", '{"a": [1, 1], "b": null}')), False),  # true is not 1
        ('meta=neq.{"a": 1}', True),
        # arrays (a literal with commas must be quoted, or the server splits it)
        ('tags=eq."{x,y}"', True),
        ('tags=eq."{\\"x\\", y}"', True),
        ('tags=eq."{y,x}"', False),
        ('tags=lt."{x,z}"', True),
        ("tags=gt.{x}", True),  # the longer array is larger
        ('nums=eq."{1,2,NULL}"', True),  # NULL elements compare equal in arrays
        ('nums=eq."{1,2}"', False),
        ("nums=is.null", False),
        # isdistinct
        ("id=isdistinct.5", False),
        ("id=isdistinct.6", True),
        ("id=not.isdistinct.5", True),
        # AND
        ("id=eq.5,name=eq.Alice", True),
        ("id=eq.5,name=eq.Bob", False),
        ("id=gt.0,id=lt.10,done=is.true", True),
        # no conditions
        ("", True),
    ],
)
def test_evaluate(text: str, expected: bool) -> None:
    assert evaluate_filter(parse_filter(text), ROW, TYPES) is expected


NULL_ROW: dict[str, Any] = {name: None for name in TYPES}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id=eq.1", False),
        ("id=not.eq.1", False),  # NOT unknown is unknown
        ("id=neq.1", False),
        ("id=not.neq.1", False),
        ("id=lt.1", False),
        ("id=not.gte.1", False),
        ("name=like.%", False),
        ("name=not.like.%", False),
        ("name=match..*", False),
        ("name=not.imatch.x", False),
        ("id=in.(1,2)", False),
        ("id=not.in.(1,2)", False),
        ("id=in.()", False),
        ("id=not.in.()", True),  # x = any('{}') is false even for NULL
        ("id=is.null", True),
        ("id=not.is.null", False),
        ("done=is.unknown", True),
        ("done=not.is.unknown", False),
        ("done=is.true", False),
        ("done=not.is.true", True),
        ("done=not.is.false", True),
        ("id=isdistinct.1", True),
        ("id=not.isdistinct.1", False),
        ("name=isdistinct.null", True),  # "null" is the text 'null', not NULL
        ("tags=is.null", True),
        ("meta=is.null", True),
        ("at=lt.infinity", False),
    ],
)
def test_null_semantics(text: str, expected: bool) -> None:
    assert evaluate_filter(parse_filter(text), NULL_ROW, TYPES) is expected


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("id=in.(1,NULL)", 1, True),
        ("id=in.(1,NULL)", 2, False),  # unknown
        ("id=not.in.(1,NULL)", 2, False),  # NOT unknown
        ("id=not.in.(1,NULL)", 1, False),
        ("id=not.in.(1,2)", 3, True),
        ("id=in.( 1 , 2 )", 2, True),
        ("id=in.(2)", 2, True),
    ],
)
def test_in_with_null_elements(text: str, value: int, expected: bool) -> None:
    assert evaluate_filter(parse_filter(text), {"id": value}, TYPES) is expected


def test_quoted_in_values() -> None:
    conditions = parse_filter('name=in.("a,b","c)d","e\\"f",NULL,"NULL")')
    for value in ("a,b", "c)d", 'e"f', "NULL"):
        assert evaluate_filter(conditions, {"name": value}, TYPES)
    assert not evaluate_filter(conditions, {"name": "a"}, TYPES)


def test_missing_column_never_matches() -> None:
    # e.g. a DELETE whose old_record only has the primary key
    assert not evaluate_filter(parse_filter("name=eq.Alice"), {"id": 5}, TYPES)
    assert not evaluate_filter(parse_filter("name=is.null"), {"id": 5}, TYPES)
    assert not evaluate_filter(parse_filter("name=not.eq.x"), {"id": 5}, TYPES)


def test_unknown_column_type_compares_as_text() -> None:
    assert evaluate_filter(parse_filter("mood=eq.happy"), {"mood": "happy"}, {"mood": "mood_enum"})
    assert evaluate_filter(parse_filter("x=eq.1"), {"x": "1"}, {})


def test_record_values_given_as_text_are_coerced() -> None:
    types = {"id": "int8", "done": "bool", "nums": "_int4", "price": "numeric"}
    row = {"id": "42", "done": "t", "nums": "{1,2}", "price": "1.50"}
    assert evaluate_filter(parse_filter('id=eq.42,done=is.true,nums=eq."{1,2}",price=eq.1.5'), row, types)


def test_bpchar_and_citext() -> None:
    assert evaluate_filter(parse_filter("c=eq.ab"), {"c": "ab   "}, {"c": "bpchar"})
    assert evaluate_filter(parse_filter("c=eq.ABC"), {"c": "abc"}, {"c": "citext"})


def test_evaluation_raises_filter_error_on_values_the_type_refuses() -> None:
    with pytest.raises(FilterError, match="invalid input syntax for type integer"):
        evaluate_filter(parse_filter("id=eq.abc"), ROW, TYPES)
    with pytest.raises(FilterError, match="requires a boolean column"):
        evaluate_filter(parse_filter("id=is.true"), ROW, TYPES)
    with pytest.raises(FilterError, match="operator does not exist: integer ~~ integer"):
        evaluate_filter(parse_filter("id=like.5"), ROW, TYPES)


def test_evaluation_short_circuits_on_first_failing_condition() -> None:
    # the official function sums every condition; the result is the same: no match
    assert not evaluate_filter(parse_filter("id=eq.6,name=eq.Alice"), ROW, TYPES)


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "wire"),
    [
        (Filter.eq("id", 1), "id=eq.1"),
        (Filter.neq("name", "bob"), "name=neq.bob"),
        (Filter.lt("price", Decimal("1.50")), "price=lt.1.50"),
        (Filter.lte("ratio", 0.5), "ratio=lte.0.5"),
        (Filter.gt("ratio", float("inf")), "ratio=gt.Infinity"),
        (Filter.gte("ratio", float("nan")), "ratio=gte.NaN"),
        (Filter.eq("done", True), "done=eq.true"),
        (Filter.eq("done", False), "done=eq.false"),
        (Filter.like("name", "a%"), "name=like.a%"),
        (Filter.ilike("name", "%B_"), "name=ilike.%B_"),
        (Filter.match("name", "^a\\d+$"), "name=match.^a\\d+$"),
        (Filter.imatch("name", "x|y"), "name=imatch.x|y"),
        (Filter.match("name", "^(a|b)$"), 'name=match."^(a|b)$"'),
        (Filter.in_("id", [1, 2, 3]), "id=in.(1,2,3)"),
        (
            Filter.in_("s", ["a", "on hold", "x,y", "p)q", "null", "", 'q"r']),
            's=in.(a,"on hold","x,y","p)q","null","","q\\"r")',
        ),
        (Filter.is_("x", None), "x=is.null"),
        (Filter.is_("done", True), "done=is.true"),
        (Filter.is_("done", False), "done=is.false"),
        (Filter.isdistinct("id", 3), "id=isdistinct.3"),
        (Filter.eq("name", "a,b"), 'name=eq."a,b"'),
        (Filter.eq("name", 'say "hi"'), 'name=eq."say \\"hi\\""'),
        (Filter.eq("name", "trailing "), 'name=eq."trailing "'),
        (Filter.eq("name", "back\\slash"), "name=eq.back\\slash"),
        (Filter.eq("name", ""), "name=eq."),
        (~Filter.eq("id", 1), "id=not.eq.1"),
        (~Filter.is_("x", None), "x=not.is.null"),
        (~~Filter.eq("id", 1), "id=eq.1"),
        (Filter.eq("id", 1) & Filter.in_("status", ["a", "b"]), "id=eq.1,status=in.(a,b)"),
        (~Filter.eq("a", 1) & ~Filter.eq("b", 2), "a=not.eq.1,b=not.eq.2"),
    ],
)
def test_builder_renders_the_wire_string(built: Filter, wire: str) -> None:
    assert str(built) == wire
    assert parse_filter(wire) == built.conditions
    assert [c.raw_value for c in parse_filter(wire)] == [c.raw_value for c in built.conditions]


def test_builder_accepts_dates_times_and_uuids() -> None:
    import datetime
    import uuid

    when = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC)
    uid = uuid.UUID(int=1)
    built = Filter.gte("at", when) & Filter.eq("day", datetime.date(2024, 2, 29)) & Filter.eq("uid", uid)
    assert str(built) == "at=gte.2024-01-01T12:00:00+00:00,day=eq.2024-02-29,uid=eq." + str(uid)
    row = {"at": "2024-01-01T12:00:00Z", "day": "2024-02-29", "uid": str(uid)}
    assert evaluate_filter(parse_filter(str(built)), row, TYPES)


def test_negating_a_group_is_refused() -> None:
    group = Filter.eq("a", 1) & Filter.eq("b", 2)
    with pytest.raises(LocalProtocolError, match="only negates single conditions"):
        _ = ~group


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Filter.eq("", 1), "must not be empty"),
        (lambda: Filter.eq("a=b", 1), "must not contain '='"),
        (lambda: Filter.eq("a,b", 1), "must not contain ','"),
        (lambda: Filter.eq("a(b", 1), "must not contain '\\('"),
        (lambda: Filter.eq('a"b', 1), "must not contain"),
        (lambda: Filter.eq(" a", 1), "whitespace"),
        (lambda: Filter.eq(1, 1), "column must be a str"),
        (lambda: Filter.eq("a", None), "use Filter.is_"),
        (lambda: Filter.eq("a", [1]), "must be str, int"),
        (lambda: Filter.eq("a", b"x"), "must be str, int"),
        (lambda: Filter.like("a", 5), "pattern for 'a' must be a str"),
        (lambda: Filter.like("a", "x\\"), "must not end with escape character"),
        (lambda: Filter.match("a", "("), "invalid regular expression"),
        (lambda: Filter.in_("a", []), "at least one value"),
        (lambda: Filter.in_("a", range(101)), "at most 100"),
        (lambda: Filter.in_("a", [1, None]), "use Filter.is_"),
        (lambda: Filter.in_("a", "abc"), "not a string"),
        (lambda: Filter.is_("a", "null"), "takes None, True or False"),
        (lambda: Filter.is_("a", 1), "takes None, True or False"),
    ],
)
def test_builder_rejects_impossible_filters(make: Any, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        make()


def test_builder_is_immutable_and_comparable() -> None:
    a = Filter.eq("id", 1)
    assert a == Filter.eq("id", 1)
    assert hash(a) == hash(Filter.eq("id", 1))
    combined = a & Filter.eq("x", 2)
    assert a.conditions == (cond("id", "eq", "1"),)
    assert len(combined.conditions) == 2
    with pytest.raises(AttributeError):
        a.conditions = ()  # type: ignore[misc]


def test_builder_output_is_accepted_by_the_join_config() -> None:
    from trio_realtime.protocol._join import _filter_text

    built = Filter.eq("name", "a,b") & Filter.in_("id", [1, 2])
    assert _filter_text(built) == str(built)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

columns = st.text(min_size=1, max_size=8).filter(
    lambda c: not any(ch in c for ch in '=,()"') and c == c.strip() and c.strip(" \t\n\r\x0b\x0c\x85\u3000")
)
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.floats(),
    st.decimals(allow_nan=False),
    st.booleans(),
)
singles = st.one_of(
    st.builds(
        lambda op, c, v: getattr(Filter, op)(c, v),
        st.sampled_from(["eq", "neq", "lt", "lte", "gt", "gte", "isdistinct"]),
        columns,
        scalars,
    ),
    st.builds(
        lambda op, c, v: getattr(Filter, op)(c, v),
        st.sampled_from(["like", "ilike"]),
        columns,
        st.text(max_size=12).filter(lambda p: not p.endswith("\\") or p.endswith("\\\\")),
    ),
    st.builds(Filter.in_, columns, st.lists(scalars, min_size=1, max_size=6)),
    st.builds(Filter.is_, columns, st.sampled_from([None, True, False])),
)
filters = st.builds(
    lambda parts: _and_all(parts),
    st.lists(
        st.tuples(singles, st.booleans()).map(lambda p: ~p[0] if p[1] else p[0]), min_size=1, max_size=4
    ),
)


def _and_all(parts: list[Filter]) -> Filter:
    result = parts[0]
    for part in parts[1:]:
        result = result & part
    return result


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much])
@given(filters)
def test_builder_round_trips_through_the_parser(built: Filter) -> None:
    parsed = parse_filter(str(built))
    assert parsed == built.conditions
    assert [c.raw_value for c in parsed] == [c.raw_value for c in built.conditions]


@given(st.text(max_size=20))
def test_any_text_value_matches_itself(value: str) -> None:
    types = {"c": "text"}
    assert evaluate_filter(parse_filter(str(Filter.eq("c", value))), {"c": value}, types)
    assert evaluate_filter(parse_filter(str(Filter.in_("c", ["zz", value]))), {"c": value}, types)
    assert not evaluate_filter(parse_filter(str(~Filter.eq("c", value))), {"c": value}, types)
    assert not evaluate_filter(parse_filter(str(Filter.isdistinct("c", value))), {"c": value}, types)
    assert evaluate_filter(parse_filter(str(Filter.like("c", "%"))), {"c": value}, types)


@given(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(min_value=-(2**63), max_value=2**63 - 1)
)
def test_integer_ordering_matches_python(a: int, b: int) -> None:
    types = {"n": "int8"}
    for op, expected in [
        ("eq", a == b),
        ("neq", a != b),
        ("lt", a < b),
        ("lte", a <= b),
        ("gt", a > b),
        ("gte", a >= b),
    ]:
        assert evaluate_filter(parse_filter(str(getattr(Filter, op)("n", b))), {"n": a}, types) is expected


@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_float_ordering_matches_python(a: float, b: float) -> None:
    types = {"n": "float8"}
    for op, expected in [("eq", a == b), ("lt", a < b), ("gte", a >= b)]:
        assert evaluate_filter(parse_filter(str(getattr(Filter, op)("n", b))), {"n": a}, types) is expected


_TOKENS = st.sampled_from(
    ["a", "b", "=", ".", ",", "(", ")", '"', "\\", " ", "\t", "not.", "eq.", "in.", "is.", "like.", "match.",
     "isdistinct.", "%", "_", "{", "}", "NULL", "null", "true", "#{"]
) | st.characters()  # fmt: skip


@settings(max_examples=500)
@given(st.lists(_TOKENS, max_size=25).map("".join) | st.text(max_size=40))
def test_parse_fuzz_returns_or_raises_filter_error(text: str) -> None:
    error: FilterError | None = None
    try:
        conditions = parse_filter(text)
    except FilterError as exc:
        error = exc
    if error is not None:
        assert str(error).startswith(PREFIX)
        return
    for c in conditions:
        assert c.op in FILTER_OPERATORS
    # evaluation of whatever parsed may refuse the values, but only with FilterError
    types = {c.column: "text" for c in conditions}
    try:
        validate_filter(conditions, types)
        evaluate_filter(conditions, {c.column: "ab" for c in conditions}, types)
        evaluate_filter(conditions, {c.column: None for c in conditions}, types)
    except FilterError:
        pass


@settings(max_examples=300)
@given(st.text(max_size=30), st.sampled_from(sorted(set(TYPES.values()))), st.sampled_from(FILTER_OPERATORS))
def test_evaluate_fuzz_raises_only_filter_error(value: str, type_name: str, op: str) -> None:
    conditions = (Condition(column="c", op=op, value=value if op != "in" else (value,), raw_value=value),)
    try:
        validate_filter(conditions, {"c": type_name})
    except FilterError:
        pass
    for record_value in (None, value, 1, True, 1.5, [value], {"k": value}):
        try:
            evaluate_filter(conditions, {"c": record_value}, {"c": type_name})
        except FilterError:
            pass
