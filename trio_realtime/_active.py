"""Active-group routing over one persistent channel (SPEC rows A1-A6, seed 000).

A chat app keeps **one** subscription for all of a user's groups (broadcasts carrying a group
id, or ``postgres_changes`` on a messages table with a ``group_id`` column) and shows one group
at a time. Switching groups must not leave and rejoin anything on the server (a rejoin is a
window in which messages are missed), a screen that is no longer shown must never handle
another event, and messages for the other groups must be counted and kept.

Theory of operation
===================

:func:`open_active_router` owns one nursery with one task, the *router*, which is the only
reader of the subscription. For each event it asks ``group_of(event)`` which group it belongs
to and puts it, without ever blocking, in exactly one place:

* the **active view**'s queue, if the event belongs to the active group;
* otherwise the **background**: the group's unread counter goes up, the event is staged for
  the optional :class:`SqliteInbox`, and a :class:`BackgroundEvent` goes on
  :attr:`ActiveRouter.background`, a bounded stream that drops (and counts) what does not fit.
  The counters and the inbox are the record; the stream is only a notification feed.

Events that belong to no group (``group_of`` returns None: presence, ``ChannelErrored``,
``Rejoined``, ...) concern every screen, so they go to the active view *and* the background
stream; they are neither counted nor stored.

**Generations.** Every activation of a group is a generation with its own memory channel and,
while a view is bound to it, the view's cancel scope. :meth:`ActiveRouter.switch_active` is a
synchronous, O(1), network-free operation: it bumps the generation and *retires* the old
activation, in this order and with no checkpoint in between:

1. events still waiting in the old queue are taken back and routed to the background (counted
   unread, persisted): nothing is lost, and no stale view will read them;
2. the old queue's send side is closed, so the stale view's ``async for`` ends;
3. the stale view's cancel scope is cancelled, so code still running in its block is
   cancelled at its next checkpoint.

The one event a memory channel can have *in flight* at that moment (handed to a task blocked
in ``receive`` that has not run yet) is caught by :meth:`ActiveView.receive`, which checks the
generation after every receive and reroutes the event to the background instead of returning
it. So once ``switch_active`` returns, no stale view ever returns another event: that is the
seed's "token guard" (A2), made structural rather than an ``if`` in every handler.

**Cleanup.** Leaving ``async with router.view(group)`` is the seed's *lazy* cleanup: the view
is unbound and the activation ends (no group is active, so new messages count as unread), but
the router and the subscription stay; entering a view again is instant. Leaving
``open_active_router`` is the *full* cleanup: the router task is cancelled, a bound view
anywhere is cancelled, what it had not read goes to the inbox, the background stream ends; then
leaving ``client.channel(...)`` leaves the channel on the server (A5).

**The inbox.** :class:`SqliteInbox` (stdlib :mod:`sqlite3`) stores background events and unread
counts. Nothing touches the database on the Trio thread: the router only appends to a list,
and the inbox's writer task writes whatever has accumulated in one transaction per
:func:`trio.to_thread.run_sync` call. Measured on this project's CI machine (Python 3.11,
SQLite 3.40): one event per transaction costs ~1.5 ms on a file in SQLite's default journal
mode (an fsync per commit) and ~9 µs in WAL mode, a thread hop ~30 µs, and a batched event
2-4 µs. So inline writes could stall the event loop for milliseconds (unboundedly on a slow
disk), while batching in a thread keeps the loop free and costs a few µs per event.
:meth:`SqliteInbox.fetch` first writes everything staged before it was called, so "switch to
g, fetch g's stored events, then read the view" sees every event exactly once, in order.

**Logging (A6).** Everything is logged under ``trio_realtime.active`` (switches, binds, cleanup
at DEBUG/INFO; every routing decision at DEBUG), the Python counterpart of the seed's
``[realtime-active]`` prefix: filter on that logger name.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, final

import attrs
import trio

from ._errors import InternalError, LocalProtocolError
from ._groups import collapse
from ._util import NoPublicConstructor
from .protocol import (
    Broadcast,
    ChannelErrored,
    Dropped,
    PostgresChange,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    RealtimeEvent,
    Rejoined,
    ServerEvent,
    SystemMessage,
)

if TYPE_CHECKING:
    from trio.lowlevel import Task

__all__ = [
    "ActiveRouter",
    "ActiveRouterStatistics",
    "ActiveView",
    "BackgroundEvent",
    "GroupOf",
    "InboxStatistics",
    "SqliteInbox",
    "StoredEvent",
    "group_by_field",
    "open_active_router",
    "open_sqlite_inbox",
]

log = logging.getLogger("trio_realtime.active")

#: Extracts the group an event belongs to, or None for events that concern every group.
GroupOf: TypeAlias = Callable[[RealtimeEvent], str | None]

#: What the active view's queue holds: the event's group (None: channel-level) and the event.
_Routed: TypeAlias = tuple[str | None, RealtimeEvent]


def group_by_field(name: str = "group_id") -> GroupOf:
    """A ``group_of`` that reads the group id from field ``name`` of the event.

    For a :class:`Broadcast` whose payload is a JSON object, ``payload[name]``; for a
    :class:`PostgresChange`, the new row's column ``name``, or the old row's for a DELETE
    (which needs ``REPLICA IDENTITY FULL`` unless the column is part of the primary key).
    Anything else, or a missing or null field, belongs to no group. Ids are compared as
    strings, so a numeric column works too.

    Args:
        name: the payload key or column name (the seed's table calls it ``groupid``).
    """

    def group_of(event: RealtimeEvent) -> str | None:
        value: Any = None
        if isinstance(event, Broadcast):
            if isinstance(event.payload, Mapping):
                value = event.payload.get(name)
        elif isinstance(event, PostgresChange):
            value = event.record.get(name)
            if value is None:
                value = event.old_record.get(name)
        return None if value is None else str(value)

    group_of.__qualname__ = group_of.__name__ = f"group_by_field({name!r})"
    return group_of


@attrs.frozen(kw_only=True)
class BackgroundEvent:
    """An event routed away from the active view, as :attr:`ActiveRouter.background` yields it.

    Attributes:
        group: the event's group, or None for a channel-level event (presence, errors,
            ``Rejoined``) that the active view also received.
        event: the event.
        unread: the group's unread count including this event (0 when ``group`` is None), so
            a badge can be updated from the stream alone.
    """

    group: str | None
    event: RealtimeEvent
    unread: int


@attrs.frozen(kw_only=True)
class ActiveRouterStatistics:
    """A snapshot of an :class:`ActiveRouter`, from :meth:`ActiveRouter.statistics`.

    Attributes:
        active: the active group, or None.
        generation: the current generation (bumped by every switch and every view exit).
        view_bound: whether a view is bound to the active group.
        active_queued: events waiting in the active view's queue.
        active_capacity: that queue's capacity.
        routed_active: events put in an active view's queue.
        routed_background: events routed to the background (including channel-level ones,
            spilled ones and ones taken back from stale views).
        spilled: events of the active group that found its view's queue full and went to the
            background instead (counted unread and stored, never dropped).
        rerouted_stale: events a view had not read when its generation ended, moved to the
            background.
        background_queued: items waiting on the background stream.
        background_capacity: its capacity.
        background_dropped: items the background stream dropped because it was full (their
            unread counts and inbox rows were still updated).
        unread_total: the sum of all unread counters.
        persisted: events handed to the inbox.
        unpersisted: background events that could not be handed to the inbox because it was
            already closed (logged as warnings).
    """

    active: str | None
    generation: int
    view_bound: bool
    active_queued: int
    active_capacity: int
    routed_active: int
    routed_background: int
    spilled: int
    rerouted_stale: int
    background_queued: int
    background_capacity: int
    background_dropped: int
    unread_total: int
    persisted: int
    unpersisted: int


# -- the local inbox --------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_events_by_group ON inbox_events (group_id, id);
CREATE TABLE IF NOT EXISTS inbox_unread (
    group_id TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""
_SCHEMA_VERSION = 1

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Broadcast,
        PostgresChange,
        PresenceSync,
        PresenceJoin,
        PresenceLeave,
        SystemMessage,
        ServerEvent,
        ChannelErrored,
        Rejoined,
        Dropped,
    )
}
#: Marks a ``bytes`` value (a binary broadcast payload) in the stored JSON.
_BYTES_TAG = "__trio_realtime_bytes__"


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES_TAG in value:
            return base64.b64decode(value[_BYTES_TAG])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _encode_event(event: RealtimeEvent) -> tuple[str, str]:
    """``(kind, json)``: the event's class name and its fields as a JSON object."""
    fields = {name: _to_json(value) for name, value in attrs.asdict(event, recurse=False).items()}
    return type(event).__name__, json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def _decode_event(kind: str, data: str) -> RealtimeEvent:
    """The inverse of :func:`_encode_event`.

    Top-level tuple fields (``columns``, ``bindings``, presences) come back as tuples; inside
    JSON values (payloads, rows) lists stay lists, as they arrived from the wire.
    """
    cls = _EVENT_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"the inbox holds an event of unknown kind {kind!r} (written by a newer version?)")
    raw = json.loads(data)
    values: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name not in raw:
            continue
        value = _from_json(raw[field.name])
        annotation = str(field.type)
        if annotation.startswith("tuple") and isinstance(value, list):
            value = tuple(value)
        elif annotation.startswith("Mapping[str, tuple") and isinstance(value, dict):
            value = {k: tuple(v) for k, v in value.items()}
        values[field.name] = value
    event: RealtimeEvent = cls(**values)
    return event


