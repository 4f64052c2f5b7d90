"""Frozen event classes: what a subscription delivers, and what the protocol core reports.

*Subscription events* (:data:`RealtimeEvent`) are what ``async for event in channel`` yields.
*Connection events* (:class:`Reply`, :class:`HeartbeatAcked`, :class:`ChannelClosed`) are
bookkeeping the core reports to whoever drives it (the Trio client, or your own loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

__all__ = [
    "Authenticated",
    "Broadcast",
    "ChannelClosed",
    "ChannelErrored",
    "ConnectionEvent",
    "Dropped",
    "HeartbeatAcked",
    "PresenceJoin",
    "PresenceLeave",
    "PostgresChange",
    "PresenceSync",
    "RealtimeEvent",
    "Rejoined",
    "Reply",
    "ServerEvent",
    "SystemMessage",
]

#: One presence entry: the tracked metadata plus ``presence_ref``.
Presence: TypeAlias = Mapping[str, Any]


@attrs.frozen(kw_only=True)
class Broadcast:
    """A broadcast on a channel.

    Attributes:
        topic: the channel topic (``realtime:...``).
        event: the user event name given by the sender.
        payload: the JSON value sent, or ``bytes`` for a binary broadcast (vsn 2.0.0).
        meta: server metadata (``{"id": ..., "replayed": ...}``) or None.
    """

    topic: str
    event: str
    payload: Any
    meta: Mapping[str, Any] | None = None

    @property
    def id(self) -> str | None:
        """The server's message id (replayable broadcasts only)."""
        if self.meta is None:
            return None
        value = self.meta.get("id")
        return None if value is None else str(value)

    @property
    def replayed(self) -> bool:
        """True if the server marked this message as replayed."""
        return bool(self.meta and self.meta.get("replayed"))


@attrs.frozen(kw_only=True)
class PresenceSync:
    """The presence state after a ``presence_state`` or ``presence_diff`` was applied.

    Attributes:
        state: presence key -> tuple of presences (each a mapping with ``presence_ref``).
    """

    topic: str
    state: Mapping[str, tuple[Presence, ...]]


@attrs.frozen(kw_only=True)
class PresenceJoin:
    """Presences joined under ``key`` (``current`` is what was there before)."""

    topic: str
    key: str
    current: tuple[Presence, ...]
    new: tuple[Presence, ...]


@attrs.frozen(kw_only=True)
class PresenceLeave:
    """Presences left ``key`` (``current`` is what remains)."""

    topic: str
    key: str
    current: tuple[Presence, ...]
    left: tuple[Presence, ...]


@attrs.frozen(kw_only=True)
class SystemMessage:
    """A ``system`` push (PROTOCOL.md §3.7).

    ``status == "error"`` with ``extension == "system"`` means the server is about to close
    the channel; the subscription then ends with :class:`SubscriptionClosed`.
    """

    topic: str
    extension: str
    status: str
    message: str
    channel: str | None = None


@attrs.frozen(kw_only=True)
class PostgresChange:
    """A row change from PostgreSQL (postgres_changes, PROTOCOL.md §6.4).

    One event per change and channel, however many of the channel's bindings matched: their
    positions in the ``postgres_changes`` list you passed are in ``bindings``.

    Attributes:
        topic: the channel topic.
        type: ``"INSERT"``, ``"UPDATE"`` or ``"DELETE"``.
        schema, table: where the row lives.
        commit_timestamp: the commit time as the server sent it (ISO 8601, UTC).
        columns: ``({"name": ..., "type": ...}, ...)`` in table order.
        record: the new row (INSERT, UPDATE), else ``{}``.
        old_record: the old row (UPDATE, DELETE): the primary key only unless the table has
            ``REPLICA IDENTITY FULL``; else ``{}``.
        errors: the server's errors for this change (e.g. ``["Error 413: Payload Too Large"]``).
        bindings: indexes of the matching bindings in the channel's ``postgres_changes``.
    """

    topic: str
    type: str
    schema: str
    table: str
    commit_timestamp: str | None
    columns: tuple[Mapping[str, Any], ...]
    record: Mapping[str, Any]
    old_record: Mapping[str, Any]
    errors: tuple[str, ...] = ()
    bindings: tuple[int, ...] = ()

    @property
    def new(self) -> Mapping[str, Any]:
        """The new row (realtime-js's name for ``record``)."""
        return self.record

    @property
    def old(self) -> Mapping[str, Any]:
        """The old row (realtime-js's name for ``old_record``)."""
        return self.old_record


@attrs.frozen(kw_only=True)
class ServerEvent:
    """A server push with an event name this library has no class for (delivered, not lost)."""

    topic: str
    event: str
    payload: Any


@attrs.frozen(kw_only=True)
class ChannelErrored:
    """The channel's server-side join was lost (connection loss or ``phx_error``).

    The client rejoins by itself; a :class:`Rejoined` event follows when it has.
    """

    topic: str
    reason: str


@attrs.frozen(kw_only=True)
class Rejoined:
    """The channel is joined again after :class:`ChannelErrored`.

    Attributes:
        recovered: True only if the client can prove nothing was missed while the channel was
            not joined. Without server replay it cannot, so this is False: refetch what you need.
    """

    topic: str
    recovered: bool


@attrs.frozen(kw_only=True)
class Dropped:
    """``count`` events were dropped because this subscription's queue was full.

    Delivered in place of the missing events, as soon as the queue has room again
    (overflow policy ``"drop"``).
    """

    topic: str
    count: int


RealtimeEvent: TypeAlias = (
    Broadcast
    | PostgresChange
    | PresenceSync
    | PresenceJoin
    | PresenceLeave
    | SystemMessage
    | ServerEvent
    | ChannelErrored
    | Rejoined
    | Dropped
)


@attrs.frozen(kw_only=True)
class Reply:
    """A ``phx_reply`` to one of our pushes.

    Attributes:
        ref: the push's ref.
        topic: the push's topic.
        event: the pushed event (``"phx_join"``, ``"broadcast"``, ``"presence"``, ...).
        status: ``"ok"`` or ``"error"``.
        response: the reply's ``response`` object.
    """

    ref: str
    topic: str
    event: str
    status: str
    response: Any

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@attrs.frozen(kw_only=True)
class HeartbeatAcked:
    """The server answered our heartbeat after ``rtt`` seconds."""

    rtt: float


@attrs.frozen(kw_only=True)
class ChannelClosed:
    """The server closed the channel (``phx_close`` not caused by our own leave).

    Attributes:
        reason: the preceding ``system`` error message if there was one, else a description.
    """

    topic: str
    reason: str


@attrs.frozen(kw_only=True)
class Authenticated:
    """The server accepted the connection's token and named the connection (seed-002's
    ``auth_success``; Phoenix servers never send it)."""

    connection_id: str


ConnectionEvent: TypeAlias = Reply | HeartbeatAcked | ChannelClosed | Authenticated
