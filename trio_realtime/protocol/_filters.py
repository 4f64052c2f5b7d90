"""The ``postgres_changes`` filter grammar, for both sides of the wire (PROTOCOL.md §6.2).

Theory of operation
-------------------

A binding's ``filter`` is a string such as ``id=gt.5,status=in.(open,"on hold")``. The official
server handles it in two stages, and so do we:

1. **Parsing** (Elixir, ``Extensions.PostgresCdcRls.Subscriptions.parse_subscription_params``):
   split on ``,`` at the top level (outside ``(...)`` and outside double quotes), then each
   segment is ``column=[not.]op.value``. Only the *shape* is checked here; failures become
   ``Error parsing `filter` params: ...``. :func:`parse_filter` reproduces this stage byte for
   byte, error texts included.
2. **Validation** (SQL, the ``realtime.subscription_check_filters`` trigger): the column must
   exist, the value must cast to the column's type, ``in`` holds at most 100 values, ``is`` takes
   a keyword, the operator must apply to the type. Failures there are database exceptions
   (``ERROR P0001 (raise_exception) invalid column for filter x``). :func:`check_columns` and
   :func:`validate_filter` reproduce this stage; their :class:`FilterError` carries the SQLSTATE so
   a server can format the official sentence.

:func:`evaluate_filter` then decides, with SQL semantics, whether a decoded row matches: values are
compared as the column's type, any comparison with NULL is *unknown* and unknown never matches
(``not.`` of unknown is still unknown), ``is``/``isdistinct`` are the NULL-aware ones.

The client side builds filters with :class:`Filter`, which only produces strings the parser gives
back unchanged (``parse_filter(str(f)) == f.conditions``) and refuses impossible ones early.

Nothing here performs I/O.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import uuid
import warnings
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final, final

import attrs

from .._errors import LocalProtocolError

__all__ = [
    "Condition",
    "Filter",
    "FilterError",
    "FILTER_OPERATORS",
    "MAX_IN_VALUES",
    "check_columns",
    "evaluate_filter",
    "parse_filter",
    "validate_filter",
]

#: Every operator the official server accepts, in its order.
FILTER_OPERATORS: Final = (
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch", "isdistinct",
)  # fmt: skip
#: The most values an ``in`` filter may list (enforced by the database, at subscribe time).
MAX_IN_VALUES: Final = 100

_PARSE_PREFIX = "Error parsing `filter` params: "
_IS_KEYWORDS = ("null", "true", "false", "unknown")

# SQLSTATE codes and condition names used in the messages Postgrex shows ("ERROR 22P02 (...)").
_SQLSTATE_NAMES: Final = {
    "P0001": "raise_exception",
    "2201B": "invalid_regular_expression",
    "22025": "invalid_escape_sequence",
    "22P02": "invalid_text_representation",
    "22003": "numeric_value_out_of_range",
    "22007": "invalid_datetime_format",
    "22008": "datetime_field_overflow",
}


class FilterError(ValueError):
    """A ``postgres_changes`` filter the official server would refuse.

    ``str(exc)`` is the official message text. Parse errors (:func:`parse_filter`) read
    ``Error parsing `filter` params: ...`` and have ``sqlstate = None``; the server sends them as
    they are. Validation errors (:func:`check_columns`, :func:`validate_filter`,
    :func:`evaluate_filter`) are what the official database raises at subscribe time; ``sqlstate``
    is then set and :attr:`db_message` renders them the way Postgrex does
    (``ERROR P0001 (raise_exception) invalid column for filter x``).
    """

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.sqlstate))

    def __str__(self) -> str:
        return self.message

    @property
    def db_message(self) -> str:
        """The message as ``Exception.message/1`` of a ``Postgrex.Error`` shows it.

        Parse errors (no ``sqlstate``) are returned unchanged.
        """
        if self.sqlstate is None:
            return self.message
        name = _SQLSTATE_NAMES.get(self.sqlstate, "error")
        return f"ERROR {self.sqlstate} ({name}) {self.message}"


def _raise_exception(message: str) -> FilterError:
    return FilterError(message, "P0001")


@final
@attrs.frozen(kw_only=True)
class Condition:
    """One ``column=[not.]op.value`` condition; a filter is the AND of its conditions.

    Attributes:
        column: everything before the first ``=`` (not trimmed: the official server doesn't).
        op: one of :data:`FILTER_OPERATORS`.
        value: the value, unquoted. For ``in``, the tuple of elements of the Postgres array
            literal ``{...}`` the server stores (``None`` elements are SQL NULLs); ``None`` if that
            literal is malformed (the database rejects it: :func:`validate_filter` raises).
            For ``is``, the keyword as written (``"null"``, ``"true"``...).
        negate: the ``not.`` prefix.
        raw_value: the value exactly as the official server stores it in
            ``realtime.subscription.filters`` (``"{1,2}"`` for ``in.(1,2)``); what its error
            messages show. Not part of equality.
    """

    column: str
    op: str
    value: str | tuple[str | None, ...] | None
    negate: bool = False
    raw_value: str = attrs.field(eq=False)

    def as_tuple(self) -> tuple[str, str, str, bool]:
        """``(column, op, raw_value, negate)``: the official server's filter tuple."""
        return (self.column, self.op, self.raw_value, self.negate)


# --------------------------------------------------------------------------------------------
# Parsing: Subscriptions.parse_filters/1, clause for clause.
# --------------------------------------------------------------------------------------------

# Elixir's String.trim/1: Unicode White_Space minus the non-breaking ones (U+00A0, U+2007, U+202F).
_ELIXIR_WHITESPACE: Final = (
    "\t\n\v\f\r \x85\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u2009\u200a"
    "\u2028\u2029\u205f\u3000"
)


def _trim(text: str) -> str:
    return text.strip(_ELIXIR_WHITESPACE)


def _split_top_level(text: str) -> list[str]:
    """Split on ``,`` outside parentheses and outside double quotes.

    A ``"`` opens a quoted run only right after ``.``, ``(`` or ``,`` (a value or an ``in``
    element); inside it ``\\x`` pairs are skipped and parentheses don't count. ``prev`` is reset
    after a top-level comma, exactly as the official scanner does.
    """
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    prev = ""
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if quoted:
            if char == "\\" and i + 1 < n:
                current.append(text[i : i + 2])
                prev = text[i + 1]
                i += 2
                continue
            if char == '"':
                quoted = False
            current.append(char)
            prev = char
        elif char == '"' and prev in (".", "(", ","):
            quoted = True
            current.append(char)
            prev = char
        elif char == "(":
            depth += 1
            current.append(char)
            prev = char
        elif char == ")":
            depth = max(0, depth - 1)
            current.append(char)
            prev = char
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            prev = ""
        else:
            current.append(char)
            prev = char
        i += 1
    parts.append("".join(current))
    return parts


_PRINTABLE_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\b": "\\b",
    "\f": "\\f",
    "\x1b": "\\e",
    "\x7f": "\\d",
    "\x07": "\\a",
}
_INSPECT_PRINTABLE_LIMIT = 4096
_INSPECT_LIMIT = 50


