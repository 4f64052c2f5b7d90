"""Subscriptions: what ``async with client.channel(...) as sub`` gives you."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._errors import LocalProtocolError, SubscriptionClosed
from ._util import NoPublicConstructor
from .protocol import ChannelConfig, ChannelCore, ChannelState, Dropped, RealtimeEvent, SystemMessage

if TYPE_CHECKING:
    from ._client import RealtimeClient, _Waiter
    from ._config import OverflowPolicy

__all__ = ["Subscription", "SubscriptionStatistics"]


@attrs.frozen(kw_only=True)
class SubscriptionStatistics:
    """A snapshot of one subscription.

    Attributes:
        topic: the channel topic.
        status: the channel state (``joining``, ``joined``, ``errored``, ...).
        queued: events waiting in the queue.
        capacity: the queue's capacity.
        delivered: events put in the queue so far.
        dropped: events dropped because the queue was full.
        pending_pushes: pushes buffered until the channel is joined.
        subscribers: subscriptions sharing this channel's join (this one included).
    """

    topic: str
    status: str
    queued: int
    capacity: int
    delivered: int
    dropped: int
    pending_pushes: int
    subscribers: int


@attrs.define(eq=False)
class _Outgoing:
    """A push buffered while its channel was not joined."""

    event: str
    payload: Any
    want_reply: bool
    #: Set once the frame was handed to the transport (or the push failed).
    done: trio.Event = attrs.field(factory=trio.Event)
    ref: str | None = None
    #: Waits for the reply (``want_reply`` only); set when the frame is sent.
    waiter: _Waiter | None = None
    error: BaseException | None = None


#: A queue holding this many events makes the reader let its consumer drain it before the next
#: socket read (see ``RealtimeClient._let_consumers_drain``); fewer never delay the reader.
DRAIN_THRESHOLD = 64


@attrs.define(eq=False)
class _Subscriber:
    """One ``async with client.channel(...)`` block's queue. Fed by the reader task only."""

    topic: str
    send: trio.MemorySendChannel[RealtimeEvent]
    receive: trio.MemoryReceiveChannel[RealtimeEvent]
    capacity: int
    overflow: OverflowPolicy
    delivered: int = 0
    dropped: int = 0
    pending_dropped: int = 0
    #: Why this subscriber's stream ended from the other side (server close, overflow, ...).
    closed_reason: str | None = None
    #: Events in the queue right now (sent minus received).
    queued: int = 0
    #: Events the consumer took so far.
    taken: int = 0
    #: Set by the consumer when the queue becomes empty while the reader waits for that.
    drained: trio.Event | None = None
    #: The consumer took nothing during a whole drain wait: the reader stops waiting for it
    #: until it takes an event again.
    stalled: bool = False
    #: Where this subscriber registers itself when its queue reaches ``DRAIN_THRESHOLD``
    #: (the client's list of queues to let drain before the next socket read).
    backlog: list[_Subscriber] | None = None
    in_backlog: bool = False

    def took(self, n: int) -> None:
        """The consumer received ``n`` events."""
        self.queued -= n
        self.taken += n
        self.stalled = False
        if self.queued <= 0 and self.drained is not None:
            self.drained.set()

    def _queued_one(self) -> None:
        self.queued += 1
        if self.queued >= DRAIN_THRESHOLD and not self.in_backlog and self.backlog is not None:
            self.in_backlog = True
            self.backlog.append(self)

    def deliver(self, event: RealtimeEvent) -> None:
        """Queue ``event`` without blocking, applying the overflow policy."""
        if self.closed_reason is not None:
            return
        if self.pending_dropped:
            try:
                self.send.send_nowait(Dropped(topic=self.topic, count=self.pending_dropped))
            except trio.WouldBlock:
                self.pending_dropped += 1
                self.dropped += 1
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._queued_one()
            self.pending_dropped = 0
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            if self.overflow == "close":
                self.end(
                    f"overflow: the subscriber did not keep up and its queue of {self.capacity} "
                    "events filled (raise subscription_buffer, or use overflow='drop')"
                )
            else:
                self.pending_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        else:
            self.delivered += 1
            self._queued_one()

    def end(self, reason: str) -> None:
        """End this stream: queued events stay readable, then receive raises
        SubscriptionClosed(reason)."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.send.close()


@attrs.define(eq=False)
class _Channel:
    """One server-side join of a topic, shared by every subscriber of that topic on a client.

    Owned by the client; the reader task is the only one that delivers to it.
    """

    topic: str
    config: ChannelConfig
    core: ChannelCore
    max_pending: int
    subscribers: list[_Subscriber] = attrs.field(factory=list)
    #: Serialises first joins: a subscriber entering while another is joining waits for it.
    join_lock: trio.Lock = attrs.field(factory=trio.Lock)
    #: Set once the client dropped this channel (left, or closed by the server).
    forgotten: bool = False
    #: The last subscriber's block is exiting: no more deliveries, no rejoins.
    closing: bool = False
    #: Why the channel ended from the other side (server close, rejoin give-up, client closed).
    closed_reason: str | None = None
    #: At most ``max_pending`` items, so a list (56 bytes empty, against a deque's 600) is fine.
    outbox: list[_Outgoing] = attrs.field(factory=list)
    #: True while buffered pushes are being sent after a join; direct sends wait their turn.
    flushing: bool = False
    #: The channel is joined and its outbox was flushed: pushes may go straight to the wire.
    ready: bool = False
    #: ChannelErrored was delivered: the next successful join delivers Rejoined.
    errored: bool = False
    #: The presence meta last tracked (None: not tracking); re-tracked after every rejoin.
    tracked_meta: dict[str, Any] | None = None
    #: The last postgres_changes subscription result (``system`` message) and its signal.
    postgres_status: SystemMessage | None = None
    #: Woken on each change of forgotten / outbox room / postgres_status; created only when
    #: someone waits (most channels never need one: ~200 bytes each saved).
    _changed: trio.Event | None = None
    #: Replay bookkeeping: ids already delivered (oldest first, bounded) and the Unix time of
    #: the last broadcast delivered (or of the first join, before any).
    seen_ids: dict[str, None] = attrs.field(factory=dict)
    last_delivery: float | None = None
    #: ``meta.inserted_at`` (Unix ms) of the last broadcast delivered, when the server stamps
    #: its stored messages (the reference server does): rejoins resume exactly there.
    last_inserted_at: int | None = None
    #: Broadcasts dropped as duplicates of ones already delivered (replay overlap).
    duplicates: int = 0

    def first_delivery_of(self, message_id: str, memory: int) -> bool:
        """Remember ``message_id``; False if it was delivered before (a replayed duplicate)."""
        if message_id in self.seen_ids:
            self.duplicates += 1
            return False
        self.seen_ids[message_id] = None
        if len(self.seen_ids) > memory:
            del self.seen_ids[next(iter(self.seen_ids))]
        return True

    def postgres_result(self, message: SystemMessage) -> None:
        """The server reported the database subscription's result. Reader task only."""
        self.postgres_status = message
        self.notify()

    async def wait_postgres_result(self) -> SystemMessage:
        """Wait for the result of the current join's database subscription."""
        while self.postgres_status is None:
            await self.wait_change()
        return self.postgres_status

    def add_subscriber(self, capacity: int, overflow: OverflowPolicy) -> _Subscriber:
        send, receive = trio.open_memory_channel[RealtimeEvent](capacity)
        subscriber = _Subscriber(
            topic=self.topic, send=send, receive=receive, capacity=capacity, overflow=overflow
        )
        self.subscribers.append(subscriber)
        return subscriber

    def remove_subscriber(self, subscriber: _Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
        subscriber.backlog = None  # the reader stops waiting for it
        subscriber.send.close()
        subscriber.receive.close()

    def deliver(self, event: RealtimeEvent) -> None:
        """Queue ``event`` for every subscriber, each under its own overflow policy."""
        if self.closing or self.closed_reason is not None:
            return
        for subscriber in self.subscribers:
            subscriber.deliver(event)

    def end(self, reason: str) -> None:
        """The channel ended from the other side: every subscriber's stream ends."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.ready = False
        for subscriber in self.subscribers:
            subscriber.end(reason)
        self.fail_outbox(SubscriptionClosed(self.topic, reason))

    def fail_outbox(self, error: BaseException) -> None:
        while self.outbox:
            item = self.outbox.pop(0)
            item.error = error
            item.done.set()
        self.wake_outbox()

    def wake_outbox(self) -> None:
        self.notify()

    def mark_forgotten(self) -> None:
        """The client dropped this channel; a subscription waiting to start afresh may go."""
        self.forgotten = True
        self.notify()

    def notify(self) -> None:
        """Wake every task in :meth:`wait_change`."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_change(self) -> None:
        """Wait for the next :meth:`notify` (callers re-check their condition in a loop)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()


@final
class Subscription(trio.abc.ReceiveChannel[RealtimeEvent], metaclass=NoPublicConstructor):
    """One joined channel, as a :class:`trio.abc.ReceiveChannel` of typed, frozen events.

    Built by :meth:`RealtimeClient.channel`; there is no public constructor. Iterate it with
    ``async for event in sub`` and send with :meth:`send_broadcast`, :meth:`track` and
    :meth:`untrack`. It lives exactly as long as its ``async with`` block.

    Events are :class:`Broadcast`, :class:`PresenceSync`/:class:`PresenceJoin`/
    :class:`PresenceLeave`, :class:`SystemMessage`, :class:`ServerEvent`,
    :class:`ChannelErrored` + :class:`Rejoined` around a lost join, and :class:`Dropped` where
    events were dropped on overflow.
    """

    def __init__(self, client: RealtimeClient, channel: _Channel, subscriber: _Subscriber) -> None:
        self._client = client
        self._channel = channel
        self._subscriber = subscriber
        self._receiving = False
        #: The block exited: sending through this subscription is an error.
        self._exited = False

    def __repr__(self) -> str:
        return f"<Subscription {self._channel.topic!r} {self._channel.core.state.value}>"

    @property
    def topic(self) -> str:
        """The channel topic, e.g. ``"realtime:room1"``."""
        return self._channel.topic

    @property
    def config(self) -> ChannelConfig:
        """The configuration every (re)join of this channel uses."""
        return self._channel.config

    @property
    def status(self) -> ChannelState:
        """The channel's state: JOINED while all is well, ERRORED while it is being rejoined."""
        return self._channel.core.state

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self) -> RealtimeEvent:
        """The next event. A checkpoint.

        Raises:
            SubscriptionClosed: the server closed the channel (or the queue overflowed with
                ``overflow="close"``), after every event queued before that was received.
            trio.ClosedResourceError: the subscription's block has exited (or aclose was called).
            trio.BusyResourceError: another task is already receiving from this subscription.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this subscription")
        self._receiving = True
        try:
            event = await self._subscriber.receive.receive()
            self._subscriber.took(1)
            return event
        except trio.EndOfChannel:
            reason = self._subscriber.closed_reason
            if reason is not None:
                raise SubscriptionClosed(self.topic, reason) from None
            raise
        finally:
            self._receiving = False

    def receive_nowait(self) -> RealtimeEvent:
        """The next event if one is queued, else raise :class:`trio.WouldBlock`."""
        try:
            event = self._subscriber.receive.receive_nowait()
        except trio.EndOfChannel:
            reason = self._subscriber.closed_reason
            if reason is not None:
                raise SubscriptionClosed(self.topic, reason) from None
            raise
        self._subscriber.took(1)
        return event

    async def receive_batch(self, max_events: int = 1000) -> list[RealtimeEvent]:
        """Wait for at least one event, then return every queued event (up to ``max_events``).

        One checkpoint for the whole batch, instead of one per event. Raises as :meth:`receive`
        (only when no event is queued: events queued before the end are returned first).
        """
        first = await self.receive()
        batch = [first]
        receive_nowait = self._subscriber.receive.receive_nowait
        while len(batch) < max_events:
            try:
                batch.append(receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if len(batch) > 1:
            self._subscriber.took(len(batch) - 1)
        return batch

    async def aclose(self) -> None:
        """Stop receiving (the channel stays joined until the block exits). A checkpoint."""
        await self._subscriber.receive.aclose()

    # -- sending -----------------------------------------------------------------------------

    async def send_broadcast(self, event: str, payload: Any = None) -> None:
        """Broadcast ``payload`` (JSON-serialisable, or ``bytes`` on vsn 2.0.0) as ``event``.

        With ``BroadcastConfig(ack=True)`` this returns once the server acknowledged it;
        otherwise once it was handed to the socket. If the channel is not joined right now
        (connecting, rejoining) the push is buffered and sent, in order, after the join; when
        ``max_pending_pushes`` are already buffered this waits for room. A checkpoint.

        Raises:
            LocalProtocolError: ``bytes`` payload on vsn 1.0.0, or a payload that is not JSON.
            PushRejected / PushTimedOut: with ack, the server refused it or did not answer.
            ConnectionLost: the connection died while the push was on its way; it may or may
                not have been delivered.
            SubscriptionClosed / trio.ClosedResourceError: the channel is gone.
        """
        self._check_open()
        body = {"type": "broadcast", "event": event, "payload": {} if payload is None else payload}
        await self._client._push(
            self._channel, "broadcast", body, want_reply=self._channel.config.broadcast.ack
        )

    async def track(self, meta: dict[str, Any]) -> None:
        """Track this client's presence with ``meta`` (replaces the previous meta). A checkpoint.

        Tracking is remembered: after a rejoin the client tracks ``meta`` again by itself.

        Raises:
            PushRejected: the server refused (e.g. meta is not an object, or rate limited).
            PushTimedOut, ConnectionLost, SubscriptionClosed: as for :meth:`send_broadcast`.
        """
        self._check_open()
        if not isinstance(meta, dict):
            raise LocalProtocolError(f"presence meta must be a dict, got {type(meta).__name__}")
        await self._client._track(self._channel, meta)

    async def untrack(self) -> None:
        """Stop tracking this client's presence. A checkpoint."""
        self._check_open()
        await self._client._track(self._channel, None)

    def _check_open(self) -> None:
        if self._exited:
            raise trio.ClosedResourceError(
                f"subscription to {self.topic!r} was used after its `async with` block exited"
            )

    def presence(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """The current presence state: key -> presences (each with ``presence_ref``)."""
        return self._channel.core.presence.snapshot()

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of this subscription's queue and its channel."""
        ch = self._channel
        sub = self._subscriber
        return SubscriptionStatistics(
            topic=ch.topic,
            status=ch.core.state.value,
            queued=sub.receive.statistics().current_buffer_used,
            capacity=sub.capacity,
            delivered=sub.delivered,
            dropped=sub.dropped,
            pending_pushes=len(ch.outbox),
            subscribers=len(ch.subscribers),
        )
