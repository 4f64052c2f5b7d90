"""Entity channels: per-entity subscriptions, presence and broadcasts, optionally per tenant.

Theory of operation
-------------------
Apps built around records ("contact 123", "project 456") want three kinds of channel per
entity: row changes (*subscription*), who is looking at it (*presence*) and ephemeral messages
about it (*broadcast*). :func:`open_entity_channels` gives a helper, :class:`EntityChannels`,
that names those channels the same way everywhere::

    [tenant:TENANT_ID:]TYPE:ENTITY_TYPE:ENTITY_ID      TYPE in subscription | presence | broadcast

and shares them. The helper keeps a registry, name -> entry. The first block that asks for a
channel starts an *entry task* in the helper's nursery; that task enters
``client.channel(name, ...)`` (so the channel's lifetime is owned by exactly one task, as an
async context manager must be), reports the subscription, and then *pumps* it: every event is
fanned out, with ``send_nowait``, to the bounded memory channel of each block holding it. A
second block on the same channel just adds a holder (no second server join). When the last
holder leaves, the entry task leaves the channel (shielded and bounded by ``leave_timeout``)
and the last holder's block returns only after that, so "out of the block" always means "left
on the server".

A holder that does not keep up does not slow the others or the pump: events that do not fit
in its queue are dropped and counted, and a :class:`~trio_realtime.Dropped` event takes their
place as soon as there is room (the client's own ``"drop"`` policy, per holder).

Tenant isolation: every name of a helper opened with ``tenant_id`` carries the tenant prefix,
and channels of different names are different server topics, so broadcasts and presence of
one tenant never reach another (tested). Row changes are different: the database, not the
channel name, decides which rows a subscription sees. ``subscribe_to_entity`` filters on
``id=eq.<entity_id>``; if tenants share a table and ids, isolate them with row level security
(private channels) or a schema per tenant (``schema=``).

Presence: one client is one presence per channel (the server tracks one meta per join), so
the presence key of an entity's presence channel is the user's ``id``. Every ``join_presence``
of the same user on the same entity shares the channel, and the latest ``join_presence`` or
``update_presence`` sets the tracked meta; a *different* user on the same entity through the
same client is refused with :class:`LocalProtocolError` (use a client per user).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, final

import attrs
import trio

from ._errors import LocalProtocolError, SubscriptionClosed
from ._groups import collapse
from ._subscription import _Subscriber
from ._util import NoPublicConstructor
from .protocol import (
    BroadcastConfig,
    PostgresChanges,
    PresenceConfig,
    PresenceSync,
    RealtimeEvent,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from ._client import RealtimeClient
    from ._subscription import Subscription

__all__ = [
    "ChannelKind",
    "EntityChannel",
    "EntityChannelInfo",
    "EntityChannels",
    "EntityChannelsStatistics",
    "entity_channel_name",
    "open_entity_channels",
]

log = logging.getLogger("trio_realtime.entities")

#: The three kinds of entity channel, the ``TYPE`` part of a channel name.
ChannelKind = Literal["subscription", "presence", "broadcast"]
_KINDS: tuple[ChannelKind, ...] = ("subscription", "presence", "broadcast")
#: Every status a channel can report, in :meth:`EntityChannels.statistics` order.
_STATUSES = ("joining", "joined", "errored", "leaving", "closed")


def _part(what: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise LocalProtocolError(f"{what} must be a string or an int, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise LocalProtocolError(f"{what} must not be empty")
    if ":" in text:
        raise LocalProtocolError(
            f"{what} must not contain ':' (it separates the parts of a channel name), got {text!r}"
        )
    return text


def entity_channel_name(
    kind: ChannelKind, entity_type: str, entity_id: str | int, *, tenant_id: str | int | None = None
) -> str:
    """The channel name of an entity channel: ``[tenant:TENANT_ID:]TYPE:ENTITY_TYPE:ENTITY_ID``.

    >>> entity_channel_name("presence", "contact", 123, tenant_id="abc")
    'tenant:abc:presence:contact:123'

    Raises:
        LocalProtocolError: ``kind`` is not one of subscription, presence, broadcast; or a part
            is empty, not a string or int, or contains ``':'``.
    """
    if kind not in _KINDS:
        raise LocalProtocolError(f"channel kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    name = f"{kind}:{_part('entity_type', entity_type)}:{_part('entity_id', entity_id)}"
    if tenant_id is not None:
        name = f"tenant:{_part('tenant_id', tenant_id)}:{name}"
    return name


@attrs.frozen(kw_only=True)
class EntityChannelInfo:
    """One channel of an :class:`EntityChannels`, from :meth:`EntityChannels.active_channels`.

    Attributes:
        name: the channel name (``tenant:abc:presence:contact:123``).
        topic: the wire topic (``realtime:`` + name).
        kind: subscription, presence or broadcast.
        entity_type, entity_id: the entity.
        tenant_id: the tenant, or None.
        status: ``joining``, ``joined``, ``errored`` (being rejoined), ``leaving`` or
            ``closed`` (the server closed it; its blocks still hold it).
        holders: blocks currently holding it (``broadcast()`` calls included).
        created_at: ``trio.current_time()`` when it was first requested.
        dropped: events dropped because a holder's queue was full.
    """

    name: str
    topic: str
    kind: ChannelKind
    entity_type: str
    entity_id: str
    tenant_id: str | None
    status: str
    holders: int
    created_at: float
    dropped: int


@attrs.frozen(kw_only=True)
class EntityChannelsStatistics:
    """A snapshot of an :class:`EntityChannels`, from :meth:`EntityChannels.statistics`.

    Attributes:
        total: channels (server joins) held right now.
        by_type: channel kind -> count; all three kinds are present.
        by_status: status -> count; every status of :class:`EntityChannelInfo` is present.
        holders: blocks holding them.
        dropped: events dropped on full holder queues since the helper opened.
    """

    total: int
    by_type: Mapping[str, int]
    by_status: Mapping[str, int]
    holders: int
    dropped: int


@attrs.define(eq=False)
class _Holder(_Subscriber):
    """One block's view of a shared channel: its own bounded queue (drop-and-count on
    overflow, with a :class:`Dropped` marker, exactly as a client subscription)."""

    #: The block exited: sends through it are errors.
    exited: bool = False


@attrs.define(eq=False)
class _Entry:
    """One shared channel in the registry."""

    name: str
    kind: ChannelKind
    entity_type: str
    entity_id: str
    tenant_id: str | None
    #: What the channel was joined with; a request with another signature is refused.
    signature: tuple[Any, ...]
    created_at: float
    holders: list[_Holder] = attrs.field(factory=list)
    #: References that are not holders (a ``broadcast()`` in progress).
    users: int = 0
    sub: Subscription | None = None
    #: Set once the first join succeeded or failed (then the entry is gone from the registry).
    settled: trio.Event = attrs.field(factory=trio.Event)
    #: The last reference went away: the entry task leaves the channel.
    releasing: bool = False
    pump_scope: trio.CancelScope | None = None
    #: Set when the entry task has left the channel and ended.
    done: trio.Event = attrs.field(factory=trio.Event)
    closed_reason: str | None = None
    ended: bool = False
    dropped: int = 0
    #: Presence: the user tracked and their meta.
    user: dict[str, Any] | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)

    @property
    def refs(self) -> int:
        return len(self.holders) + self.users

    @property
    def status(self) -> str:
        if self.closed_reason is not None or self.done.is_set():
            return "closed"
        if self.releasing:
            return "leaving"
        if self.sub is None:
            return "joining"
        return self.sub.status.value

    def add_holder(self, capacity: int) -> _Holder:
        send, receive = trio.open_memory_channel[RealtimeEvent](capacity)
        holder = _Holder(
            topic=f"realtime:{self.name}", send=send, receive=receive, capacity=capacity, overflow="drop"
        )
        if self.ended:
            send.close()
        self.holders.append(holder)
        return holder

    def remove_holder(self, holder: _Holder) -> None:
        holder.exited = True
        if holder in self.holders:
            self.holders.remove(holder)
        holder.send.close()
        holder.receive.close()

    def fan_out(self, event: RealtimeEvent) -> None:
        for holder in self.holders:
            before = holder.dropped
            holder.deliver(event)
            self.dropped += holder.dropped - before

    def end(self, reason: str | None) -> None:
        """The channel ended from the other side: every holder's stream ends after its queue."""
        self.ended = True
        if reason is not None and self.closed_reason is None:
            self.closed_reason = reason
        for holder in self.holders:
            holder.send.close()