def _elixir_printable(char: str) -> bool:
    code = ord(char)
    return (
        char in _PRINTABLE_ESCAPES
        or 0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def _inspect_string(text: str) -> str:
    """Elixir's ``inspect/1`` of a binary (default ``:limit`` and ``:printable_limit``)."""
    head = text[:_INSPECT_PRINTABLE_LIMIT]
    if all(_elixir_printable(c) for c in head):
        body = "".join(_PRINTABLE_ESCAPES.get(c, c) for c in head).replace("#{", "\\#{")
        if len(text) > _INSPECT_PRINTABLE_LIMIT:
            return f'"{body}" <> ...'
        return f'"{body}"'
    data = text.encode("utf-8", "surrogatepass")
    items = [str(b) for b in data[:_INSPECT_LIMIT]]
    if len(data) > _INSPECT_LIMIT:
        items.append("...")
    return "<<" + ", ".join(items) + ">>"


def _inspect_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_inspect_string(item) for item in items) + "]"


def _unquote_value(value: str) -> str:
    """PostgREST-style ``"..."`` with ``\\`` escapes; anything malformed is taken literally."""
    if not value.startswith('"'):
        return value
    out: list[str] = []
    i = 1
    n = len(value)
    while i < n:
        char = value[i]
        if char == '"':
            return "".join(out) if i == n - 1 else value
        if char == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    return value


def _parse_segment(segment: str) -> Condition:
    trimmed = _trim(segment)
    if not trimmed:
        raise FilterError(_PARSE_PREFIX + "filter must not contain empty segments (check for extra commas)")
    column_rest = trimmed.split("=", 1)
    if len(column_rest) != 2:
        raise FilterError(_PARSE_PREFIX + _inspect_list(column_rest))
    column, rest = column_rest
    negate = rest.startswith("not.")
    op_value = rest[4:] if negate else rest
    parts = op_value.split(".", 1)
    if len(parts) != 2 or parts[0] not in FILTER_OPERATORS:
        raise FilterError(_PARSE_PREFIX + _inspect_list(parts))
    op, value = parts
    if op == "in":
        if not (len(value) >= 2 and value.startswith("(") and value.endswith(")")):
            raise FilterError(_PARSE_PREFIX + "`in` filter value must be wrapped by parentheses")
        raw = "{" + value[1:-1] + "}"
        try:
            elements: tuple[str | None, ...] | None = tuple(_parse_pg_array(raw))
        except FilterError:
            elements = None  # the database rejects it, at subscribe time
        return Condition(column=column, op=op, value=elements, negate=negate, raw_value=raw)
    unquoted = _unquote_value(value)
    return Condition(column=column, op=op, value=unquoted, negate=negate, raw_value=unquoted)


