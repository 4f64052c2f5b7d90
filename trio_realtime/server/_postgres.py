"""postgres_changes from a real PostgreSQL, by logical decoding with wal2json.

Why wal2json
------------
The official Realtime server reads changes with **wal2json** (format-version 2, one JSON
object per row change, with ``include-pk``, ``include-timestamp`` and
``include-type-oids``) from a temporary logical replication slot, polled with
``pg_logical_slot_get_changes`` (PROTOCOL.md §6.6). Doing the same here means the values,
the replica-identity rules (``identity`` = the primary key by default, every column with
``REPLICA IDENTITY FULL``), unchanged-TOAST handling and commit timestamps come out the way
the official server sees them, from the same plugin, and the SQL polling interface needs
no replication-protocol support from the driver (psycopg 3 has none), only a normal
connection. pgoutput (the built-in plugin) would need a publication, the streaming
replication protocol and a binary decoder of its own; test_decoding's output is not meant
to be parsed.

Theory of operation
-------------------
A :class:`ChangeFeed` (made by :func:`open_change_feed`) owns two database connections,
each used by one worker at a time through ``trio.to_thread.run_sync`` (psycopg is
blocking; no asyncio anywhere):

* the **capture** connection creates a *temporary* wal2json slot named
  ``trio_realtime_<pid>_<random>`` when the feed opens. PostgreSQL drops a temporary slot
  when its session ends, so no slot (and no retained WAL) outlives the server, even if it
  is killed. The capture task polls the slot with ``pg_logical_slot_get_changes`` (at
  most ``postgres_batch_size`` rows, which PostgreSQL rounds up to whole transactions):
  again at once when a batch was full, else after ``postgres_poll_interval``. Rows arrive
  in commit order; each transaction is collected from its ``B`` to its ``C`` row, whose
  ``lsn`` is the end of the commit record. Decoding (catalog look-ups for type names and
  the table's column list, cached) happens in the same worker thread; the Trio side then
  matches and delivers in commit order. A big transaction must not overflow a subscriber's
  bounded send queue in one burst, so after each row change the feed waits (bounded by
  ``postgres_backpressure_timeout``) for sockets whose queue is more than half full to
  drain to a quarter; a socket that does not is left to the usual overflow policy.
* the **control** connection serves joins: it checks each binding's table exists (and
  its filter columns and values, as the official ``subscription_check_filters`` does) and
  reads ``pg_current_wal_insert_lsn()``.

**Nothing committed after the join reply is missed.** :meth:`ChangeFeed.subscribe` runs
before the hub sends the join reply. It marks a registration *pending*, reads the current
WAL insert position L, and registers the bindings with L. A transaction is delivered to a
registration iff its commit record ends after L. Any transaction that commits after
``subscribe`` started (in particular after the reply) writes its commit record after L,
so it is delivered; one whose commit record was complete before L is not (it committed
before the join). While any registration is pending, the capture task holds the batch it
has decoded instead of dispatching it, so no batch can slip past a registration whose L
is not known yet. (Batches are dispatched synchronously, and a batch fetched before the
registration started only holds commits that ended before L.)

If the capture connection fails, the slot is gone with it: every channel with bindings
gets a ``system`` error (changes may have been missed; rejoin to resubscribe) and loses
its registration, and the feed reconnects with a backoff of 1 s doubling to 10 s. Joins
in between get the official "unable to connect to the project database" error.

Not implemented (yet): row level security and column privileges (every subscriber sees
every row, as the database owner would), the legacy join API (no ``config``), the
tenant events-per-second limit, and numeric values with more than 15 to 17 significant
digits (they become JSON floats).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import trio

from .._util import NoPublicConstructor
from ..protocol._filters import FilterError, validate_filter
from ._changes import (
    MAX_RECORD_BYTES,
    Binding,
    BindingError,
    Change,
    TypeInfo,
    decode_change,
    parse_binding,
    parse_lsn,
    select_data,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    import psycopg

__all__ = [
    "ChangeFeed",
    "DatabaseUnavailable",
    "Delivery",
    "NO_DATABASE_MESSAGE",
    "open_change_feed",
    "redact_dsn",
]

logger = logging.getLogger("trio_realtime.server")

#: One delivery: (channel, the ids of its bindings that matched, the ``data`` object).
Delivery = tuple[Any, tuple[int, ...], dict[str, Any]]

NO_DATABASE_MESSAGE: Final = (
    "postgres_changes are unavailable: this server was started without a database. Start it with "
    "`serve --database-url postgresql://...` or `serve --embedded-postgres` "
    "(serve_realtime(..., database_url=...))."
)
UNABLE_TO_CONNECT: Final = "Realtime was unable to connect to the project database"
CONNECTION_LOST: Final = (
    "Realtime lost its connection to the project database; changes may have been missed. "
    "Rejoin the channel to subscribe again."
)

_WAL2JSON_OPTIONS: Final = (
    "'format-version', '2', 'include-pk', '1', 'include-timestamp', '1', "
    "'include-type-oids', '1', 'include-transaction', '1'"
)
_TABLES_SQL: Final = """
select c.oid::int8
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p')
  and n.nspname <> 'information_schema' and n.nspname not like 'pg\\_%%'
  and (%(schema)s = '*' or n.nspname = %(schema)s)
  and (%(table)s = '*' or c.relname = %(table)s)
