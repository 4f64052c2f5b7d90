"""Subscriptions: what ``async with client.channel(...) as sub`` gives you."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._errors import LocalProtocolError, SubscriptionClosed
from ._util import NoPublicConstructor
from .protocol import ChannelConfig, ChannelCore, ChannelState, Dropped, RealtimeEvent

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
    """

    topic: str
    status: str
    queued: int
    capacity: int
    delivered: int
    dropped: int
    pending_pushes: int


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


@attrs.define(eq=False)
class _Channel:
    """The client's side of one channel: protocol core, queue, outbox. Owned by the client."""

    topic: str
    config: ChannelConfig
    core: ChannelCore
    send: trio.MemorySendChannel[RealtimeEvent]
    receive: trio.MemoryReceiveChannel[RealtimeEvent]
    capacity: int
    overflow: OverflowPolicy
    max_pending: int
    delivered: int = 0
    dropped: int = 0
    pending_dropped: int = 0
    #: The user's block is exiting: no more deliveries, no rejoins.
    closing: bool = False
    #: Why the subscription ended from the other side (server close, overflow, rejoin give-up).
    closed_reason: str | None = None
    outbox: collections.deque[_Outgoing] = attrs.field(factory=collections.deque)
    outbox_space: trio.Event = attrs.field(factory=trio.Event)
    #: True while buffered pushes are being sent after a join; direct sends wait their turn.
    flushing: bool = False
    #: The channel is joined and its outbox was flushed: pushes may go straight to the wire.
    ready: bool = False
    #: ChannelErrored was delivered: the next successful join delivers Rejoined.
    errored: bool = False
    #: The presence meta last tracked (None: not tracking); re-tracked after every rejoin.
    tracked_meta: dict[str, Any] | None = None

    def deliver(self, event: RealtimeEvent) -> None:
        """Queue ``event`` without blocking, applying the overflow policy. Reader task only."""
        if self.closing or self.closed_reason is not None:
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

    def end(self, reason: str) -> None:
        """End the subscription from the other side: queued events stay readable, then
        ``receive`` raises SubscriptionClosed(reason)."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.ready = False
        self.send.close()
        self.fail_outbox(SubscriptionClosed(self.topic, reason))

    def fail_outbox(self, error: BaseException) -> None:
        while self.outbox:
            item = self.outbox.popleft()
            item.error = error
            item.done.set()
        self.wake_outbox()

    def wake_outbox(self) -> None:
        self.outbox_space.set()
        self.outbox_space = trio.Event()


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

    def __init__(self, client: RealtimeClient, channel: _Channel) -> None:
        self._client = client
        self._channel = channel
        self._receiving = False

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
            return await self._channel.receive.receive()
        except trio.EndOfChannel:
            reason = self._channel.closed_reason
            if reason is not None:
                raise SubscriptionClosed(self.topic, reason) from None
            raise
        finally:
            self._receiving = False

    def receive_nowait(self) -> RealtimeEvent:
        """The next event if one is queued, else raise :class:`trio.WouldBlock`."""
        try:
            return self._channel.receive.receive_nowait()
        except trio.EndOfChannel:
            reason = self._channel.closed_reason
            if reason is not None:
                raise SubscriptionClosed(self.topic, reason) from None
            raise

    async def aclose(self) -> None:
        """Stop receiving (the channel stays joined until the block exits). A checkpoint."""
        await self._channel.receive.aclose()

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
        if not isinstance(meta, dict):
            raise LocalProtocolError(f"presence meta must be a dict, got {type(meta).__name__}")
        await self._client._track(self._channel, meta)

    async def untrack(self) -> None:
        """Stop tracking this client's presence. A checkpoint."""
        await self._client._track(self._channel, None)

    def presence(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """The current presence state: key -> presences (each with ``presence_ref``)."""
        return self._channel.core.presence.snapshot()

    def statistics(self) -> SubscriptionStatistics:
        ch = self._channel
        return SubscriptionStatistics(
            topic=ch.topic,
            status=ch.core.state.value,
            queued=ch.receive.statistics().current_buffer_used,
            capacity=ch.capacity,
            delivered=ch.delivered,
            dropped=ch.dropped,
            pending_pushes=len(ch.outbox),
        )