def parse_filter(text: str | None) -> tuple[Condition, ...]:
    """Parse a ``postgres_changes`` filter exactly as the official server does.

    ``None``, ``""`` and whitespace mean "no filter" (an empty tuple). The conditions are ANDed.

    Only the shape is checked, as the official parser does; whether the columns exist and the
    values suit their types is the job of :func:`validate_filter`.

    Raises:
        FilterError: with the official text, e.g. ``Error parsing `filter` params: ["foo", "hey"]``.
    """
    if text is None:
        return ()
    trimmed = _trim(text)
    if not trimmed:
        return ()
    return tuple(_parse_segment(segment) for segment in _split_top_level(trimmed))


# --------------------------------------------------------------------------------------------
# Postgres array literals (the stored form of ``in`` values, and array columns).
# --------------------------------------------------------------------------------------------

_PG_ARRAY_WHITESPACE: Final = " \t\n\r\v\f"


def _malformed_array(literal: str) -> FilterError:
    return FilterError(f'malformed array literal: "{literal}"', "22P02")


def _parse_pg_array(literal: str) -> list[str | None]:
    """Elements of a one-dimensional Postgres array literal ``{a,"b c",NULL}`` (``array_in``)."""
    text = literal.strip(_PG_ARRAY_WHITESPACE)
    if not text.startswith("{"):
        raise _malformed_array(literal)
    i = 1
    n = len(text)
    elements: list[str | None] = []

    def skip_ws(pos: int) -> int:
        while pos < n and text[pos] in _PG_ARRAY_WHITESPACE:
            pos += 1
        return pos

    i = skip_ws(i)
    if i < n and text[i] == "}":
        if skip_ws(i + 1) != n:
            raise _malformed_array(literal)
        return elements
    while True:
        i = skip_ws(i)
        if i >= n:
            raise _malformed_array(literal)
        if text[i] == '"':
            i += 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise _malformed_array(literal)
                char = text[i]
                if char == "\\":
                    if i + 1 >= n:
                        raise _malformed_array(literal)
                    buf.append(text[i + 1])
                    i += 2
                elif char == '"':
                    i += 1
                    break
                else:
                    buf.append(char)
                    i += 1
            elements.append("".join(buf))
            i = skip_ws(i)
        else:
            buf = []
            kept = 0  # length of buf up to its last escaped or non-blank character
            escaped_any = False
            while i < n and text[i] not in ",}":
                char = text[i]
                if char in '{"':
                    raise _malformed_array(literal)  # nested arrays / stray quotes
                if char == "\\":
                    if i + 1 >= n:
                        raise _malformed_array(literal)
                    buf.append(text[i + 1])
                    kept = len(buf)
                    escaped_any = True
                    i += 2
                    continue
                buf.append(char)
                if char not in _PG_ARRAY_WHITESPACE:
                    kept = len(buf)
                i += 1
            element = "".join(buf[:kept])
            if not element:
                raise _malformed_array(literal)
            if not escaped_any and element.upper() == "NULL":
                elements.append(None)
            else:
                elements.append(element)
        if i >= n:
            raise _malformed_array(literal)
        if text[i] == ",":
            i += 1
            continue
        if text[i] == "}":
            if skip_ws(i + 1) != n:
                raise _malformed_array(literal)
            return elements
        raise _malformed_array(literal)


# --------------------------------------------------------------------------------------------
# Types: coercing filter text and decoded record values to comparable keys.
# --------------------------------------------------------------------------------------------