@attrs.frozen(kw_only=True)
class StoredEvent:
    """An event kept by a :class:`SqliteInbox`, as :meth:`SqliteInbox.fetch` returns it.

    Attributes:
        id: the row id: increasing in the order events were stored; pass it as ``after``
            to fetch only newer ones.
        group: the event's group.
        event: the event, rebuilt from its stored fields (equal to the original for
            broadcasts and row changes; nested sequences inside a presence state come back as
            lists).
        stored_at: wall-clock time (``time.time()``) when the event was handed to the inbox.
    """

    id: int
    group: str
    event: RealtimeEvent
    stored_at: float


@attrs.frozen(kw_only=True)
class InboxStatistics:
    """A snapshot of a :class:`SqliteInbox`.

    Attributes:
        path: the database path (``":memory:"`` for an in-memory one).
        pending: operations staged but not written yet.
        max_pending: how many may be staged before writers wait.
        written: events written so far by this inbox object.
        transactions: write transactions so far (events are written in batches).
    """

    path: str
    pending: int
    max_pending: int
    written: int
    transactions: int


@attrs.frozen
class _Add:
    group: str
    kind: str
    data: str
    stored_at: float


@attrs.frozen
class _MarkRead:
    group: str


_Op: TypeAlias = _Add | _MarkRead