"""
_FILTER_COLUMNS_SQL: Final = """
select a.attrelid::int8, a.attname::text, t.typname::text
from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
where a.attrelid = any(%s) and a.attnum > 0 and not a.attisdropped
order by a.attrelid, a.attnum
"""
_TABLE_COLUMNS_SQL: Final = """
select a.attname::text, a.atttypid::int8
from pg_catalog.pg_attribute a
where a.attrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
  and a.attnum > 0 and not a.attisdropped
order by a.attnum
"""
_TYPES_SQL: Final = """
select t.oid::int8, t.typname::text, t.typtype::text, t.typbasetype::int8, t.typelem::int8,
       t.typcategory::text
from pg_catalog.pg_type t where t.oid = any(%s)
"""
_KIND_BY_OID: Final = {
    16: "bool",
    20: "number", 21: "number", 23: "number", 26: "number", 700: "number", 701: "number", 1700: "number",
    114: "json", 3802: "json",
    1114: "timestamp", 1184: "timestamptz", 1266: "timetz",
}


class DatabaseUnavailable(Exception):
    """The database cannot produce postgres_changes: unreachable, or not set up for it.

    The message says which (connection refused, ``wal_level`` is not ``logical``, wal2json
    is not installed, missing privileges...), never a password.
    """


def redact_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` for logs: never the password (nor the rest of the DSN)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
    except Exception:  # a malformed DSN, or psycopg is missing: say nothing about it
        return "<database>"
    host = str(info.get("host") or "localhost")
    port = str(info.get("port") or "5432")
    user = str(info.get("user") or "")
    dbname = str(info.get("dbname") or "")
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise DatabaseUnavailable(
            "postgres_changes need the psycopg package: pip install 'trio_realtime[postgres]'"
        ) from None
    return psycopg


def _connect(dsn: str, role: str) -> psycopg.Connection[Any]:
    pg = _import_psycopg()
    try:
        conn: psycopg.Connection[Any] = pg.connect(
            dsn, autocommit=True, connect_timeout=10, application_name=f"trio_realtime {role}"
        )
    except pg.Error as exc:
        raise DatabaseUnavailable(f"cannot connect to the database {redact_dsn(dsn)}: "
                                  f"{str(exc).strip()}") from None
    # The output functions used by wal2json run with this session's settings.
    conn.execute("set timezone = 'UTC'; set datestyle = 'ISO, YMD'; set intervalstyle = 'postgres'")
    return conn


@attrs.frozen
class _Txn:
    commit_lsn: int
    changes: tuple[Change, ...]


@attrs.define(eq=False)
class _Capture:
    """The capture connection and its caches. Used by one worker thread at a time."""

    dsn: str = attrs.field(repr=False)
    batch_size: int
    max_record_bytes: int
    slot: str = attrs.field(factory=lambda: f"trio_realtime_{os.getpid()}_{secrets.token_hex(4)}")
    conn: psycopg.Connection[Any] | None = attrs.field(default=None, repr=False)
    types: dict[int, TypeInfo] = attrs.field(factory=dict, repr=False)
    tables: dict[tuple[str, str], list[tuple[str, int]] | None] = attrs.field(factory=dict, repr=False)

    def open(self) -> None:
        pg = _import_psycopg()
        self.close()
        conn = self.conn = _connect(self.dsn, "capture")
        wal_level = conn.execute("show wal_level").fetchone()
        if wal_level is None or wal_level[0] != "logical":
            self.close()
            raise DatabaseUnavailable(
                f"the database {redact_dsn(self.dsn)} has wal_level={wal_level[0] if wal_level else '?'}; "
                "postgres_changes need wal_level=logical (ALTER SYSTEM SET wal_level = logical, then "
                "restart PostgreSQL)"
            )
        try:
            conn.execute("select pg_catalog.pg_create_logical_replication_slot(%s, 'wal2json', true)",
                         (self.slot,))
        except pg.Error as exc:
            self.close()
            detail = str(exc).strip()
            if "wal2json" in detail and ("could not access file" in detail or "No such file" in detail):
                raise DatabaseUnavailable(
                    f"the wal2json output plugin is not installed on the database server "
                    f"{redact_dsn(self.dsn)} (Debian: apt-get install postgresql-<version>-wal2json): "
                    f"{detail}"
                ) from None
            raise DatabaseUnavailable(
                f"cannot create a logical replication slot on {redact_dsn(self.dsn)} (the user needs the "
                f"REPLICATION attribute, and max_replication_slots a free slot): {detail}"
            ) from None
        self.types.clear()
        self.tables.clear()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def poll(self) -> tuple[list[_Txn], int]:
        """Fetch and decode one batch: (transactions in commit order, rows read)."""
        conn = self.conn
        assert conn is not None
        rows = conn.execute(
            f"select lsn::text, data from pg_catalog.pg_logical_slot_get_changes(%s, NULL, %s, "
            f"{_WAL2JSON_OPTIONS})",
            (self.slot, self.batch_size),
        ).fetchall()
        if not rows:
            return [], 0
        raw_txns: list[tuple[int, list[tuple[dict[str, Any], int]]]] = []
        current: list[tuple[dict[str, Any], int]] = []
        ddl_seen = False
        for lsn_text, data in rows:
            action = json.loads(data)
            kind = action.get("action")
            if kind == "B":
                current = []
            elif kind == "C":
                if not current:
                    ddl_seen = True  # most likely DDL: the table cache may be stale
                else:
                    raw_txns.append((parse_lsn(lsn_text), current))
                current = []
            elif kind in ("I", "U", "D"):
                current.append((action, len(data.encode("utf-8"))))
        if ddl_seen:
            self.tables.clear()
        self._load_catalog(conn, [a for _, actions in raw_txns for a, _ in actions])
        txns = []
        for commit_lsn, actions in raw_txns:
            changes = []
            for action, size in actions:
                change = decode_change(
                    action, types=self.types, size=size, max_record_bytes=self.max_record_bytes,
                    table_columns=self.tables.get((str(action.get("schema")), str(action.get("table")))),
                )
                if change is not None:
                    changes.append(change)
            txns.append(_Txn(commit_lsn, tuple(changes)))
        return txns, len(rows)

    def _load_catalog(self, conn: psycopg.Connection[Any], actions: list[dict[str, Any]]) -> None:
        oids: set[int] = set()
        for action in actions:
            key = (str(action.get("schema")), str(action.get("table")))
            cols = [*(action.get("columns") or ()), *(action.get("identity") or ())]
            wal_cols = {str(c.get("name")): c.get("typeoid") for c in cols}
            cached = self.tables.get(key)
            if key not in self.tables or (cached is not None and not _consistent(cached, wal_cols)):
                rows = conn.execute(_TABLE_COLUMNS_SQL, key).fetchall()
                fresh = [(str(name), int(oid)) for name, oid in rows]
                # A table dropped (or altered) since the change: list the change's own columns.
                self.tables[key] = fresh if fresh and _consistent(fresh, wal_cols) else None
            for _, oid in self.tables[key] or ():
                oids.add(oid)
            oids.update(oid for oid in wal_cols.values() if isinstance(oid, int))
        self._load_types(conn, oids)

    def _load_types(self, conn: psycopg.Connection[Any], oids: set[int]) -> None:
        rows: dict[int, tuple[str, str, int, int, str]] = {}
        wanted = {oid for oid in oids if oid not in self.types}
        for _ in range(8):  # element and domain base types, a few levels deep at most
            wanted -= rows.keys()
            if not wanted:
                break
            for oid, typname, typtype, base, elem, category in conn.execute(_TYPES_SQL, (list(wanted),)):
                rows[int(oid)] = (str(typname), str(typtype), int(base), int(elem), str(category))
            follow: set[int] = set()
            for oid in wanted:
                row = rows.get(oid)
                if row is not None:
                    follow.update(x for x in (row[2], row[3]) if x and x not in rows and x not in self.types)
            wanted = follow

        def kind_of(oid: int, depth: int = 0) -> tuple[str, str]:
            if oid in _KIND_BY_OID:
                return _KIND_BY_OID[oid], "text"
            known = self.types.get(oid)
            if known is not None:
                return known.kind, known.element
            row = rows.get(oid)
            if row is None or depth > 8:
                return "text", "text"
            _, typtype, base, elem, category = row
            if typtype == "d" and base:
                return kind_of(base, depth + 1)
            if category == "A" and elem:
                return "array", kind_of(elem, depth + 1)[0]
            return "text", "text"

        for oid, row in rows.items():
            kind, element = kind_of(oid)
            self.types[oid] = TypeInfo(name=row[0], kind=kind, element=element)


def _consistent(table: list[tuple[str, int]], wal_cols: Mapping[str, Any]) -> bool:
    known = dict(table)
    return all(name in known and (not isinstance(oid, int) or known[name] == oid)
               for name, oid in wal_cols.items())


@attrs.define(eq=False)
class _Control:
    """The control connection: binding checks and the WAL position. One thread at a time."""

    dsn: str = attrs.field(repr=False)
    conn: psycopg.Connection[Any] | None = attrs.field(default=None, repr=False)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def check(self, bindings: Sequence[Binding]) -> tuple[int, str | None]:
        """(the WAL insert position, the first binding's error or None)."""
        pg = _import_psycopg()
        if self.conn is not None and not self.conn.closed:
            try:
                return self._check(self.conn, bindings)
            except pg.OperationalError:
                # The connection went stale (server restart, idle timeout): one fresh try.
                self.close()
        self.conn = _connect(self.dsn, "control")
        return self._check(self.conn, bindings)

    def _check(self, conn: psycopg.Connection[Any], bindings: Sequence[Binding]) -> tuple[int, str | None]:
        row = conn.execute("select pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        lsn = parse_lsn(row[0])
        for binding in bindings:
            error = self._check_binding(conn, binding)
            if error is not None:
                return lsn, error
        return lsn, None

    def _check_binding(self, conn: psycopg.Connection[Any], binding: Binding) -> str | None:
        params = {"schema": binding.schema, "table": binding.table}
        tables = [int(row[0]) for row in conn.execute(_TABLES_SQL, params)]
        if not tables:
            return binding.not_found_message()
        if not binding.conditions:
            return None
        # What the official subscription_check_filters trigger checks, for every table the
        # binding covers: the columns exist and the values suit their types.
        columns: dict[int, dict[str, str]] = {oid: {} for oid in tables}
        for oid, name, typname in conn.execute(_FILTER_COLUMNS_SQL, (tables,)):
            columns[int(oid)][str(name)] = str(typname)
        for oid in tables:
            try:
                validate_filter(binding.conditions, columns[oid])
            except FilterError as exc:
                return binding.exception_message(exc.db_message)
        return None


@attrs.define(eq=False)
class _Registration:
    owner: Any
    bindings: tuple[Binding, ...]
    lsn: int


@final
class ChangeFeed(metaclass=NoPublicConstructor):
    """The running change capture of one server (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        deliver: Callable[[list[Delivery]], None],
        *,
        poll_interval: float,
        batch_size: int,
        max_record_bytes: int,
        on_lost: Callable[[Any], None],
        backpressure: Callable[[], Awaitable[None]],
    ) -> None:
        self._dsn = dsn
        self._deliver = deliver
        self._backpressure = backpressure
        self._on_lost = on_lost
        self._poll_interval = poll_interval
        self._capture = _Capture(dsn, batch_size=batch_size, max_record_bytes=max_record_bytes)
        self._control = _Control(dsn)
        self._control_lock = trio.Lock()
        self._registrations: dict[Any, _Registration] = {}
        self._pending = 0
        self._pending_done = trio.Event()
        self._connected = False
        self._generation = 0  # bumped when the slot is lost: older WAL positions mean nothing
        self.changes_decoded = 0
        self.messages_delivered = 0

    def __repr__(self) -> str:
        return f"<ChangeFeed {redact_dsn(self._dsn)} slot={self._capture.slot}>"

    @property
    def slot_name(self) -> str:
        """The name of the temporary replication slot."""
        return self._capture.slot

    # -- joins -------------------------------------------------------------------------------------

    async def subscribe(self, owner: Any, bindings: Sequence[Mapping[str, Any]]) -> str | None:
        """Register ``owner``'s bindings, gated at the current WAL position.

        Call it before sending the join reply: every transaction that commits after this
        call started is delivered. Nothing is registered on error. This is a checkpoint.

        Returns:
            None on success, else the ``message`` of the ``system`` error push.
        """
        try:
            parsed = tuple(parse_binding(b) for b in bindings)
        except BindingError as exc:
            return str(exc)
        if not self._connected:
            return UNABLE_TO_CONNECT
        pg = _import_psycopg()
        generation = self._generation
        self._pending += 1
        try:
            async with self._control_lock:
                try:
                    lsn, error = await trio.to_thread.run_sync(self._control.check, parsed)
                except (pg.Error, DatabaseUnavailable) as exc:
                    logger.warning("postgres_changes subscription failed: %s", exc)
                    await trio.to_thread.run_sync(self._control.close)
                    return UNABLE_TO_CONNECT
                if error is not None:
                    return error
                if not self._connected or self._generation != generation:
                    # The slot was lost meanwhile (and maybe replaced by one that starts after lsn).
                    return UNABLE_TO_CONNECT
                self._registrations[owner] = _Registration(owner, parsed, lsn)
                return None
        finally:
            self._pending -= 1
            if not self._pending:
                self._pending_done.set()
                self._pending_done = trio.Event()

    def unsubscribe(self, owner: Any) -> None:
        """Forget ``owner``'s bindings (no-op if it has none)."""
        self._registrations.pop(owner, None)

    def is_subscribed(self, owner: Any) -> bool:
        return owner in self._registrations

    # -- capture -----------------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect and create the slot (raises :class:`DatabaseUnavailable`)."""
        await trio.to_thread.run_sync(self._capture.open)
        self._connected = True
        logger.info("postgres_changes: capturing from %s with wal2json (temporary slot %s)",
                    redact_dsn(self._dsn), self._capture.slot)

    async def _close(self) -> None:
        self._connected = False
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._capture.close)
            await trio.to_thread.run_sync(self._control.close)

    async def _run(self) -> None:
        """The capture task: poll, dispatch, and reconnect after a lost connection."""
        pg = _import_psycopg()
        capture = self._capture
        try:
            delay = 1.0
            while True:
                try:
                    await self._capture_loop()
                except pg.Error as exc:
                    self._connection_lost(exc)
                while not self._connected:
                    await trio.sleep(delay)
                    try:
                        await trio.to_thread.run_sync(capture.open)
                    except DatabaseUnavailable as exc:
                        logger.warning("postgres_changes: reconnect failed (next try in %g s): %s",
                                       min(delay * 2, 10.0), exc)
                        delay = min(delay * 2, 10.0)
                        continue
                    self._connected = True
                    delay = 1.0
                    logger.info("postgres_changes: reconnected (temporary slot %s)", capture.slot)
        finally:
            await self._close()

    def _connection_lost(self, exc: BaseException) -> None:
        logger.error("postgres_changes: lost the capture connection (%s); the slot is gone, %d "
                     "channel(s) are told to resubscribe", str(exc).strip() or type(exc).__name__,
                     len(self._registrations))
        self._connected = False
        self._generation += 1
        self._capture.close()
        lost = list(self._registrations)
        self._registrations.clear()
        for owner in lost:
            self._on_lost(owner)

    async def _capture_loop(self) -> None:
        while True:
            txns, nrows = await trio.to_thread.run_sync(self._capture.poll)
            while self._pending:
                await self._pending_done.wait()
            await self._dispatch(txns)
            if nrows < self._capture.batch_size:
                await trio.sleep(self._poll_interval)
            else:
                await trio.lowlevel.checkpoint()

    async def _dispatch(self, txns: list[_Txn]) -> None:
        # Registrations made while this awaits need nothing from this batch: it was fetched
        # before they started, so its commits all end before their WAL position.
        for txn in txns:
            self.changes_decoded += len(txn.changes)
            regs = [r for r in self._registrations.values() if txn.commit_lsn > r.lsn]
            if not regs:
                continue
            for change in txn.changes:
                out: list[Delivery] = []
                for reg in regs:
                    groups: dict[tuple[str, ...] | None, list[int]] = {}
                    for binding in reg.bindings:
                        if self._matches(binding, change):
                            ids = groups.setdefault(binding.select, [])
                            if binding.id not in ids:
                                ids.append(binding.id)
                    for select, ids in groups.items():
                        out.append((reg.owner, tuple(ids), select_data(change, select)))
                if out:
                    self.messages_delivered += len(out)
                    self._deliver(out)
                    await self._backpressure()

    @staticmethod
    def _matches(binding: Binding, change: Change) -> bool:
        try:
            return binding.matches(change)
        except Exception:
            # A bug in filter evaluation must cost one delivery, not the capture.
            logger.exception("postgres_changes: evaluating binding %d on %s.%s failed", binding.id,
                             change.schema, change.table)
            return False


@contextlib.asynccontextmanager
async def open_change_feed(
    database_url: str,
    deliver: Callable[[list[Delivery]], None],
    *,
    on_lost: Callable[[Any], None],
    backpressure: Callable[[], Awaitable[None]],
    poll_interval: float = 0.025,
    batch_size: int = 1000,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> AsyncIterator[ChangeFeed]:
    """Connect, create the slot and run the capture task for the duration of the block.

    Args:
        database_url: a libpq connection string or URL.
        deliver: called synchronously with the deliveries of one row change.
        on_lost: called with each registered owner when the capture connection is lost.
        backpressure: awaited after each delivery; returns when the receivers have room.
        poll_interval: seconds between polls when the last one was not full.
        batch_size: the ``upto_nchanges`` of one poll.
        max_record_bytes: above this a change is sent with ``Error 413``.

    Raises:
        DatabaseUnavailable: the database cannot be reached or is not set up for logical
            decoding with wal2json.
    """
    feed = ChangeFeed._create(
        database_url, deliver, poll_interval=poll_interval, batch_size=batch_size,
        max_record_bytes=max_record_bytes, on_lost=on_lost, backpressure=backpressure,
    )
    await feed._open()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed._run)
            try:
                yield feed
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await feed._close()