# Aliases the caller may use for column types -> canonical pg_type.typname.
_TYPE_ALIASES: Final = {
    "smallint": "int2",
    "integer": "int4",
    "int": "int4",
    "bigint": "int8",
    "real": "float4",
    "double precision": "float8",
    "decimal": "numeric",
    "boolean": "bool",
    "character varying": "varchar",
    "character": "bpchar",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time without time zone": "time",
}
# typname -> how Postgres spells the type in messages (regtype::text).
_TYPE_DISPLAY: Final = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double precision",
    "bool": "boolean",
    "varchar": "character varying",
    "bpchar": "character",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "time": "time without time zone",
}
_INT_RANGES: Final = {
    "int2": (-(2**15), 2**15 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
    "oid": (0, 2**32 - 1),
}
_FLOAT_TYPES: Final = frozenset({"float4", "float8", "numeric"})
_TEXT_TYPES: Final = frozenset({"text", "varchar", "bpchar", "char", "name", "citext"})
_TIME_TYPES: Final = frozenset({"timestamptz", "timestamp", "date", "time"})


@attrs.frozen
class _Type:
    name: str  # canonical typname of the element type
    array: bool

    @property
    def display(self) -> str:
        base = _TYPE_DISPLAY.get(self.name, self.name)
        return base + "[]" if self.array else base


def _resolve_type(type_name: str) -> _Type:
    name = type_name.strip().lower()
    array = False
    if name.startswith("_"):
        name, array = name[1:], True
    elif name.endswith("[]"):
        name, array = name[:-2].strip(), True
    return _Type(_TYPE_ALIASES.get(name, name), array)


def _invalid_input(type_: str, text: str, sqlstate: str = "22P02") -> FilterError:
    return FilterError(f'invalid input syntax for type {_TYPE_DISPLAY.get(type_, type_)}: "{text}"', sqlstate)


_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMERIC_SPECIAL: Final = {
    "nan": "NaN",
    "infinity": "Infinity",
    "+infinity": "Infinity",
    "-infinity": "-Infinity",
    "inf": "Infinity",
    "+inf": "Infinity",
    "-inf": "-Infinity",
}
_BOOL_WORDS: Final = (("true", True), ("false", False), ("yes", True), ("no", False))


def _parse_bool(text: str) -> bool:
    """Postgres ``boolin``: t/true/y/yes/on/1, f/false/n/no/off/0, unique prefixes, any case."""
    word = text.strip().lower()
    if word:
        for full, result in _BOOL_WORDS:
            if full.startswith(word):
                return result
        if len(word) >= 2 and "on".startswith(word):
            return True
        if len(word) >= 2 and "off".startswith(word):
            return False
        if word in ("1", "0"):
            return word == "1"
    raise _invalid_input("bool", text)


def _numeric_key(value: Decimal) -> tuple[Any, ...]:
    # Postgres sorts NaN above every other value (Infinity included) and NaN = NaN.
    return (1,) if value.is_nan() else (0, value)


def _parse_number(type_: str, text: str) -> tuple[Any, ...]:
    stripped = text.strip()
    if type_ in _INT_RANGES:
        if not _INT_RE.fullmatch(stripped):
            raise _invalid_input(type_, text)
        number = int(stripped)
        low, high = _INT_RANGES[type_]
        if not low <= number <= high:
            display = _TYPE_DISPLAY.get(type_, type_)
            raise FilterError(f'value "{text}" is out of range for type {display}', "22003")
        return (0, Decimal(number))
    special = _NUMERIC_SPECIAL.get(stripped.lower())
    if special is not None:
        return _numeric_key(Decimal(special))
    if not _NUMBER_RE.fullmatch(stripped):
        raise _invalid_input(type_, text)
    try:
        return _numeric_key(Decimal(stripped))
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        raise _invalid_input(type_, text) from None


_TZ_SUFFIX_RE: Final = re.compile(r"([+-]\d{2})(\d{2})?$")


def _parse_datetime(type_: str, text: str) -> tuple[Any, ...]:
    stripped = text.strip()
    lowered = stripped.lower()
    if type_ != "time":
        if lowered in ("infinity", "+infinity"):
            return (2,)
        if lowered == "-infinity":
            return (0,)
    candidate = stripped
    if candidate.endswith(("z", "Z")):
        candidate = candidate[:-1] + "+00:00"
    # "+00" / "+0530" -> "+00:00" / "+05:30" (Postgres output uses the short forms).
    match = _TZ_SUFFIX_RE.search(candidate)
    if match and len(candidate) > 10:
        hours, minutes = match.group(1), match.group(2) or "00"
        candidate = candidate[: match.start()] + f"{hours}:{minutes}"
    try:
        if type_ == "time":
            parsed_time = _dt.time.fromisoformat(candidate)
            return (1, parsed_time.replace(tzinfo=None))
        parsed = _dt.datetime.fromisoformat(candidate)
    except ValueError:
        raise _invalid_input(type_, text, "22007") from None
    if type_ == "date":
        return (1, parsed.date())
    if type_ == "timestamp":
        return (1, parsed.replace(tzinfo=None))  # timestamp input ignores a zone
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)  # the session time zone of Supabase is UTC
    return (1, parsed)


def _reject_json_constant(name: str) -> Any:
    raise ValueError(name)