def _connect(path: str) -> sqlite3.Connection:
    """Open (creating if needed) an inbox database. Runs in a worker thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise ValueError(
                f"inbox {path!r} has schema version {version}; this trio_realtime understands "
                f"up to {_SCHEMA_VERSION} (open it with a newer version, or use another file)"
            )
        if path != ":memory:":
            # WAL: a commit is an append, not an fsync of the whole journal (~9 µs instead of
            # ~1.5 ms per transaction measured here). synchronous=NORMAL can lose the last
            # transactions on power loss, never on an application crash, and never corrupts:
            # acceptable for a local cache of messages the server also has.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@final
class SqliteInbox(metaclass=NoPublicConstructor):
    """A local store of background events and per-group unread counts (stdlib :mod:`sqlite3`).

    Built by :func:`open_sqlite_inbox`; there is no public constructor. Give it to
    :func:`open_active_router` and every background event is stored, so nothing is lost
    while the app looks at another group, and unread counts survive a restart.

    All database work runs in a worker thread, serialized by a lock, in batches: staging an
    event (what the router does) is a list append; the inbox's writer task writes everything
    staged in one transaction. Reads (:meth:`fetch`, :meth:`unread_counts`) first write what
    was staged before them, so they never miss an event that was already routed.
    """

    def __init__(self, conn: sqlite3.Connection, path: str, max_pending: int) -> None:
        self._conn = conn
        self._path = path
        self._max_pending = max_pending
        self._staged: list[_Op] = []
        self._staged_event = trio.Event()
        self._room = trio.Event()
        self._lock = trio.StrictFIFOLock()
        #: No more staging or reading (the block is exiting).
        self._closed = False
        #: The database connection is closed (under the lock, after the last flush).
        self._disconnected = False
        self._written = 0
        self._transactions = 0

    def __repr__(self) -> str:
        return f"<SqliteInbox {self._path!r} pending={len(self._staged)}>"

    @property
    def path(self) -> str:
        """The database path."""
        return self._path

    # -- writing ------------------------------------------------------------------------------

    def add_nowait(self, group: str, event: RealtimeEvent) -> None:
        """Stage ``event`` under ``group``; the writer task stores it shortly.

        Raises:
            trio.WouldBlock: ``max_pending`` operations are already staged (use :meth:`add`).
            trio.ClosedResourceError: the inbox's block has exited.
        """
        self._check_open()
        if len(self._staged) >= self._max_pending:
            raise trio.WouldBlock
        self._stage_add(group, event)

    async def add(self, group: str, event: RealtimeEvent) -> None:
        """Store ``event`` under ``group`` and count it unread; returns once it is written.

        A checkpoint.

        Raises:
            trio.ClosedResourceError: the inbox's block has exited.
        """
        self._check_open()
        await self._wait_room()
        self._check_open()
        self._stage_add(group, event)
        await self.flush()

    async def mark_read(self, group: str) -> None:
        """Reset ``group``'s unread count to zero (its stored events stay). A checkpoint.

        While an :class:`ActiveRouter` uses this inbox, call :meth:`ActiveRouter.mark_read`
        instead, which also resets the router's own counter.
        """
        self._check_open()
        self._stage_read(group)
        await self.flush()

    async def flush(self) -> None:
        """Write everything staged so far. A checkpoint.

        Cancelling it never loses staged operations: they are taken only once the lock is
        held, and the write itself runs to completion in its thread.
        """
        async with self._lock:
            await self._flush_locked()

    # -- reading ------------------------------------------------------------------------------

    async def fetch(self, group: str, *, after: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """The events stored for ``group``, oldest first. A checkpoint.

        Everything staged before this call is written first, so an event the router already
        routed to the background is always included.

        Args:
            group: the group.
            after: only events with ``id`` greater than this (pass the last id you saw).
            limit: at most this many (the oldest ones); None for all.
        """
        self._check_open()
        sql = "SELECT id, group_id, kind, data, stored_at FROM inbox_events WHERE group_id = ? AND id > ?"
        params: tuple[Any, ...] = (group, after)
        if limit is not None:
            sql += " ORDER BY id LIMIT ?"
            params += (limit,)
        else:
            sql += " ORDER BY id"

        def query() -> list[tuple[Any, ...]]:
            return self._conn.execute(sql, params).fetchall()

        async with self._lock:
            await self._flush_locked()
            self._check_connection()
            rows = await trio.to_thread.run_sync(query)
        return [
            StoredEvent(id=row[0], group=row[1], event=_decode_event(row[2], row[3]), stored_at=row[4])
            for row in rows
        ]

    async def unread_counts(self) -> dict[str, int]:
        """Group -> unread count, for groups with unread events. A checkpoint."""
        self._check_open()

        def query() -> list[tuple[Any, ...]]:
            return self._conn.execute(
                "SELECT group_id, count FROM inbox_unread WHERE count > 0 ORDER BY group_id"
            ).fetchall()

        async with self._lock:
            await self._flush_locked()
            self._check_connection()
            rows = await trio.to_thread.run_sync(query)
        return {row[0]: row[1] for row in rows}

    def statistics(self) -> InboxStatistics:
        """A snapshot of the inbox's counters."""
        return InboxStatistics(
            path=self._path,
            pending=len(self._staged),
            max_pending=self._max_pending,
            written=self._written,
            transactions=self._transactions,
        )

    # -- internals (the router stages directly) ------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"the inbox {self._path!r} is closed (its block has exited)")

    def _check_connection(self) -> None:
        """Under the lock: a call that waited for the lock while the inbox closed fails here."""
        if self._disconnected:
            raise trio.ClosedResourceError(f"the inbox {self._path!r} is closed (its block has exited)")

    def _stage(self, op: _Op) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"the inbox {self._path!r} is closed (its block has exited)")
        self._staged.append(op)
        self._staged_event.set()

    def _stage_add(self, group: str, event: RealtimeEvent) -> None:
        kind, data = _encode_event(event)
        self._stage(_Add(group, kind, data, time.time()))

    def _stage_read(self, group: str) -> None:
        self._stage(_MarkRead(group))

    async def _wait_room(self) -> None:
        """Wait until fewer than ``max_pending`` operations are staged (no checkpoint if so)."""
        while len(self._staged) >= self._max_pending:
            await self._room.wait()

    async def _flush_locked(self) -> None:
        ops, self._staged = self._staged, []
        self._staged_event = trio.Event()
        if ops:
            self._check_connection()
            await trio.to_thread.run_sync(self._write, ops)
            self._written += sum(isinstance(op, _Add) for op in ops)
            self._transactions += 1
        else:
            await trio.lowlevel.checkpoint()
        self._room.set()
        self._room = trio.Event()

    def _write(self, ops: list[_Op]) -> None:
        """One transaction for a batch. Runs in a worker thread, under the lock."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                if isinstance(op, _Add):
                    conn.execute(
                        "INSERT INTO inbox_events (group_id, kind, data, stored_at) VALUES (?, ?, ?, ?)",
                        (op.group, op.kind, op.data, op.stored_at),
                    )
                    conn.execute(
                        "INSERT INTO inbox_unread (group_id, count) VALUES (?, 1) "
                        "ON CONFLICT (group_id) DO UPDATE SET count = count + 1",
                        (op.group,),
                    )
                else:
                    conn.execute("DELETE FROM inbox_unread WHERE group_id = ?", (op.group,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _close(self) -> None:
        """Write what is staged, then close the connection, both under the lock."""
        async with self._lock:
            try:
                await self._flush_locked()
            finally:
                self._disconnected = True
                await trio.to_thread.run_sync(self._conn.close)

    async def _writer(self) -> None:
        """The inbox's writer task: writes whatever was staged, one batch at a time."""
        while True:
            await self._staged_event.wait()
            await self.flush()