@final
class EntityChannel(trio.abc.ReceiveChannel[RealtimeEvent], metaclass=NoPublicConstructor):
    """One block's hold on an entity channel: a :class:`trio.abc.ReceiveChannel` of events.

    Yielded by :meth:`EntityChannels.subscribe_to_entity`, :meth:`~EntityChannels.join_presence`
    and :meth:`~EntityChannels.subscribe_to_broadcasts`; there is no public constructor. Every
    holder of a shared channel receives every event in its own bounded queue. It lives exactly
    as long as its ``async with`` block.
    """

    def __init__(self, entry: _Entry, holder: _Holder) -> None:
        self._entry = entry
        self._holder = holder
        self._receiving = False

    def __repr__(self) -> str:
        return f"<EntityChannel {self._entry.name!r} {self._entry.status}>"

    @property
    def name(self) -> str:
        """The channel name, e.g. ``"tenant:abc:presence:contact:123"``."""
        return self._entry.name

    @property
    def topic(self) -> str:
        """The wire topic: ``"realtime:"`` + :attr:`name`."""
        return f"realtime:{self._entry.name}"

    @property
    def kind(self) -> ChannelKind:
        """``"subscription"``, ``"presence"`` or ``"broadcast"``."""
        return self._entry.kind

    @property
    def entity_type(self) -> str:
        return self._entry.entity_type

    @property
    def entity_id(self) -> str:
        return self._entry.entity_id

    @property
    def tenant_id(self) -> str | None:
        return self._entry.tenant_id

    @property
    def status(self) -> str:
        """``joined`` while all is well; see :class:`EntityChannelInfo` for the others."""
        return self._entry.status

    @property
    def dropped(self) -> int:
        """Events this holder lost because its queue was full."""
        return self._holder.dropped

    async def receive(self) -> RealtimeEvent:
        """The next event. A checkpoint.

        Raises:
            SubscriptionClosed: the server closed the channel (after every queued event).
            trio.EndOfChannel: the channel ended (its client or helper closed).
            trio.ClosedResourceError: this block has exited (or :meth:`aclose` was called).
            trio.BusyResourceError: another task is already receiving from this holder.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this entity channel")
        self._receiving = True
        try:
            return await self._holder.receive.receive()
        except trio.EndOfChannel:
            self._raise_closed()
            raise
        finally:
            self._receiving = False

    def receive_nowait(self) -> RealtimeEvent:
        """The next event if one is queued, else raise :class:`trio.WouldBlock`."""
        try:
            return self._holder.receive.receive_nowait()
        except trio.EndOfChannel:
            self._raise_closed()
            raise

    def _raise_closed(self) -> None:
        if self._entry.closed_reason is not None:
            raise SubscriptionClosed(self.topic, self._entry.closed_reason) from None

    async def aclose(self) -> None:
        """Stop receiving (the holder keeps its share until its block exits). A checkpoint."""
        await self._holder.receive.aclose()

    async def send_broadcast(self, event: str, payload: Any = None) -> None:
        """Broadcast ``payload`` as ``event`` on this channel; see ``Subscription.send_broadcast``.

        Other holders through the same client do not receive it (the server does not echo a
        broadcast to the connection that sent it). A checkpoint.

        Raises:
            trio.ClosedResourceError: this block has exited.
            As ``Subscription.send_broadcast``.
        """
        await self._subscription().send_broadcast(event, payload)

    def presence(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """The channel's current presence state: key -> presences (each with ``presence_ref``)."""
        return self._subscription().presence()

    def _subscription(self) -> Subscription:
        sub = self._entry.sub
        if self._holder.exited or sub is None or self._entry.done.is_set():
            raise trio.ClosedResourceError(f"entity channel {self._entry.name!r} was closed")
        return sub