def _jsonb_key(value: Any) -> tuple[Any, ...]:
    """A hashable, type-faithful form of a JSON value (``true`` is not ``1``; ``1`` is ``1.0``)."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | Decimal):
        return ("number", Decimal(value))
    if isinstance(value, float):
        return ("number", Decimal(repr(value)))
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list | tuple):
        return ("array", tuple(_jsonb_key(item) for item in value))
    if isinstance(value, Mapping):
        return ("object", tuple(sorted((str(k), _jsonb_key(v)) for k, v in value.items())))
    raise TypeError(f"not a JSON value: {value!r}")


def _parse_jsonb(text: str) -> tuple[Any, ...]:
    try:
        decoded = json.loads(text, parse_float=Decimal, parse_constant=_reject_json_constant)
    except ValueError:
        raise FilterError("invalid input syntax for type json", "22P02") from None
    return _jsonb_key(decoded)


def _text_key(type_: str, text: str) -> Any:
    if type_ == "bpchar":
        return text.rstrip(" ")  # trailing blanks are insignificant in character(n)
    if type_ == "citext":
        return text.lower()
    return text


def _coerce_text(type_: str, text: str) -> Any:
    """Filter text (or a record's text value) -> comparison key, as ``text::type`` would."""
    if type_ in _INT_RANGES or type_ in _FLOAT_TYPES:
        return _parse_number(type_, text)
    if type_ == "bool":
        return _parse_bool(text)
    if type_ in _TIME_TYPES:
        return _parse_datetime(type_, text)
    if type_ == "uuid":
        try:
            return uuid.UUID(text.strip())
        except ValueError:
            raise _invalid_input(type_, text) from None
    if type_ == "jsonb":
        return _parse_jsonb(text)
    return _text_key(type_, text)


def _coerce_array_text(type_: _Type, text: str) -> tuple[Any, ...]:
    return tuple(_element_key(type_.name, element) for element in _parse_pg_array(text))


def _element_key(type_: str, element: str | None) -> tuple[Any, ...]:
    # In array comparisons Postgres treats NULL elements as equal to each other and larger than
    # any non-NULL element.
    return (1,) if element is None else (0, _coerce_text(type_, element))


def _json_text(value: Any) -> str:
    """``value #>> '{}'``: a JSON value as the text Postgres casts from."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, separators=(", ", ": "))


def _coerce_record(type_: _Type, value: Any) -> Any:
    """A decoded (JSON-typed) record value -> comparison key. ``value`` is not None."""
    if type_.array:
        if isinstance(value, str):
            return _coerce_array_text(type_, value)
        if isinstance(value, list | tuple):
            return tuple(
                (1,) if item is None else (0, _coerce_record(_Type(type_.name, False), item))
                for item in value
            )
        raise _invalid_input(type_.display, _json_text(value))
    if type_.name == "jsonb":
        return _jsonb_key(value)
    if type_.name == "bool" and isinstance(value, bool):
        return value
    if type_.name in _INT_RANGES or type_.name in _FLOAT_TYPES:
        if isinstance(value, bool):
            raise _invalid_input(type_.name, _json_text(value))
        if isinstance(value, int):
            return (0, Decimal(value))
        if isinstance(value, float):
            if math.isnan(value):
                return (1,)
            return (0, Decimal(value) if math.isinf(value) else Decimal(repr(value)))
        if isinstance(value, Decimal):
            return _numeric_key(value)
    return _coerce_text(type_.name, _json_text(value))


def _coerce_filter(type_: _Type, text: str) -> Any:
    if type_.array:
        return _coerce_array_text(type_, text)
    return _coerce_text(type_.name, text)


# --------------------------------------------------------------------------------------------
# Operators.
# --------------------------------------------------------------------------------------------

_ORDERING_OPS: Final = frozenset({"lt", "lte", "gt", "gte"})
_PATTERN_OPS: Final = frozenset({"like", "ilike", "match", "imatch"})
_SQL_SYMBOLS: Final = {
    "eq": "=",
    "neq": "<>",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "like": "~~",
    "ilike": "~~*",
    "match": "~",
    "imatch": "~*",
}


def _operator_error(cond: Condition, type_: _Type, reason: str) -> FilterError:
    return _raise_exception(
        f"operator {cond.op} is not supported on column {cond.column} of type {type_.display}: {reason}"
    )


def _check_operator(cond: Condition, type_: _Type) -> None:
    """Whether the operator applies to the column type (the official probe of ``check_equality_op``)."""
    if cond.op in _PATTERN_OPS:
        if type_.array or type_.name not in _TEXT_TYPES:
            symbol = _SQL_SYMBOLS[cond.op]
            raise _operator_error(
                cond, type_, f"operator does not exist: {type_.display} {symbol} {type_.display}"
            )
        if cond.op in ("like", "ilike"):
            _like_regex(str(cond.value), cond.op == "ilike")
    elif type_.name == "json" and not type_.array:
        symbol = _SQL_SYMBOLS.get(cond.op, "=")
        raise _operator_error(cond, type_, f"operator does not exist: json {symbol} json")
    elif type_.name == "jsonb" and not type_.array and cond.op in _ORDERING_OPS:
        raise _operator_error(cond, type_, "ordering jsonb values is not supported by trio_realtime")


def check_columns(conditions: Iterable[Condition], column_types: Mapping[str, str]) -> None:
    """Raise like the official server when a filter names a column the table doesn't have.

    Args:
        conditions: from :func:`parse_filter`.
        column_types: column name -> ``pg_type.typname`` (``"int4"``, ``"_text"``...), only the
            columns the subscriber may SELECT.

    Raises:
        FilterError: ``invalid column for filter <column>`` (``sqlstate`` ``P0001``).
    """
    for cond in conditions:
        if cond.column not in column_types:
            raise _raise_exception(f"invalid column for filter {cond.column}")


def validate_filter(conditions: Iterable[Condition], column_types: Mapping[str, str]) -> None:
    """Everything the official ``subscription_check_filters`` trigger checks at subscribe time.

    Per condition, in order: the column exists; an ``in`` list is a valid array of the column's
    type with at most :data:`MAX_IN_VALUES` values; ``is`` takes ``null``/``true``/``false``/
    ``unknown`` (the last three only on ``bool`` columns); ``match``/``imatch`` patterns compile;
    other values cast to the column type; the operator applies to the type.

    Raises:
        FilterError: the database's message, with ``sqlstate`` set.
    """
    for cond in conditions:
        check_columns((cond,), column_types)
        type_ = _resolve_type(column_types[cond.column])
        if cond.op == "in":
            if type_.array:
                raise _operator_error(cond, type_, "`in` on array columns is not supported by trio_realtime")
            elements = _parse_pg_array(cond.raw_value)
            for element in elements:
                if element is not None:
                    _coerce_text(type_.name, element)
            if len(elements) > MAX_IN_VALUES:
                raise _raise_exception(f"too many values for `in` filter. Maximum {MAX_IN_VALUES}")
        elif cond.op == "is":
            if cond.value not in _IS_KEYWORDS:
                raise _raise_exception("invalid value for is filter: must be null, true, false, or unknown")
            if cond.value != "null" and (type_.name != "bool" or type_.array):
                raise _raise_exception(
                    f"is {cond.value} filter requires a boolean column, got {type_.display}"
                )
        else:
            if cond.op in ("match", "imatch"):
                try:
                    _compile_posix(str(cond.value), False)
                except FilterError as exc:
                    raise _raise_exception(
                        f"invalid regular expression for {cond.op} filter: {exc}"
                    ) from None
            elif cond.op not in ("like", "ilike"):
                _coerce_filter(type_, str(cond.value))
            try:
                _check_operator(cond, type_)
            except FilterError as exc:
                if exc.message.startswith("operator "):
                    raise
                raise _operator_error(cond, type_, exc.message) from None


def _like_regex(pattern: str, insensitive: bool) -> re.Pattern[str]:
    return _like_regex_cached(pattern, insensitive)


@lru_cache(maxsize=1024)
def _like_regex_cached(pattern: str, insensitive: bool) -> re.Pattern[str]:
    """SQL LIKE -> regex: ``%`` any run, ``_`` one character, ``\\`` escapes the next one."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 >= len(pattern):
                raise FilterError("LIKE pattern must not end with escape character", "22025")
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if insensitive else 0)
    return re.compile("".join(out), flags)