@asynccontextmanager
async def open_sqlite_inbox(
    path: str | os.PathLike[str], *, max_pending: int = 10_000
) -> AsyncIterator[SqliteInbox]:
    """Open (creating if needed) a local inbox database for the duration of the block.

    The schema is created on open; a file keeps its events and unread counts across runs, and
    a file database uses WAL journaling. ``":memory:"`` gives a private in-memory database
    that lives as long as the block.

    Leaving the block writes what is still staged (shielded: it waits for the disk), stops the
    writer task and closes the database.

    Args:
        path: the database file, or ``":memory:"``.
        max_pending: how many operations may be staged before :meth:`SqliteInbox.add` and the
            router wait for the writer (the router then stops reading its subscription, whose
            own bounded queue absorbs the burst).

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database.
        ValueError: the file was written by a newer schema version.
    """
    if max_pending < 1:
        raise ValueError(f"max_pending must be at least 1, got {max_pending}")
    name = os.fspath(path)
    conn = await trio.to_thread.run_sync(_connect, name)
    inbox = SqliteInbox._create(conn, name, max_pending)
    log.debug("inbox %r opened", name)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox._writer)
            try:
                yield inbox
            finally:
                nursery.cancel_scope.cancel(reason="open_sqlite_inbox exited")
    except BaseExceptionGroup as group:
        raise collapse(group, "the inbox") from None
    finally:
        inbox._closed = True
        with trio.CancelScope(shield=True):
            await inbox._close()
        log.debug("inbox %r closed", name)