@final
class EntityChannels(metaclass=NoPublicConstructor):
    """Entity-oriented channels over one client, named per entity and tenant, and shared.

    Built by :func:`open_entity_channels`; there is no public constructor. See the
    module documentation of ``trio_realtime._entities`` for naming, sharing and isolation.
    """

    def __init__(
        self,
        client: RealtimeClient,
        nursery: trio.Nursery,
        tenant_id: str | None,
        broadcast: BroadcastConfig,
        buffer: int,
    ) -> None:
        self._client = client
        self._nursery = nursery
        self._tenant_id = tenant_id
        self._broadcast = broadcast
        self._buffer = buffer
        self._entries: dict[str, _Entry] = {}
        self._dropped_gone = 0  # dropped counts of channels already left
        self._closed = False

    def __repr__(self) -> str:
        tenant = "" if self._tenant_id is None else f" tenant={self._tenant_id!r}"
        return f"<EntityChannels{tenant} {len(self._entries)} channels>"

    @property
    def tenant_id(self) -> str | None:
        """The tenant every channel name is scoped to, or None."""
        return self._tenant_id

    @property
    def client(self) -> RealtimeClient:
        """The client the channels are joined on."""
        return self._client

    def channel_name(self, kind: ChannelKind, entity_type: str, entity_id: str | int) -> str:
        """This helper's name for an entity channel (with its tenant prefix, if any).

        Raises:
            LocalProtocolError: as :func:`entity_channel_name`.
        """
        return entity_channel_name(kind, entity_type, entity_id, tenant_id=self._tenant_id)

    # -- the entity helpers ------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe_to_entity(
        self,
        entity_type: str,
        entity_id: str | int,
        *,
        table: str | None = None,
        events: Sequence[str] = ("*",),
        schema: str = "public",
    ) -> AsyncIterator[EntityChannel]:
        """Receive the row changes of one entity for the duration of the block.

        Joins ``[tenant:T:]subscription:ENTITY_TYPE:ENTITY_ID`` with one postgres_changes
        binding per event, each filtered on ``id=eq.<entity_id>``; the channel yields
        :class:`~trio_realtime.PostgresChange` events. Blocks asking for the same entity share
        one join. A checkpoint on entry.

        Args:
            entity_type: e.g. ``"contact"``.
            entity_id: the row's ``id``.
            table: the table (default: ``entity_type + "s"``, e.g. ``"contacts"``).
            events: any of ``"INSERT"``, ``"UPDATE"``, ``"DELETE"``, or ``("*",)`` for all.
            schema: the table's schema.

        Raises:
            LocalProtocolError: a bad name part or event; or this entity is already subscribed
                through this helper with another table, schema or events.
            JoinRejected, JoinTimedOut: as :meth:`RealtimeClient.channel` (e.g. the server
                could not subscribe to the database).
        """
        name = self.channel_name("subscription", entity_type, entity_id)
        table_name = _part("table", table) if table is not None else f"{_part('entity_type', entity_type)}s"
        entity = str(entity_id)
        if isinstance(events, str) or not events:
            raise LocalProtocolError(f"events must be a non-empty sequence of event names, got {events!r}")
        bindings = tuple(
            PostgresChanges(event=event, schema=schema, table=table_name, filter=f"id=eq.{entity}")
            for event in events
        )
        signature = ("subscription", schema, table_name, tuple(b.event for b in bindings))
        kwargs: dict[str, Any] = {"postgres_changes": bindings}
        async with self._hold("subscription", entity_type, entity_id, name, signature, kwargs) as channel:
            yield channel

    @asynccontextmanager
    async def subscribe_to_broadcasts(
        self, entity_type: str, entity_id: str | int
    ) -> AsyncIterator[EntityChannel]:
        """Receive the broadcasts about one entity for the duration of the block.

        Joins ``[tenant:T:]broadcast:ENTITY_TYPE:ENTITY_ID``, the channel :meth:`broadcast`
        sends on; the channel yields :class:`~trio_realtime.Broadcast` events. A checkpoint on
        entry.

        Raises:
            LocalProtocolError: a bad name part.
            JoinRejected, JoinTimedOut: as :meth:`RealtimeClient.channel`.
        """
        name = self.channel_name("broadcast", entity_type, entity_id)
        kwargs: dict[str, Any] = {"broadcast": self._broadcast}
        async with self._hold("broadcast", entity_type, entity_id, name, ("broadcast",), kwargs) as channel:
            yield channel

    @asynccontextmanager
    async def join_presence(
        self,
        entity_type: str,
        entity_id: str | int,
        user: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[EntityChannel]:
        """Be present on an entity for the duration of the block.

        Joins ``[tenant:T:]presence:ENTITY_TYPE:ENTITY_ID`` with presence key ``user["id"]``
        and tracks ``{"user": user, "meta": meta}``; the channel yields
        :class:`~trio_realtime.PresenceSync`, ``PresenceJoin`` and ``PresenceLeave`` events
        (a block joining an already joined channel starts with a ``PresenceSync`` of the
        current state). Leaving the last block of this entity leaves the channel, which
        untracks. A checkpoint on entry.

        Args:
            entity_type, entity_id: the entity.
            user: who is present; must have an ``"id"`` (str or int). JSON-serialisable.
            meta: anything else to show (role, cursor colour ...). JSON-serialisable.

        Raises:
            LocalProtocolError: a bad name part, a user without an id, or another user already
                present on this entity through this helper (one client tracks one user per
                channel; use a client per user).
            JoinRejected, JoinTimedOut, PushRejected, PushTimedOut: from joining or tracking.
        """
        key = _user_key(user)
        name = self.channel_name("presence", entity_type, entity_id)
        existing = self._entries.get(name)
        if existing is not None and existing.user is not None and _user_key(existing.user) != key:
            raise LocalProtocolError(
                f"{name!r} already tracks user {_user_key(existing.user)!r} on this client; one "
                f"client tracks one user per channel, so user {key!r} needs a client of its own"
            )
        kwargs: dict[str, Any] = {"presence": PresenceConfig(key=key), "broadcast": self._broadcast}
        async with self._hold("presence", entity_type, entity_id, name, ("presence", key), kwargs) as channel:
            entry = channel._entry
            entry.user = dict(user)
            entry.meta = dict(meta or {})
            await self._track(entry)
            yield channel

    async def broadcast(
        self, entity_type: str, entity_id: str | int, event: str, payload: Any = None
    ) -> None:
        """Broadcast ``payload`` as ``event`` to everyone on an entity's broadcast channel.

        Uses the channel if a block of this helper holds it; otherwise joins it for the send
        and leaves it afterwards (concurrent calls share that join). Returns once the frame
        was handed to the socket (or acknowledged, with ``BroadcastConfig(ack=True)``). For
        high-frequency values, hold the channel with :meth:`subscribe_to_broadcasts` and use
        :func:`~trio_realtime.open_debounced_sender` on it. A checkpoint.

        Raises:
            LocalProtocolError: a bad name part.
            As :meth:`RealtimeClient.channel` and ``Subscription.send_broadcast``.
        """
        name = self.channel_name("broadcast", entity_type, entity_id)
        kwargs: dict[str, Any] = {"broadcast": self._broadcast}
        entry = await self._acquire("broadcast", entity_type, entity_id, name, ("broadcast",), kwargs, None)
        try:
            assert entry.sub is not None
            await entry.sub.send_broadcast(event, payload)
        finally:
            entry.users -= 1
            await self._released(entry)

    def presence_state(self, entity_type: str, entity_id: str | int) -> dict[str, tuple[dict[str, Any], ...]]:
        """The cached presence state of an entity this helper is present on.

        Returns:
            user id -> presences, each ``{"user": ..., "meta": ..., "presence_ref": ...}``.
            Kept current by the client as presence events arrive; reading it does no I/O.

        Raises:
            LocalProtocolError: no block of this helper is in ``join_presence`` for it.
        """
        sub = self._presence_entry(entity_type, entity_id, "presence_state").sub
        assert sub is not None  # checked by _presence_entry
        return sub.presence()

    async def update_presence(self, entity_type: str, entity_id: str | int, meta: Mapping[str, Any]) -> None:
        """Merge ``meta`` into this client's presence meta on an entity and track it again.

        Keys in ``meta`` replace the same keys; others are kept. Everyone on the channel gets
        a presence diff. A checkpoint.

        Raises:
            LocalProtocolError: no block of this helper is in ``join_presence`` for it.
            PushRejected, PushTimedOut, ConnectionLost: as ``Subscription.track``.
        """
        entry = self._presence_entry(entity_type, entity_id, "update_presence")
        entry.meta = {**entry.meta, **meta}
        await self._track(entry)

    # -- introspection -------------------------------------------------------------------------------

    def has_channel(self, kind: ChannelKind, entity_type: str, entity_id: str | int) -> bool:
        """Whether this helper holds that entity channel right now."""
        return self.channel_name(kind, entity_type, entity_id) in self._entries

    def active_channels(self) -> tuple[EntityChannelInfo, ...]:
        """Every channel this helper holds, sorted by name."""
        return tuple(
            EntityChannelInfo(
                name=entry.name,
                topic=f"realtime:{entry.name}",
                kind=entry.kind,
                entity_type=entry.entity_type,
                entity_id=entry.entity_id,
                tenant_id=entry.tenant_id,
                status=entry.status,
                holders=entry.refs,
                created_at=entry.created_at,
                dropped=entry.dropped,
            )
            for entry in sorted(self._entries.values(), key=lambda e: e.name)
        )

    def statistics(self) -> EntityChannelsStatistics:
        """Channel counts by kind and by status, holders, and events dropped."""
        by_type: dict[str, int] = dict.fromkeys(_KINDS, 0)
        by_status: dict[str, int] = dict.fromkeys(_STATUSES, 0)
        for entry in self._entries.values():
            by_type[entry.kind] += 1
            by_status[entry.status] = by_status.get(entry.status, 0) + 1
        return EntityChannelsStatistics(
            total=len(self._entries),
            by_type=by_type,
            by_status=by_status,
            holders=sum(entry.refs for entry in self._entries.values()),
            dropped=self._dropped_gone + sum(entry.dropped for entry in self._entries.values()),
        )

    # -- internals ------------------------------------------------------------------------------------

    def _presence_entry(self, entity_type: str, entity_id: str | int, what: str) -> _Entry:
        name = self.channel_name("presence", entity_type, entity_id)
        entry = self._entries.get(name)
        if entry is None or entry.sub is None or entry.user is None or entry.releasing:
            raise LocalProtocolError(
                f"{what}: not present on {name!r}; enter join_presence({entity_type!r}, "
                f"{str(entity_id)!r}, ...) first"
            )
        return entry

    async def _track(self, entry: _Entry) -> None:
        assert entry.sub is not None
        await entry.sub.track({"user": entry.user, "meta": entry.meta})

    @asynccontextmanager
    async def _hold(
        self,
        kind: ChannelKind,
        entity_type: str,
        entity_id: str | int,
        name: str,
        signature: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> AsyncIterator[EntityChannel]:
        holder_box: list[_Holder] = []
        entry = await self._acquire(kind, entity_type, entity_id, name, signature, kwargs, holder_box)
        holder = holder_box[0]
        try:
            yield EntityChannel._create(entry, holder)
        finally:
            entry.remove_holder(holder)
            await self._released(entry)

    async def _acquire(
        self,
        kind: ChannelKind,
        entity_type: str,
        entity_id: str | int,
        name: str,
        signature: tuple[Any, ...],
        kwargs: dict[str, Any],
        holder_box: list[_Holder] | None,
    ) -> _Entry:
        """Take a reference on channel ``name``, joining it if nobody holds it.

        With ``holder_box`` the reference is a holder (appended to the box), else a user.
        """
        if self._closed:
            raise trio.ClosedResourceError("the EntityChannels block has exited")
        while True:
            entry = self._entries.get(name)
            if entry is None:
                entry = _Entry(
                    name=name,
                    kind=kind,
                    entity_type=str(entity_type),
                    entity_id=str(entity_id),
                    tenant_id=self._tenant_id,
                    signature=signature,
                    created_at=trio.current_time(),
                )
                self._entries[name] = entry
                self._take(entry, holder_box)
                log.info("joining %s", name)
                try:
                    await self._nursery.start(self._run_entry, entry, kwargs)
                except BaseException:
                    if self._entries.get(name) is entry:
                        del self._entries[name]
                    if holder_box:
                        entry.remove_holder(holder_box.pop())
                    else:
                        entry.users -= 1
                    entry.settled.set()
                    raise
                entry.settled.set()
                return entry
            if entry.signature != signature:
                raise LocalProtocolError(
                    f"{name!r} is already held through this helper with another configuration "
                    f"({_describe(entry.signature)}); blocks on one entity channel share one join, so "
                    f"they must ask for the same one (this one asked for {_describe(signature)})"
                )
            if entry.releasing:
                await entry.done.wait()  # its last holder is leaving; then join afresh
                continue
            if not entry.settled.is_set():
                await entry.settled.wait()
                continue  # joined (share it) or failed (gone: try ourselves)
            if entry.closed_reason is not None:
                raise SubscriptionClosed(f"realtime:{name}", entry.closed_reason)
            await trio.lowlevel.checkpoint()
            if self._entries.get(name) is not entry or entry.releasing:
                continue
            self._take(entry, holder_box)
            if holder_box is not None and kind == "presence" and entry.sub is not None:
                # A later holder starts from the current state, as a first one would.
                holder = holder_box[0]
                before = holder.dropped
                holder.deliver(PresenceSync(topic=f"realtime:{name}", state=entry.sub.presence()))
                entry.dropped += holder.dropped - before
            return entry

    def _take(self, entry: _Entry, holder_box: list[_Holder] | None) -> None:
        if holder_box is None:
            entry.users += 1
        else:
            holder_box.append(entry.add_holder(self._buffer))

    async def _released(self, entry: _Entry) -> None:
        """A reference went away; if it was the last, leave the channel and wait until left."""
        if entry.refs or entry.releasing:
            return
        entry.releasing = True
        if entry.pump_scope is not None:
            entry.pump_scope.cancel()
        with trio.CancelScope(shield=True):  # the leave is bounded by leave_timeout
            await entry.done.wait()

    async def _run_entry(
        self, entry: _Entry, kwargs: dict[str, Any], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The entry task: hold ``client.channel(...)`` and pump its events to the holders."""
        try:
            async with self._client.channel(entry.name, **kwargs) as sub:
                entry.sub = sub
                with trio.CancelScope() as scope:
                    entry.pump_scope = scope
                    task_status.started()
                    try:
                        async for event in sub:
                            entry.fan_out(event)
                    except SubscriptionClosed as exc:
                        log.warning("server closed %s: %s", entry.name, exc.reason)
                        entry.end(exc.reason)
                    else:
                        entry.end(None)
                    await trio.sleep_forever()  # until the last holder leaves
        finally:
            entry.end(None)
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]
                self._dropped_gone += entry.dropped
            entry.done.set()
            log.info("left %s", entry.name)

    def _close(self) -> None:
        self._closed = True


def _user_key(user: Mapping[str, Any]) -> str:
    if not hasattr(user, "get"):
        raise LocalProtocolError(f"user must be a mapping with an 'id', got {type(user).__name__}")
    uid = user.get("id")
    if isinstance(uid, bool) or not isinstance(uid, str | int) or str(uid) == "":
        raise LocalProtocolError(f"user must have a non-empty 'id' (a string or int), got {uid!r}")
    return str(uid)


def _describe(signature: tuple[Any, ...]) -> str:
    if signature[0] == "subscription":
        _, schema, table, events = signature
        return f"schema={schema!r}, table={table!r}, events={list(events)!r}"
    if signature[0] == "presence":
        return f"presence for user {signature[1]!r}"
    return "broadcast"


@asynccontextmanager
async def open_entity_channels(
    client: RealtimeClient,
    *,
    tenant_id: str | int | None = None,
    broadcast: BroadcastConfig | None = None,
    buffer: int | None = None,
) -> AsyncIterator[EntityChannels]:
    """Entity channels over ``client`` for the duration of the block.

    The helper owns one nursery, in which each shared channel's task runs; leaving the block
    leaves every channel it still holds. Several helpers may share one client (e.g. one per
    tenant)::

        async with open_realtime(url, api_key=key) as client, open_entity_channels(
            client, tenant_id="acme"
        ) as entities:
            async with entities.join_presence("project", 456, {"id": "u1", "name": "Ann"}) as who:
                async for event in who:
                    ...

    Args:
        client: an open :class:`~trio_realtime.RealtimeClient`.
        tenant_id: prefix every channel name with ``tenant:TENANT_ID:``. Broadcasts and
            presence never cross tenants; for row changes see the module documentation.
        broadcast: broadcast options of the presence and broadcast channels (default: no ack,
            no self-delivery). With ``ack=True``, :meth:`EntityChannels.broadcast` returns once
            the server acknowledged.
        buffer: each holder's queue size (default ``client.config.subscription_buffer``).

    Raises:
        LocalProtocolError: ``tenant_id`` is empty or contains ``':'``.
    """
    tenant = None if tenant_id is None else _part("tenant_id", tenant_id)
    capacity = client.config.subscription_buffer if buffer is None else buffer
    if capacity < 1:
        raise LocalProtocolError(f"buffer must be at least 1, got {capacity!r}")
    try:
        async with trio.open_nursery() as nursery:
            helper = EntityChannels._create(client, nursery, tenant, broadcast or BroadcastConfig(), capacity)
            try:
                yield helper
            finally:
                helper._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise collapse(group, "the entity channels") from None