_POSIX_CLASSES: Final = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r"\s",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "cntrl": r"\x00-\x1f\x7f",
}
_POSIX_CLASS_RE: Final = re.compile(r"\[:([a-z]+):\]")


@lru_cache(maxsize=1024)
def _compile_posix(pattern: str, insensitive: bool) -> re.Pattern[str]:
    """A Postgres (ARE) regex as a Python one: the common syntax is the same.

    Bracket classes such as ``[[:digit:]]`` are translated (ASCII only).
    """

    def translate(match: re.Match[str]) -> str:
        body = _POSIX_CLASSES.get(match.group(1))
        if body is None:
            raise FilterError(f"invalid character class: {match.group(1)}", "2201B")
        return body

    translated = _POSIX_CLASS_RE.sub(translate, pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(translated, re.IGNORECASE if insensitive else 0)
    except (re.error, RecursionError, OverflowError) as exc:
        message = getattr(exc, "msg", str(exc))
        raise FilterError(f"invalid regular expression: {message}", "2201B") from None


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return bool(left == right)
    if op == "neq":
        return bool(left != right)
    if op == "lt":
        return bool(left < right)
    if op == "lte":
        return bool(left <= right)
    if op == "gt":
        return bool(left > right)
    return bool(left >= right)


def _evaluate_condition(cond: Condition, value: Any, type_: _Type) -> bool | None:
    """Three-valued: True, False, or None (SQL unknown)."""
    op = cond.op
    if op == "is":
        if cond.value == "null":
            result: bool | None = value is None
        elif cond.value not in _IS_KEYWORDS:
            raise _raise_exception("invalid value for is filter: must be null, true, false, or unknown")
        elif type_.name != "bool" or type_.array:
            raise _raise_exception(f"is {cond.value} filter requires a boolean column, got {type_.display}")
        elif cond.value == "unknown":
            result = value is None
        else:
            result = value is not None and _coerce_record(type_, value) is (cond.value == "true")
        return (not result) if cond.negate else result
    if op == "isdistinct":
        _check_operator(cond, type_)
        right = _coerce_filter(type_, str(cond.value))
        distinct = value is None or _coerce_record(type_, value) != right
        return (not distinct) if cond.negate else distinct
    if op == "in":
        if cond.value is None or not isinstance(cond.value, tuple):
            _parse_pg_array(cond.raw_value)  # raises: malformed array literal
            raise AssertionError("unreachable")  # pragma: no cover
        if type_.array:
            raise _operator_error(cond, type_, "`in` on array columns is not supported by trio_realtime")
        keys = [None if element is None else _coerce_text(type_.name, element) for element in cond.value]
        if not keys:
            result = False  # x = any('{}') is false, even for a NULL x
        elif value is None:
            result = None
        else:
            left = _coerce_record(type_, value)
            if any(key is not None and left == key for key in keys):
                result = True
            elif any(key is None for key in keys):
                result = None
            else:
                result = False
    else:
        _check_operator(cond, type_)
        if value is None:
            return None
        pattern = str(cond.value)
        if op in ("like", "ilike"):
            result = _like_regex(pattern, op == "ilike").fullmatch(_json_text(value)) is not None
        elif op in ("match", "imatch"):
            result = _compile_posix(pattern, op == "imatch").search(_json_text(value)) is not None
        else:
            left = _coerce_record(type_, value)
            right = _coerce_filter(type_, pattern)
            try:
                result = _compare(op, left, right)
            except TypeError:
                raise _operator_error(cond, type_, "values are not comparable") from None
    if result is None:
        return None
    return (not result) if cond.negate else result


def evaluate_filter(
    conditions: Iterable[Condition], record: Mapping[str, Any], column_types: Mapping[str, str]
) -> bool:
    """Whether a decoded row passes every condition, with SQL semantics.

    Args:
        conditions: from :func:`parse_filter` (no conditions: every row matches).
        record: column -> JSON-typed value (``None`` is SQL NULL), as decoded from wal2json.
        column_types: column -> ``pg_type.typname`` (``"int4"``, ``"timestamptz"``, ``"_text"``...);
            a column missing here is compared as text.

    Returns:
        True only if every condition is true. False and unknown (any comparison with NULL, and
        ``not.`` of it) both mean "no match", as does a condition on a column the record lacks.

    Raises:
        FilterError: a value doesn't suit the column's type (what :func:`validate_filter` would
            have refused at subscribe time).
    """
    for cond in conditions:
        if cond.column not in record:
            return False
        type_ = _resolve_type(column_types.get(cond.column, "text"))
        if _evaluate_condition(cond, record[cond.column], type_) is not True:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Building (client side).
# --------------------------------------------------------------------------------------------

_Scalar = str | int | float | Decimal | bool | _dt.date | _dt.time | uuid.UUID


def _check_column(column: object) -> str:
    if not isinstance(column, str):
        raise LocalProtocolError(f"filter column must be a str, got {type(column).__name__}")
    if not column:
        raise LocalProtocolError("filter column must not be empty")
    for bad in ("=", ",", "(", ")", '"'):
        if bad in column:
            raise LocalProtocolError(
                f"filter column {column!r} must not contain {bad!r}: the server splits the filter on it"
            )
    if column != _trim(column) or column != column.strip():
        raise LocalProtocolError(f"filter column {column!r} must not start or end with whitespace")
    return column


def _value_text(column: str, value: object) -> str:
    if value is None:
        raise LocalProtocolError(
            f"filter value for {column!r} is None: comparisons with NULL never match; "
            f"use Filter.is_({column!r}, None)"
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return "NaN"
        return str(value)
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise LocalProtocolError(
        f"filter value for {column!r} must be str, int, float, Decimal, bool, date/time or UUID, "
        f"got {type(value).__name__}"
    )


def _needs_quotes(text: str) -> bool:
    if not text:
        return False
    if any(char in text for char in ',()"'):
        return True
    return text[0] in _ELIXIR_WHITESPACE or text[-1] in _ELIXIR_WHITESPACE or text != text.strip()


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wire_value(text: str) -> str:
    return _quote(text) if _needs_quotes(text) else text


def _element_needs_quotes(text: str) -> bool:
    return (
        not text
        or text.upper() == "NULL"
        or any(char in text for char in ',(){}"\\')
        or any(char in _PG_ARRAY_WHITESPACE for char in text)
        or text != _trim(text)
    )


def _wire_element(text: str) -> str:
    return _quote(text) if _element_needs_quotes(text) else text


def _render(cond: Condition) -> str:
    prefix = f"{cond.column}={'not.' if cond.negate else ''}{cond.op}."
    if cond.op == "in":
        assert isinstance(cond.value, tuple)
        return prefix + "(" + ",".join(_wire_element(str(e)) for e in cond.value) + ")"
    return prefix + _wire_value(str(cond.value))


@final
@attrs.frozen
class Filter:
    """A ``postgres_changes`` filter, built from typed parts; ``str(f)`` is the wire string.

    ``Filter.eq("id", 1) & Filter.in_("status", ["open", "on hold"])`` renders as
    ``id=eq.1,status=in.(open,"on hold")``. ``&`` is AND (the only combinator the server knows);
    ``~`` adds ``not.`` to a single condition. Values are quoted where the server's splitter would
    otherwise cut them, so ``parse_filter(str(f)) == f.conditions`` always holds.

    Raises:
        LocalProtocolError: for a filter the server could never accept or that can never match
            (an empty column, a ``None`` compared with ``eq``, an empty ``in``...).
    """

    conditions: tuple[Condition, ...]

    @staticmethod
    def _single(op: str, column: str, value: object) -> Filter:
        column = _check_column(column)
        text = _value_text(column, value)
        return Filter((Condition(column=column, op=op, value=text, negate=False, raw_value=text),))

    @staticmethod
    def _pattern(op: str, column: str, pattern: object) -> Filter:
        if not isinstance(pattern, str):
            raise LocalProtocolError(
                f"{op} pattern for {column!r} must be a str, got {type(pattern).__name__}"
            )
        if op in ("like", "ilike"):
            try:
                _like_regex(pattern, False)
            except FilterError as exc:
                raise LocalProtocolError(f"{op} pattern for {column!r} is invalid: {exc}") from None
        else:
            try:
                _compile_posix(pattern, False)
            except FilterError as exc:
                raise LocalProtocolError(f"{op} pattern for {column!r} is invalid: {exc}") from None
        return Filter._single(op, column, pattern)

    @staticmethod
    def eq(column: str, value: _Scalar) -> Filter:
        """``column = value``."""
        return Filter._single("eq", column, value)

    @staticmethod
    def neq(column: str, value: _Scalar) -> Filter:
        """``column <> value``."""
        return Filter._single("neq", column, value)

    @staticmethod
    def lt(column: str, value: _Scalar) -> Filter:
        """``column < value``."""
        return Filter._single("lt", column, value)

    @staticmethod
    def lte(column: str, value: _Scalar) -> Filter:
        """``column <= value``."""
        return Filter._single("lte", column, value)

    @staticmethod
    def gt(column: str, value: _Scalar) -> Filter:
        """``column > value``."""
        return Filter._single("gt", column, value)

    @staticmethod
    def gte(column: str, value: _Scalar) -> Filter:
        """``column >= value``."""
        return Filter._single("gte", column, value)

    @staticmethod
    def like(column: str, pattern: str) -> Filter:
        """``column LIKE pattern`` (``%`` any run, ``_`` one character, ``\\`` escapes)."""
        return Filter._pattern("like", column, pattern)

    @staticmethod
    def ilike(column: str, pattern: str) -> Filter:
        """``column ILIKE pattern`` (case-insensitive LIKE)."""
        return Filter._pattern("ilike", column, pattern)

    @staticmethod
    def match(column: str, pattern: str) -> Filter:
        """``column ~ pattern`` (POSIX regular expression, unanchored)."""
        return Filter._pattern("match", column, pattern)

    @staticmethod
    def imatch(column: str, pattern: str) -> Filter:
        """``column ~* pattern`` (case-insensitive regular expression)."""
        return Filter._pattern("imatch", column, pattern)

    @staticmethod
    def in_(column: str, values: Iterable[_Scalar]) -> Filter:
        """``column = any(values)``: 1 to 100 values, none of them ``None``."""
        column = _check_column(column)
        if isinstance(values, str | bytes):
            raise LocalProtocolError(
                f"in_ values for {column!r} must be a collection of values, not a string"
            )
        texts = tuple(_value_text(column, value) for value in values)
        if not texts:
            raise LocalProtocolError(
                f"in_ filter on {column!r} needs at least one value (it could never match)"
            )
        if len(texts) > MAX_IN_VALUES:
            raise LocalProtocolError(
                f"in_ filter on {column!r} has {len(texts)} values; the server allows at most {MAX_IN_VALUES}"
            )
        raw = "{" + ",".join(_wire_element(text) for text in texts) + "}"
        return Filter((Condition(column=column, op="in", value=texts, negate=False, raw_value=raw),))

    @staticmethod
    def is_(column: str, value: bool | None) -> Filter:
        """``column IS NULL`` / ``IS TRUE`` / ``IS FALSE`` (the last two on boolean columns)."""
        column = _check_column(column)
        if value is not None and not isinstance(value, bool):
            raise LocalProtocolError(f"is_ takes None, True or False for {column!r}, got {value!r}")
        text = "null" if value is None else ("true" if value else "false")
        return Filter((Condition(column=column, op="is", value=text, negate=False, raw_value=text),))

    @staticmethod
    def isdistinct(column: str, value: _Scalar) -> Filter:
        """``column IS DISTINCT FROM value`` (NULL-safe inequality; ``~`` makes it NULL-safe equality)."""
        return Filter._single("isdistinct", column, value)

    def __and__(self, other: Filter) -> Filter:
        if not isinstance(other, Filter):
            return NotImplemented
        return Filter(self.conditions + other.conditions)

    def __invert__(self) -> Filter:
        if len(self.conditions) != 1:
            raise LocalProtocolError(
                f"cannot negate {str(self)!r}: the filter grammar only negates single conditions "
                "(there is no NOT or OR over a group); negate each condition instead"
            )
        cond = self.conditions[0]
        return Filter((attrs.evolve(cond, negate=not cond.negate),))

    def __str__(self) -> str:
        return ",".join(_render(cond) for cond in self.conditions)