# -- the router ---------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Activation:
    """One generation: the active group, its queue, and the view bound to it (if any)."""

    group: str
    generation: int
    send: trio.MemorySendChannel[_Routed]
    receive: trio.MemoryReceiveChannel[_Routed]
    #: The task that entered the bound view's block (None: no view bound).
    view_task: Task | None = None
    #: The bound view's cancel scope, cancelled when this generation goes stale.
    scope: trio.CancelScope | None = None
    stale: bool = False


@final
class ActiveView(trio.abc.ReceiveChannel[RealtimeEvent], metaclass=NoPublicConstructor):
    """The events of the active group for one activation, from :meth:`ActiveRouter.view`.

    A :class:`trio.abc.ReceiveChannel`: ``async for event in view``. Bound to one generation:
    when the router switches away, iteration ends (:class:`trio.EndOfChannel`) and the
    view's block is cancelled; a stale view never returns another event.
    """

    def __init__(self, router: ActiveRouter, activation: _Activation) -> None:
        self._router = router
        self._activation = activation
        self._receiving = False

    def __repr__(self) -> str:
        state = "stale" if self._activation.stale else "active"
        return f"<ActiveView {self.group!r} generation={self.generation} {state}>"

    @property
    def group(self) -> str:
        """The group this view shows."""
        return self._activation.group

    @property
    def generation(self) -> int:
        """The generation this view is bound to."""
        return self._activation.generation

    @property
    def stale(self) -> bool:
        """True once the router switched away (or the view's block exited)."""
        return self._activation.stale

    async def receive(self) -> RealtimeEvent:
        """The next event of this activation. A checkpoint.

        Raises:
            trio.EndOfChannel: the activation ended (switch, or the subscription ended).
            trio.ClosedResourceError: the view was closed with :meth:`aclose`, or its block
                has exited.
            trio.BusyResourceError: another task is already receiving from this view.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this view")
        self._receiving = True
        try:
            return self._take(await self._activation.receive.receive())
        finally:
            self._receiving = False

    def receive_nowait(self) -> RealtimeEvent:
        """The next event if one is queued, else raise :class:`trio.WouldBlock`."""
        return self._take(self._activation.receive.receive_nowait())

    def _take(self, routed: _Routed) -> RealtimeEvent:
        # The token guard for the one event that can be in flight during a switch: handed to
        # this task while it was blocked in receive, before the switch ran. It goes to the
        # background instead of to a stale handler.
        if self._activation.stale:
            self._router._reroute_stale(self._activation, routed)
            raise trio.EndOfChannel
        return routed[1]

    async def aclose(self) -> None:
        """Unbind: end this activation (no group is active after it) and close. A checkpoint.

        Unlike a switch, this does not cancel the view's block. Events not yet read go to
        the background (unread, stored).
        """
        self._router._end_activation(self._activation, reason="view closed", cancel=False)
        self._activation.receive.close()
        await trio.lowlevel.checkpoint()


@final
class ActiveRouter(metaclass=NoPublicConstructor):
    """Routes one subscription's events to the active group's view or to the background.

    Built by :func:`open_active_router`; there is no public constructor. See the module
    docstring for how generations guarantee that stale views stay silent.
    """

    def __init__(
        self,
        sub: trio.abc.ReceiveChannel[RealtimeEvent],
        group_of: GroupOf,
        inbox: SqliteInbox | None,
        active_buffer: int,
        background_buffer: int,
        unread: dict[str, int],
    ) -> None:
        self._sub = sub
        self._group_of = group_of
        self._inbox = inbox
        self._active_buffer = active_buffer
        self._background_capacity = background_buffer
        self._bg_send, self._bg_receive = trio.open_memory_channel[BackgroundEvent](background_buffer)
        self._unread = unread
        self._generation = 0
        self._current: _Activation | None = None
        self._closed = False
        self._eof = False
        self._routed_active = 0
        self._routed_background = 0
        self._spilled = 0
        self._rerouted_stale = 0
        self._bg_dropped = 0
        self._persisted = 0
        self._unpersisted = 0

    def __repr__(self) -> str:
        return f"<ActiveRouter active={self.active!r} generation={self._generation}>"

    # -- switching ----------------------------------------------------------------------------

    @property
    def active(self) -> str | None:
        """The active group, or None."""
        return None if self._current is None else self._current.group

    @property
    def generation(self) -> int:
        """The current generation; every switch and every view exit bumps it."""
        return self._generation

    def switch_active(self, group: str | None) -> int:
        """Make ``group`` the active group (None: no group). Synchronous, O(1), no network.

        The previous activation ends at once: its unread queue goes to the background, its
        view's iteration ends and its view's block is cancelled (so code still running there
        stops at its next checkpoint; switch from outside the view you are leaving, or just
        enter the next one with :meth:`view`). Events for ``group`` that arrive before a view
        is bound wait in the new activation's queue. Switching to the group that is already
        active does nothing.

        Returns:
            The new generation.

        Raises:
            trio.ClosedResourceError: the router's block has exited.
        """
        self._check_open()
        old = self._current
        if (None if old is None else old.group) == group:
            return self._generation
        self._generation += 1
        generation = self._generation
        if old is not None:
            self._retire(old, reason=f"switched to {group!r}", cancel=True)
        self._current = None if group is None else self._new_activation(group, generation)
        log.debug("switch: %r -> %r (generation %d)", None if old is None else old.group, group, generation)
        return generation

    @asynccontextmanager
    async def view(self, group: str) -> AsyncIterator[ActiveView]:
        """Bind a view to ``group`` for the duration of the block, activating it if needed.

        If ``group`` is not the active group this switches to it first (see
        :meth:`switch_active`). The view is bound to that one generation: when the router
        switches away, the view's iteration ends and the block is cancelled, quietly (the
        block just exits). Leaving the block is the *lazy* cleanup: the view is unbound and the
        activation ends, so no group is active and new events count as unread; the router and
        the subscription stay. A checkpoint on entry.

        Raises:
            trio.BusyResourceError: another task's view is bound to ``group`` right now.
            LocalProtocolError: this task is inside another view's block of this router
                (opening a view switches, which would cancel the enclosing block).
            trio.ClosedResourceError: the router's block has exited.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        task = trio.lowlevel.current_task()
        current = self._current
        if current is not None and current.view_task is not None:
            if current.view_task is task:
                raise LocalProtocolError(
                    f"cannot open a view of {group!r} inside the view of {current.group!r}: "
                    "opening it would switch and cancel the enclosing view; leave that block first"
                )
            if current.group == group:
                raise trio.BusyResourceError(
                    f"group {group!r} already has a view bound (generation {current.generation}); "
                    "leave that view first, or switch_active() away and back"
                )
        self.switch_active(group)
        activation = self._current
        if activation is None:  # pragma: no cover - switch_active(group) always activates
            raise InternalError("switch_active did not activate a group; please report this bug")
        view = ActiveView._create(self, activation)
        with trio.CancelScope() as scope:
            activation.view_task = task
            activation.scope = scope
            log.debug("view bound: %r (generation %d)", group, activation.generation)
            try:
                yield view
            finally:
                activation.view_task = None
                activation.scope = None
                self._end_activation(activation, reason="view left", cancel=False)
                activation.receive.close()
                log.debug("view unbound: %r (generation %d)", group, activation.generation)

    # -- background and unread ----------------------------------------------------------------

    @property
    def background(self) -> trio.MemoryReceiveChannel[BackgroundEvent]:
        """Events routed away from the active view, as :class:`BackgroundEvent`.

        Bounded (``background_buffer``); when full, new items are dropped and counted in
        :meth:`statistics` (unread counters and the inbox are updated regardless: they are
        the record, this is a feed). Ends when the subscription ends or the router closes.
        Close it if you do not want the feed.
        """
        return self._bg_receive

    def unread(self, group: str) -> int:
        """How many events of ``group`` arrived while it was not shown (since :meth:`mark_read`)."""
        return self._unread.get(group, 0)

    def unread_counts(self) -> dict[str, int]:
        """Group -> unread count, for every group with unread events."""
        return {group: n for group, n in sorted(self._unread.items()) if n}

    def mark_read(self, group: str) -> None:
        """Reset ``group``'s unread count (and the inbox's, in order with its writes).

        Raises:
            trio.ClosedResourceError: the router's block has exited (use the inbox directly).
        """
        self._check_open()
        self._unread.pop(group, None)
        if self._inbox is not None:
            try:
                self._inbox._stage_read(group)
            except trio.ClosedResourceError:
                log.warning("mark_read(%r): the inbox is already closed; its count was not reset", group)
        log.debug("mark_read: %r", group)

    def statistics(self) -> ActiveRouterStatistics:
        """A snapshot of the router's counters and queues."""
        current = self._current
        return ActiveRouterStatistics(
            active=None if current is None else current.group,
            generation=self._generation,
            view_bound=current is not None and current.view_task is not None,
            active_queued=0 if current is None else current.receive.statistics().current_buffer_used,
            active_capacity=self._active_buffer,
            routed_active=self._routed_active,
            routed_background=self._routed_background,
            spilled=self._spilled,
            rerouted_stale=self._rerouted_stale,
            background_queued=self._bg_send.statistics().current_buffer_used,
            background_capacity=self._background_capacity,
            background_dropped=self._bg_dropped,
            unread_total=sum(self._unread.values()),
            persisted=self._persisted,
            unpersisted=self._unpersisted,
        )

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the active router is closed (its block has exited)")

    def _new_activation(self, group: str, generation: int) -> _Activation:
        send, receive = trio.open_memory_channel[_Routed](self._active_buffer)
        if self._eof:
            send.close()
        return _Activation(group=group, generation=generation, send=send, receive=receive)

    def _end_activation(self, activation: _Activation, *, reason: str, cancel: bool) -> None:
        """End ``activation`` if it is still the current one (no group is active after it)."""
        if self._current is activation:
            self._generation += 1
            self._current = None
            log.debug(
                "activation of %r ended: %s (generation %d)", activation.group, reason, self._generation
            )
        self._retire(activation, reason=reason, cancel=cancel)

    def _retire(self, activation: _Activation, *, reason: str, cancel: bool) -> None:
        """Make ``activation`` stale: take back its queue, end its view. No checkpoints."""
        if activation.stale:
            return
        activation.stale = True
        while True:
            try:
                routed = activation.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self._reroute_stale(activation, routed)
        activation.send.close()
        if cancel and activation.scope is not None:
            activation.scope.cancel(reason=f"active group {activation.group!r} is stale: {reason}")

    def _reroute_stale(self, activation: _Activation, routed: _Routed) -> None:
        group, event = routed
        if group is None:
            return  # channel-level: the background stream already got it
        self._rerouted_stale += 1
        log.debug("stale generation %d: %r event rerouted to background", activation.generation, group)
        self._to_background(group, event)

    def _route(self, event: RealtimeEvent) -> None:
        """Put ``event`` where it belongs, without blocking. Router task only."""
        group = self._group_of(event)
        current = self._current
        if group is None:
            if current is not None:
                try:
                    current.send.send_nowait((None, event))
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # it is on the background stream too
            self._to_background(None, event)
            return
        if current is not None and current.group == group:
            try:
                current.send.send_nowait((group, event))
            except trio.WouldBlock:
                self._spilled += 1
                log.debug("active %r: view queue full, event spilled to background", group)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the view was closed: the event is background now
            else:
                self._routed_active += 1
                log.debug("active %r (generation %d): event to view", group, current.generation)
                return
        self._to_background(group, event)

    def _to_background(self, group: str | None, event: RealtimeEvent) -> None:
        unread = 0
        if group is not None:
            unread = self._unread.get(group, 0) + 1
            self._unread[group] = unread
            if self._inbox is not None:
                try:
                    self._inbox._stage_add(group, event)
                except trio.ClosedResourceError:
                    self._unpersisted += 1
                    log.warning("background %r: the inbox is already closed; event not stored", group)
                else:
                    self._persisted += 1
        self._routed_background += 1
        try:
            self._bg_send.send_nowait(BackgroundEvent(group=group, event=event, unread=unread))
        except trio.WouldBlock:
            self._bg_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # nobody wants the feed (closed, or router closed): counters and inbox are current
        log.debug("background %r: event (unread %d)", group, unread)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The router task: the only reader of the subscription."""
        task_status.started()
        inbox = self._inbox
        while True:
            if inbox is not None:
                await inbox._wait_room()
            try:
                event = await self._sub.receive()
            except trio.EndOfChannel:
                break
            self._route(event)
        self._eof = True
        if self._current is not None:
            self._current.send.close()
        self._bg_send.close()
        log.info("subscription ended: views and the background stream end after their queued events")

    def _close(self) -> None:
        """Full cleanup: end the activation (cancelling its view), end the background stream."""
        if self._closed:
            return
        if self._current is not None:
            self._end_activation(self._current, reason="router closed", cancel=True)
        self._closed = True
        # Only the send side: a task still iterating the feed gets what is queued, then
        # EndOfChannel (closing the receive side would fail it with ClosedResourceError).
        self._bg_send.close()
        log.info("router closed (generation %d)", self._generation)


@asynccontextmanager
async def open_active_router(
    sub: trio.abc.ReceiveChannel[RealtimeEvent],
    *,
    group_of: GroupOf,
    inbox: SqliteInbox | None = None,
    active_buffer: int = 1000,
    background_buffer: int = 1000,
) -> AsyncIterator[ActiveRouter]:
    """Route ``sub``'s events between the active group and the background for the block.

    ``sub`` is usually a :class:`Subscription` covering all of the user's groups (one
    channel for the whole session, never recreated on a switch), but any
    :class:`trio.abc.ReceiveChannel` of events works. The router's task becomes its only
    reader: do not receive from it elsewhere. The router does not close ``sub``; its own
    ``async with`` does that.

    Leaving the block is the *full* cleanup: the router task stops, a view still bound
    (in any task) is cancelled and what it had not read goes to the background record
    (unread counters, inbox), and the background stream ends.

    Args:
        sub: the events to route.
        group_of: returns the group an event belongs to, or None for channel-level events
            (see :func:`group_by_field`). Called in the router task for every event, so keep
            it fast; an exception from it ends the router and propagates from this block.
        inbox: a :class:`SqliteInbox` that stores background events and unread counts; the
            router starts from the counts it holds. It must stay open as long as the router.
        active_buffer: the active view's queue size. An active event that does not fit is
            *spilled* to the background (counted unread, stored), never dropped.
        background_buffer: the background stream's queue size (drop-and-count when full).

    Raises:
        SubscriptionClosed, or whatever ``sub.receive()`` or ``group_of`` raised, after
        cancelling the block's body.
    """
    if active_buffer < 0 or background_buffer < 0:
        raise ValueError("buffer sizes must be >= 0")
    unread = {} if inbox is None else await inbox.unread_counts()
    router = ActiveRouter._create(sub, group_of, inbox, active_buffer, background_buffer, unread)
    log.info("router opened%s", "" if inbox is None else f" with inbox {inbox.path!r}")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(router._run)
            try:
                yield router
            finally:
                router._close()
                nursery.cancel_scope.cancel(reason="open_active_router exited")
    except BaseExceptionGroup as group:
        raise collapse(group, "the active router") from None
    finally:
        router._close()

