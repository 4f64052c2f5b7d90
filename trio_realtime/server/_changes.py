"""postgres_changes without I/O: bindings, wal2json decoding, matching (PROTOCOL.md §6).

Theory of operation
-------------------
Everything here is pure data in, data out, so it is tested without a database:

* :func:`parse_binding` turns one ``config.postgres_changes`` entry of a join into a
  :class:`Binding` (event, schema, table, parsed filter, ``select``), or raises
  :class:`BindingError` carrying the official error text (§6.1 to 6.3). Filter text is parsed
  by :mod:`trio_realtime.protocol._filters`.
* :func:`decode_change` turns one wal2json (format-version 2) action into a
  :class:`Change`: the §6.4 ``data`` object plus what matching needs. Values are made
  JSON-typed the way the official server's ``realtime.cast`` (``to_jsonb(value::type)``)
  does: wal2json already emits numbers and booleans as JSON; json/jsonb text is parsed;
  array literals become lists (element-typed); timestamps get ``to_jsonb``'s ISO form
  (``2024-01-01T10:00:00.123+00:00``); bytea arrives from wal2json as hex without ``\\x``;
  everything else stays a string.
* :func:`Binding.matches` decides whether a change is for a binding; :func:`select_data`
  narrows ``data`` to a binding's ``select`` columns.

The official server's quirks kept here: ``event`` is case-insensitive and anything unknown
means ``*``; an UPDATE's ``record`` takes unchanged-TOAST columns from ``old_record``; an
INSERT/UPDATE on a table without primary key produces the ``Error 400`` shape (delivered to
every binding of the table, filters not applied); a wal2json action larger than
``max_record_bytes`` produces ``Error 413`` with only the values of at most 64 bytes kept.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from ..protocol._filters import Condition, FilterError, evaluate_filter, parse_filter

__all__ = [
    "Binding",
    "BindingError",
    "Change",
    "TypeInfo",
    "commit_timestamp",
    "decode_change",
    "elixir_inspect",
    "parse_array_literal",
    "parse_binding",
    "parse_lsn",
    "select_data",
]

#: The official ``poll_max_record_bytes``.
MAX_RECORD_BYTES: Final = 1024 * 1024
#: What survives in a record that was too large (``octet_length(value::text) <= 64``).
_KEPT_VALUE_BYTES: Final = 64
_EVENTS: Final = ("INSERT", "UPDATE", "DELETE")
_ACTIONS: Final = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}
ERROR_413: Final = "Error 413: Payload Too Large"
ERROR_400: Final = "Error 400: Bad Request, no primary key"


class BindingError(Exception):
    """A postgres_changes binding the server cannot subscribe to.

    ``str(exc)`` is the exact ``message`` of the ``system`` error push (§6.3); the channel
    stays joined.
    """


# -- Elixir-style rendering for the official error texts ------------------------------------------


def _inspect_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def elixir_inspect(value: object) -> str:
    """``inspect/1`` of a decoded JSON value as Elixir prints it (maps with sorted keys)."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _inspect_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "{" + ", ".join(elixir_inspect(v) for v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(elixir_inspect(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "%{" + ", ".join(f"{elixir_inspect(k)} => {elixir_inspect(v)}" for k, v in items) + "}"
    return _inspect_string(str(value))


def _to_log(value: object) -> str:
    return value if isinstance(value, str) else elixir_inspect(value)


# -- bindings ----------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Binding:
    """One parsed ``postgres_changes`` binding of a channel.

    Attributes:
        id: the id echoed in the join reply and listed in ``postgres_changes.ids``.
        event: ``"*"``, ``"INSERT"``, ``"UPDATE"`` or ``"DELETE"``.
        schema: a schema name or ``"*"``.
        table: a table name or ``"*"``.
        conditions: the parsed filter (ANDed); empty for no filter.
        filters: the filter as the official server logs it: ``(column, op, value, negate)``.
        select: the ``select`` column list, or None for every column.
    """

    id: int
    event: str
    schema: str
    table: str
    conditions: tuple[Condition, ...] = ()
    filters: tuple[tuple[str, str, str, bool], ...] = ()
    select: tuple[str, ...] | None = None

    def params_log(self) -> str:
        """The official ``params_to_log``.

        E.g. ``event: *, schema: public, table: t, filters: [], select: nil``.
        """
        select = list(self.select) if self.select is not None else None
        return (f"event: {self.event}, schema: {self.schema}, table: {self.table}, "
                f"filters: {elixir_inspect(list(self.filters))}, select: {_to_log(select)}")

    def not_found_message(self) -> str:
        """The error when no table matches schema/table (§6.3)."""
        return ("Unable to subscribe to changes with given parameters. Please check Realtime is enabled "
                f"for the given connect parameters: [{self.params_log()}]")

    def exception_message(self, exception: str) -> str:
        """The error when the database refused the subscription (§6.3), e.g. a bad filter column."""
        return ("Unable to subscribe to changes with given parameters. An exception happened so please "
                f"check your connect parameters: [{self.params_log()}]. Exception: {exception}")

    def matches(self, change: Change) -> bool:
        """Whether ``change`` is for this binding: event, schema, table, then the filter.

        A DELETE is filtered against its ``old_record``. The ``Error 400`` (no primary key)
        shape goes to every binding of the table, as the official server does.
        """
        if self.event != "*" and self.event != change.type:
            return False
        if self.schema != "*" and self.schema != change.schema:
            return False
        if self.table != "*" and self.table != change.table:
            return False
        if not self.conditions or change.no_primary_key:
            return True
        row = change.old_record if change.type == "DELETE" else change.record
        try:
            return evaluate_filter(self.conditions, row or {}, change.column_types)
        except FilterError:
            # A value the filter cannot be compared with (subscribe-time validation rules this
            # out for the tables that existed then): like SQL's error, no match.
            return False


def _action_filter(params: Mapping[str, Any]) -> str:
    event = params.get("event")
    if isinstance(event, str):
        upper = event.upper()
        if upper in _EVENTS:
            return upper
    return "*"


def _parse_select(params: Mapping[str, Any]) -> tuple[str, ...] | None:
    if "select" not in params:
        return None
    cols = params["select"]
    if isinstance(cols, list):
        valid = tuple(c for c in cols if isinstance(c, str))
        return valid or None
    if isinstance(cols, str):
        raise BindingError('Error parsing `select` params: expected a list of column name strings, '
                           'e.g. select: ["col1", "col2"]')
    return None


def parse_binding(binding: Mapping[str, Any]) -> Binding:
    """Parse one binding as echoed in the join reply (with its ``id``).

    Raises:
        BindingError: the official parse error (§6.1, §6.2).
    """
    binding_id = binding.get("id")
    if not isinstance(binding_id, int) or isinstance(binding_id, bool):
        raise TypeError("parse_binding wants the echoed binding, with its integer id")
    params = {k: v for k, v in binding.items() if k != "id"}
    event = _action_filter(params)
    select = _parse_select(params)
    schema, table, filter_text = params.get("schema"), params.get("table"), params.get("filter")
    has = params.__contains__
    if isinstance(schema, str) and isinstance(table, str) and isinstance(filter_text, str):
        try:
            conditions = parse_filter(filter_text)
        except FilterError as exc:
            raise BindingError(str(exc)) from None
    elif isinstance(schema, str) and isinstance(table, str) and not has("filter"):
        conditions = ()
    elif isinstance(schema, str) and not has("table") and not has("filter"):
        table, conditions = "*", ()
    elif isinstance(table, str) and not has("schema") and not has("filter"):
        schema, conditions = "public", ()
    elif has("user_token") or has("auth_token"):
        raise BindingError("No subscription params provided. Please provide at least a `schema` or `table` "
                           "to subscribe to: <redacted>")
    else:
        raise BindingError("No subscription params provided. Please provide at least a `schema` or `table` "
                           f"to subscribe to: {elixir_inspect(params)}")
    assert isinstance(schema, str)
    assert isinstance(table, str)
    if select is not None and (schema == "*" or table == "*"):
        raise BindingError("Column selection is not supported for wildcard subscriptions. Provide an "
                           "explicit schema and table name.")
    return Binding(
        id=binding_id, event=event, schema=schema, table=table, conditions=conditions,
        filters=tuple(c.as_tuple() for c in conditions), select=select,
    )


# -- values ------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TypeInfo:
    """What decoding needs to know about a column type (from ``pg_type``).

    Attributes:
        name: ``pg_type.typname`` (``int4``, ``_text``, a domain's own name, ...).
        kind: how values are made JSON: ``json``, ``number``, ``bool``, ``timestamp``,
            ``timestamptz``, ``timetz``, ``array`` or ``text``. Domains take their base
            type's kind.
        element: for arrays, the element's kind.
    """

    name: str
    kind: str = "text"
    element: str = "text"


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` → an int that orders like the LSN."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


_TS_RE: Final = re.compile(
    r"^(?P<date>\d{4,}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d(?:\.\d+)?)"
    r"(?:(?P<sign>[+-])(?P<hh>\d\d)(?::?(?P<mm>\d\d))?(?::?(?P<ss>\d\d))?)?$"
)
_TIMETZ_RE: Final = re.compile(
    r"^(?P<time>\d\d:\d\d:\d\d(?:\.\d+)?)(?P<sign>[+-])(?P<hh>\d\d)(?::?(?P<mm>\d\d))?(?::?(?P<ss>\d\d))?$"
)


def _iso_offset(match: re.Match[str]) -> str:
    if match.group("sign") is None:
        return ""
    offset = f"{match.group('sign')}{match.group('hh')}:{match.group('mm') or '00'}"
    if match.group("ss"):
        offset += f":{match.group('ss')}"
    return offset


def _timestamp(text: str, kind: str) -> str:
    """PostgreSQL's ISO text → what ``to_jsonb`` prints (``T`` separator, ``+HH:MM`` offset)."""
    if kind == "timetz":
        match = _TIMETZ_RE.match(text)
        return f"{match.group('time')}{_iso_offset(match)}" if match else text
    match = _TS_RE.match(text)
    if match is None:  # infinity, BC dates, other DateStyles: as is
        return text
    return f"{match.group('date')}T{match.group('time')}{_iso_offset(match)}"


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value == value and value not in (float("inf"), float("-inf")) else text


def _scalar(value: Any, kind: str) -> Any:
    if not isinstance(value, str):
        return value  # wal2json's numbers, booleans and nulls are JSON already
    if kind == "json":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if kind == "number":
        return _number(value)
    if kind == "bool":
        lowered = value.lower()
        if lowered in ("t", "true"):
            return True
        if lowered in ("f", "false"):
            return False
        return value
    if kind in ("timestamp", "timestamptz", "timetz"):
        return _timestamp(value, kind)
    return value


def parse_array_literal(text: str) -> list[Any]:
    """Parse a PostgreSQL array literal (``{1,2,NULL}``, ``{{"a b",c},{d,e}}``) into nested
    lists of strings and None. An optional ``[1:2]=`` dimension prefix is skipped.

    Raises:
        ValueError: ``text`` is not an array literal.
    """
    pos = 0
    if text.startswith("["):
        pos = text.index("=") + 1
    n = len(text)

    def parse(i: int) -> tuple[list[Any], int]:
        if i >= n or text[i] != "{":
            raise ValueError(f"malformed array literal: {text[:100]!r}")
        i += 1
        items: list[Any] = []
        if i < n and text[i] == "}":
            return items, i + 1
        while True:
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise ValueError(f"malformed array literal: {text[:100]!r}")
            ch = text[i]
            if ch == "{":
                sub, i = parse(i)
                items.append(sub)
            elif ch == '"':
                i += 1
                buf: list[str] = []
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    buf.append(text[i])
                    i += 1
                if i >= n:
                    raise ValueError(f"malformed array literal: {text[:100]!r}")
                i += 1
                items.append("".join(buf))
            else:
                start = i
                buf = []
                while i < n and text[i] not in ",}":
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    buf.append(text[i])
                    i += 1
                raw = "".join(buf).strip()
                if not raw:
                    raise ValueError(f"malformed array literal: {text[:100]!r}")
                items.append(None if raw.upper() == "NULL" and "\\" not in text[start:i] else raw)
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise ValueError(f"malformed array literal: {text[:100]!r}")
            if text[i] == ",":
                i += 1
                continue
            if text[i] == "}":
                return items, i + 1
            raise ValueError(f"malformed array literal: {text[:100]!r}")

    result, end = parse(pos)
    if text[end:].strip():
        raise ValueError(f"malformed array literal: {text[:100]!r}")
    return result


def _convert_elements(items: list[Any], kind: str) -> list[Any]:
    return [
        _convert_elements(item, kind) if isinstance(item, list)
        else None if item is None
        else _scalar(item, kind)
        for item in items
    ]


def convert_value(value: Any, info: TypeInfo) -> Any:
    """One wal2json value → its JSON value in ``record`` (see the module docstring)."""
    if value is None:
        return None
    if info.kind == "array" and isinstance(value, str):
        try:
            return _convert_elements(parse_array_literal(value), info.element)
        except ValueError:
            return value
    return _scalar(value, info.kind)


def commit_timestamp(text: str) -> str | None:
    """wal2json's ``timestamp`` → ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC (milliseconds truncated)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    moment = moment.astimezone(datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


# -- changes -----------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class Change:
    """One decoded row change.

    Attributes:
        schema, table, type: where and what (``INSERT``/``UPDATE``/``DELETE``).
        data: the §6.4 ``data`` object, shared by every binding without ``select``.
            Treat it as immutable: it is encoded once and sent to many sockets.
        record: the full new row (for filters), even when ``data`` was cut by ``Error 413``.
        old_record: the full replica-identity row.
        column_types: column name → ``typname``, for filters.
        primary_key: the primary key's column names.
        no_primary_key: the ``Error 400`` shape.
    """

    schema: str
    table: str
    type: str
    data: dict[str, Any]
    record: dict[str, Any] | None
    old_record: dict[str, Any] | None
    column_types: dict[str, str]
    primary_key: tuple[str, ...]
    no_primary_key: bool = False


def _json_size(value: Any) -> int:
    # jsonb's text form (", " and ": " separators): what octet_length(value::text) measures.
    return len(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8"))


def _small_values(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if _json_size(v) <= _KEPT_VALUE_BYTES}


def decode_change(
    action: Mapping[str, Any],
    *,
    types: Mapping[int, TypeInfo],
    table_columns: Sequence[tuple[str, int]] | None,
    size: int,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Change | None:
    """Decode one wal2json format-version 2 action (``I``/``U``/``D``; None for others).

    Args:
        action: the parsed wal2json JSON of the action.
        types: type oid → :class:`TypeInfo` for every ``typeoid`` in the action and in
            ``table_columns``; an unknown oid decodes as text named by wal2json's ``type``.
        table_columns: the table's current columns ``(name, type oid)`` in ``attnum`` order
            (the ``columns`` list of ``data``), or None to list the action's own columns.
        size: the size of the action's JSON text in bytes (for ``Error 413``).
        max_record_bytes: the ``Error 413`` threshold.
    """
    kind = _ACTIONS.get(str(action.get("action")))
    if kind is None:
        return None
    schema, table = str(action.get("schema")), str(action.get("table"))
    new_cols = action.get("columns") or []
    old_cols = action.get("identity") or []
    primary_key = tuple(str(pk.get("name")) for pk in action.get("pk") or ())

    def info_of(col: Mapping[str, Any]) -> TypeInfo:
        oid = col.get("typeoid")
        info = types.get(oid) if isinstance(oid, int) else None
        return info if info is not None else TypeInfo(name=str(col.get("type")))

    column_types: dict[str, str] = {}
    listed: list[dict[str, str]] = []
    if table_columns is not None:
        for name, oid in table_columns:
            info = types.get(oid)
            typname = info.name if info is not None else "unknown"
            column_types[name] = typname
            listed.append({"name": name, "type": typname})
    for col in (*new_cols, *old_cols):
        name = str(col.get("name"))
        if name not in column_types:
            typname = info_of(col).name
            column_types[name] = typname
            listed.append({"name": name, "type": typname})

    record: dict[str, Any] | None = None
    old_record: dict[str, Any] | None = None
    if kind != "DELETE":
        record = {str(c.get("name")): convert_value(c.get("value"), info_of(c)) for c in new_cols}
    if kind != "INSERT":
        old_record = {str(c.get("name")): convert_value(c.get("value"), info_of(c)) for c in old_cols}
    if kind == "UPDATE" and record is not None and old_record:
        # Unchanged TOASTed columns are missing from wal2json's new tuple: take them from the
        # old one when the replica identity has them (the official full outer join).
        for name, value in old_record.items():
            record.setdefault(name, value)

    if kind != "DELETE" and not primary_key:
        data: dict[str, Any] = {
            "schema": schema, "table": table, "commit_timestamp": None, "type": kind,
            "columns": [], "record": {}, "errors": [ERROR_400],
        }
        return Change(schema=schema, table=table, type=kind, data=data, record=record, old_record=old_record,
                      column_types=column_types, primary_key=primary_key, no_primary_key=True)

    too_large = size > max_record_bytes
    data = {
        "schema": schema,
        "table": table,
        "commit_timestamp": commit_timestamp(str(action.get("timestamp"))),
        "type": kind,
        "columns": listed,
    }
    if record is not None:
        data["record"] = _small_values(record) if too_large else record
    if old_record is not None:
        data["old_record"] = _small_values(old_record) if too_large else old_record
    data["errors"] = [ERROR_413] if too_large else None
    return Change(schema=schema, table=table, type=kind, data=data, record=record, old_record=old_record,
                  column_types=column_types, primary_key=primary_key)


def select_data(change: Change, select: tuple[str, ...] | None) -> dict[str, Any]:
    """``change.data`` narrowed to ``select`` plus the primary key (the same dict if None)."""
    if select is None or change.no_primary_key:
        return change.data
    keep = set(select) | set(change.primary_key)
    data = dict(change.data)
    data["columns"] = [c for c in change.data["columns"] if c["name"] in keep]
    for key in ("record", "old_record"):
        if key in data:
            data[key] = {k: v for k, v in data[key].items() if k in keep}
    return data
