"""The Trio client: ``open_realtime`` and :class:`RealtimeClient`.

Theory of operation
-------------------
``open_realtime`` owns one nursery. In it runs one task, the *supervisor* (``_run``), which
owns the connection: for each connection it opens a transport and an inner nursery holding the
connection's sibling tasks — the *reader* (the only task that reads the socket), the
*heartbeat*, the *visibility watcher*, the *idle watcher* (lazy mode) and one short-lived
*rejoin* task per channel that must be joined again. When any of them finds the connection
over it records why (lost, idle, hidden) and cancels the inner nursery; siblings never raise
for an expected failure, so the only exceptions that can escape are bugs. The supervisor then
marks every live channel ERRORED (subscribers see ``ChannelErrored``), fails waiting pushes
with ``ConnectionLost``, and reconnects: after the backoff delay for a loss, or as soon as the
client is wanted again (a channel entered, the app visible) for an idle or hidden close.

The reader decodes each batch of frames from one socket read with the sans-IO
``ClientConnection`` and routes events straight into the subscribers' bounded memory channels
with ``send_nowait`` — no task hop, and a full queue never blocks a delivery (the overflow
policy decides). Before its next socket read, the reader lets consumers whose queues filled up
drain them (``_let_consumers_drain``): at most ``_DRAIN_WAIT`` per read, and never for a
consumer that took nothing during a whole wait. Without that, a consumer taking one event per
scheduling round loses to a reader queuing a whole read per round. Replies resolve waiters
keyed by ref.

Writes from any task go through ``_send_frame`` under one ``StrictFIFOLock``, so frames leave
in the order their refs were made.

Who joins a channel: the *first* join is done by the task that entered
``client.channel(...)`` (so it can raise ``JoinRejected``/``JoinTimedOut`` to its caller); it
retries by itself if the connection drops mid-join. Every later join (after a lost connection,
a ``phx_error``, a pause, or an expired token) is done by a rejoin task of the connection, with
a fresh token. Subscriptions to one topic share one ``_Channel`` (one server join); the last
one out leaves.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, final
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import trio

from ._config import OverflowPolicy, RealtimeConfig
from ._connection_state import ConnectionState
from ._errors import (
    ConnectionLost,
    HandshakeFailed,
    JoinRejected,
    JoinTimedOut,
    LocalProtocolError,
    PushRejected,
    PushTimedOut,
    RemoteProtocolError,
    SubscriptionClosed,
    TransportError,
)
from ._groups import collapse
from ._seed002 import open_seed002_transport
from ._subscription import Subscription, _Channel, _Outgoing, _Subscriber
from ._transport import Transport, connect_websocket
from ._util import NoPublicConstructor
from .protocol import (
    SEED002_VSN,
    Authenticated,
    Broadcast,
    BroadcastConfig,
    ChannelClosed,
    ChannelConfig,
    ChannelErrored,
    ChannelState,
    ClientConnection,
    HeartbeatAcked,
    Message,
    PostgresChanges,
    PresenceConfig,
    PresenceSync,
    Rejoined,
    Reply,
    SystemMessage,
    seed002_url,
    topic_for,
)

__all__ = ["ClientStatistics", "RealtimeClient", "TokenSource", "open_realtime"]

log = logging.getLogger("trio_realtime.client")
#: The longest the reader waits, per socket read, for consumers to empty their queues.
_DRAIN_WAIT = 0.05

#: A token, or an async callable returning the current one (called before every (re)join).
TokenSource = str | Callable[[], Awaitable[str | None]] | None
#: Opens a transport to a full WebSocket URL (the seam tests and benchmarks replace).
TransportFactory = Callable[[str], Awaitable[Transport]]


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of a client, from :meth:`RealtimeClient.statistics`.

    Attributes:
        state: the connection state.
        connection_attempts: transports we tried to open.
        connections: transports that opened.
        reconnects: connections after the first.
        connection_losses: connections that died (heartbeat, socket, server close).
        uptime: seconds the current connection has been open (0 when disconnected).
        channels: channels (server-side joins) on this client.
        subscriptions: subscriptions; several may share one channel.
        joined_channels: channels currently joined.
        queued_events: events waiting in all subscription queues.
        dropped_events: events dropped on overflow, all subscriptions.
        pending_pushes: pushes buffered until their channel is joined.
        frames_received, frames_sent: WebSocket messages in and out.
        protocol_errors: malformed or unexpected frames dropped.
        heartbeats_sent: heartbeats sent.
        last_heartbeat_rtt: seconds the last heartbeat took (None before the first reply).
    """

    state: ConnectionState
    connection_attempts: int
    connections: int
    reconnects: int
    connection_losses: int
    uptime: float
    channels: int
    subscriptions: int
    joined_channels: int
    queued_events: int
    dropped_events: int
    pending_pushes: int
    frames_received: int
    frames_sent: int
    protocol_errors: int
    heartbeats_sent: int
    last_heartbeat_rtt: float | None


@attrs.define(eq=False)
class _Waiter:
    """Someone waiting for the reply to one ref."""

    event: trio.Event = attrs.field(factory=trio.Event)
    reply: Reply | None = None
    error: BaseException | None = None

    def resolve(self, reply: Reply) -> None:
        self.reply = reply
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()

    async def wait(self) -> Reply:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def _websocket_url(url: str, api_key: str | None, config: RealtimeConfig) -> str:
    """``ws://host/realtime/v1`` -> ``ws://host/realtime/v1/websocket?apikey=...&vsn=...``."""
    if config.vsn == SEED002_VSN:
        return seed002_url(url, config.params)  # as given: the token travels as a subprotocol
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise LocalProtocolError(
            f"realtime URL must start with ws://, wss://, http:// or https://, got {_redact(url)!r}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    query: dict[str, str] = dict(config.params)
    if api_key is not None:
        query["apikey"] = api_key
    query["vsn"] = config.vsn
    extra = parts.query + "&" if parts.query else ""
    return urlunsplit((scheme, parts.netloc, path, extra + urlencode(query), ""))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "…" if parts.query else "", ""))


@final
class RealtimeClient(metaclass=NoPublicConstructor):
    """A connection to a Realtime server, shared by any number of channels.

    Built by :func:`open_realtime`; there is no public constructor.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        access_token: TokenSource,
        config: RealtimeConfig,
        transport_factory: TransportFactory | None,
    ) -> None:
        self._config = config
        self._ws_url = _websocket_url(url, api_key, config)
        self._display_url = _redact(self._ws_url)
        self._token_source: TokenSource = access_token
        if transport_factory is None:

            async def default_factory(full_url: str) -> Transport:
                if config.vsn == SEED002_VSN:
                    token = await self._fetch_token() or api_key
                    if token is None:
                        raise LocalProtocolError(
                            "seed-002 sends a token when it connects: the access_token callable "
                            "returned None and there is no api_key"
                        )
                    return await open_seed002_transport(
                        full_url,
                        token,
                        receive_size=config.receive_size,
                        max_message_size=config.max_message_size,
                    )
                return await connect_websocket(
                    full_url,
                    receive_size=config.receive_size,
                    max_message_size=config.max_message_size,
                )

            transport_factory = default_factory
        self._transport_factory: TransportFactory = transport_factory
        self._conn = ClientConnection(
            config.vsn,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
        )
        self._channels: dict[str, _Channel] = {}
        #: Subscribers whose queue became non-empty since the reader last let them drain.
        self._backlog: list[_Subscriber] = []
        self._waiters: dict[str, _Waiter] = {}
        self._transport: Transport | None = None
        self._send_lock = trio.StrictFIFOLock()
        self._connected = trio.Event()
        self._connection_scope: trio.CancelScope | None = None
        self._lost_reason: str | None = None
        self._lost_kind: Literal["lost", "idle", "hidden"] = "lost"
        self._link_dead = False
        self._closed = False
        self._visible = True
        self._visibility_changed = trio.Event()
        self._channels_changed = trio.Event()
        self._state = ConnectionState.CONNECTING
        self._state_watchers: list[trio.MemorySendChannel[ConnectionState]] = []
        self._connected_at: float | None = None
        self._connection_id: str | None = None
        if config.vsn == SEED002_VSN and api_key is None and access_token is None:
            raise LocalProtocolError(
                "RealtimeConfig(vsn='seed002') needs a token: pass access_token= or api_key="
            )
        self._counters = dict.fromkeys(
            (
                "connection_attempts",
                "connections",
                "connection_losses",
                "frames_received",
                "frames_sent",
                "protocol_errors",
                "heartbeats_sent",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"<RealtimeClient {self._display_url} {self._state.value}, {len(self._channels)} channels>"

    # -- public API ----------------------------------------------------------------------

    @property
    def config(self) -> RealtimeConfig:
        return self._config

    @property
    def state(self) -> ConnectionState:
        """The connection state right now."""
        return self._state

    @property
    def connection_id(self) -> str | None:
        """The server's id for the current connection (seed-002's ``auth_success``), else None."""
        return self._connection_id

    async def wait_connected(self) -> None:
        """Wait until a connection is open (returns at once if it is). A checkpoint.

        Raises:
            trio.ClosedResourceError: the client is closed.
        """
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the realtime client is closed")
            if self._transport is not None:
                await trio.lowlevel.checkpoint()
                return
            await self._connected.wait()

    @asynccontextmanager
    async def watch_state(
        self, buffer: int = 64
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ConnectionState]]:
        """Watch connection state changes (see :class:`ConnectionState`).

        The channel yields the current state first, then every change. If you fall more than
        ``buffer`` changes behind, the newest changes are dropped (the ``state`` property stays
        exact).
        """
        send, receive = trio.open_memory_channel[ConnectionState](buffer)
        send.send_nowait(self._state)
        self._state_watchers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._state_watchers.remove(send)
            send.close()

    @asynccontextmanager
    async def channel(
        self,
        name: str,
        *,
        broadcast: BroadcastConfig | None = None,
        presence: PresenceConfig | bool | None = None,
        private: bool = False,
        postgres_changes: Sequence[PostgresChanges] = (),
        buffer: int | None = None,
        overflow: OverflowPolicy | None = None,
    ) -> AsyncIterator[Subscription]:
        """Join channel ``name`` for the duration of the block.

        ``name`` is the sub-topic ("room1"); the wire topic is ``realtime:room1``. The block
        is entered once the server accepted the join; leaving it leaves the channel (shielded,
        bounded by ``leave_timeout``), so no server-side join outlives it. If the connection is
        down when you enter, the join waits for it.

        Args:
            broadcast: ack and self-delivery options (default: neither).
            presence: a :class:`PresenceConfig`, or True to receive presence with a
                server-chosen key.
            private: join as a private channel (the server authorizes with your token).
            postgres_changes: row changes to receive, as :class:`PostgresChanges` bindings.
                With bindings, the block is entered only once the server confirmed the
                database subscription ("Subscribed to PostgreSQL"), so a row committed right
                after entering is delivered; a subscription error raises JoinRejected.
            buffer: this subscription's queue size (default ``config.subscription_buffer``).
            overflow: this subscription's overflow policy (default ``config.overflow``).

        Raises:
            JoinRejected: the server refused the join (its reason is in the message).
            JoinTimedOut: no reply within ``join_timeout``.
            LocalProtocolError: another subscription to that topic on this client asked for
                another configuration (subscriptions to one topic share one join).
            trio.ClosedResourceError: the client is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the realtime client is closed")
        topic = topic_for(name)
        if presence is True:
            presence_config = PresenceConfig(enabled=True)
        elif presence is None or presence is False:
            presence_config = PresenceConfig(enabled=False)
        else:
            presence_config = presence
        config = ChannelConfig(
            broadcast=broadcast or BroadcastConfig(),
            presence=presence_config,
            private=private,
            postgres_changes=tuple(postgres_changes),
        )
        ch = await self._channel_for(topic, config)
        subscriber = ch.add_subscriber(
            self._config.subscription_buffer if buffer is None else buffer,
            self._config.overflow if overflow is None else overflow,
        )
        subscriber.backlog = self._backlog
        self._notify_channels()
        subscription: Subscription | None = None
        try:
            async with ch.join_lock:
                if ch.closed_reason is not None:
                    raise SubscriptionClosed(topic, ch.closed_reason)
                if not ch.core.joined_once:
                    await self._first_join(ch)
                elif ch.config.presence.enabled and ch.core.presence.join_ref is not None:
                    # A later subscriber of a joined channel starts from the current state.
                    subscriber.deliver(PresenceSync(topic=topic, state=ch.core.presence.snapshot()))
            subscription = Subscription._create(self, ch, subscriber)
            yield subscription
        finally:
            if subscription is not None:
                subscription._exited = True
            ch.remove_subscriber(subscriber)
            if not ch.subscribers:
                ch.closing = True
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self._config.leave_timeout
                    await self._leave(ch)
                self._forget_channel(ch)
            self._notify_channels()

    async def _channel_for(self, topic: str, config: ChannelConfig) -> _Channel:
        """The channel to join ``topic`` with ``config``: the existing one, or a new one."""
        while True:
            ch = self._channels.get(topic)
            if ch is None:
                core = self._conn.add_channel(topic, config.postgres_changes)
                ch = self._channels[topic] = _Channel(
                    topic=topic, config=config, core=core, max_pending=self._config.max_pending_pushes
                )
                return ch
            if ch.closing:
                while not ch.forgotten:  # its last subscriber is leaving; then start afresh
                    await ch.wait_change()
                continue
            if ch.config != config:
                raise LocalProtocolError(
                    f"{topic!r} is already subscribed on this client with another configuration "
                    f"({ch.config!r}); subscriptions to one topic share one server join, so they "
                    f"must ask for the same one (this one asked for {config!r})"
                )
            return ch

    def set_visible(self, visible: bool) -> None:
        """Tell the client whether the app is visible (a browser tab's visibility, say).

        Hidden: the connection is closed (the server would drop an idle socket after 60 s
        anyway) while every subscription stays open; subscribers see ``ChannelErrored``
        ("paused"), and pushes are buffered. Visible again: the client reconnects, rejoins,
        re-tracks presence and flushes the buffered pushes in order; subscribers see
        ``Rejoined(recovered=False)``. Not a checkpoint.
        """
        if visible is self._visible:
            return
        self._visible = visible
        self._visibility_changed.set()
        self._visibility_changed = trio.Event()

    async def follow_visibility(self, source: AsyncIterable[bool]) -> None:
        """Apply every value of ``source`` with :meth:`set_visible`, until it ends.

        Run it in your nursery, e.g. ``nursery.start_soon(client.follow_visibility, changes)``
        where ``changes`` is a memory channel your UI layer feeds.
        """
        async for visible in source:
            self.set_visible(visible)

    def _notify_channels(self) -> None:
        self._channels_changed.set()
        self._channels_changed = trio.Event()

    async def set_auth(self, token: str | None) -> None:
        """Use ``token`` from now on and push it to every joined channel. A checkpoint.

        Replaces a token callable given to ``open_realtime``. The server does not reply to
        token updates; if it finds the token invalid it closes the affected channels
        (subscribers get ``SubscriptionClosed`` with the server's message).
        """
        self._token_source = token
        if token is None:
            await trio.lowlevel.checkpoint()
            return
        if self._config.vsn == SEED002_VSN:
            # seed-002's auth is per connection: one frame, however many channels.
            if self._transport is not None:
                try:
                    await self._send_frame(
                        self._conn.serializer.encode(
                            Message(topic="phoenix", event="access_token", payload={"access_token": token})
                        )
                    )
                except ConnectionLost:
                    pass  # the next connection offers the new token
            await trio.lowlevel.checkpoint()
            return
        for ch in list(self._channels.values()):
            if ch.core.state is ChannelState.JOINED and self._transport is not None:
                try:
                    _, frame = self._conn.push(
                        ch.topic, "access_token", {"access_token": token}, expect_reply=False
                    )
                    await self._send_frame(frame)
                except (ConnectionLost, LocalProtocolError):
                    continue  # it rejoins with the new token
        await trio.lowlevel.checkpoint()

    def statistics(self) -> ClientStatistics:
        """A snapshot of counters, queue depths and the last heartbeat round trip."""
        c = self._counters
        chans = list(self._channels.values())
        now = trio.current_time()
        return ClientStatistics(
            state=self._state,
            connection_attempts=c["connection_attempts"],
            connections=c["connections"],
            reconnects=max(0, c["connections"] - 1),
            connection_losses=c["connection_losses"],
            uptime=0.0 if self._connected_at is None else now - self._connected_at,
            channels=len(chans),
            subscriptions=sum(len(ch.subscribers) for ch in chans),
            joined_channels=sum(ch.core.state is ChannelState.JOINED for ch in chans),
            queued_events=sum(
                sub.receive.statistics().current_buffer_used for ch in chans for sub in ch.subscribers
            ),
            dropped_events=sum(sub.dropped for ch in chans for sub in ch.subscribers),
            pending_pushes=sum(len(ch.outbox) for ch in chans),
            frames_received=c["frames_received"],
            frames_sent=c["frames_sent"],
            protocol_errors=c["protocol_errors"],
            heartbeats_sent=c["heartbeats_sent"],
            last_heartbeat_rtt=self._conn.heartbeat.last_rtt,
        )

    # -- state --------------------------------------------------------------------------------

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        log.info("connection %s: %s", self._display_url, state.value)
        for watcher in self._state_watchers:
            try:
                watcher.send_nowait(state)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _fetch_token(self) -> str | None:
        source = self._token_source
        if source is None or isinstance(source, str):
            return source
        return await source()

    # -- the supervisor ------------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, run the connection, reconnect with backoff; forever, until cancelled.

        Eager mode connects at once and reports the first failure to ``open_realtime``.
        Lazy mode starts IDLE and connects when the first channel is entered; it closes the
        socket ``idle_disconnect_delay`` after the last channel left. While the app is hidden
        (``set_visible(False)``) no connection is kept. Neither an idle nor a hidden close
        counts as a loss: the client reconnects without backoff once it is wanted again.
        """
        lazy = self._config.connect == "lazy"
        started = False
        attempt = 0
        try:
            if lazy:
                started = True
                self._set_state(ConnectionState.IDLE)
                task_status.started()
            while True:
                if lazy and not self._channels:
                    self._set_state(ConnectionState.IDLE)
                    while not self._channels:
                        await self._channels_changed.wait()
                if not self._visible:
                    self._set_state(ConnectionState.PAUSED)
                    while not self._visible:
                        await self._visibility_changed.wait()
                if self._state not in (ConnectionState.CONNECTING, ConnectionState.RECONNECTING):
                    self._set_state(
                        ConnectionState.CONNECTING if attempt == 0 else ConnectionState.RECONNECTING
                    )
                self._counters["connection_attempts"] += 1
                try:
                    transport = await self._open_transport()
                except TransportError as exc:
                    if not started:
                        raise
                    attempt += 1
                    if self._config.reconnect_backoff.exhausted(attempt):
                        log.error("giving up after %d failed connection attempts: %s", attempt, exc)
                        self._give_up(f"reconnect gave up after {attempt} attempts: {exc}")
                        return
                    # The wait after the loss itself was delay(0); failure n waits delay(n).
                    delay = self._config.reconnect_backoff.delay(attempt, self._config.rng)
                    self._set_state(ConnectionState.RECONNECTING)
                    log.warning("connection attempt failed (%s); retrying in %.2f s", exc, delay)
                    await trio.sleep(delay)
                    continue
                attempt = 0
                if not started:
                    started = True
                    task_status.started()
                reason = await self._run_connection(transport)
                if self._lost_kind != "lost":
                    log.info("connection closed: %s", reason)
                    continue  # idle or hidden: reconnect when wanted, without backoff
                self._counters["connection_losses"] += 1
                log.warning("connection lost: %s", reason)
                self._set_state(ConnectionState.RECONNECTING)
                delay = self._config.reconnect_backoff.delay(0, self._config.rng)
                await trio.sleep(delay)
        finally:
            self._closed = True
            # Subscriptions still open in other tasks end now, rather than wait forever.
            for ch in list(self._channels.values()):
                ch.end("the realtime client was closed")
            self._set_state(ConnectionState.CLOSED)
            self._connected.set()  # wake waiters so they see _closed

    async def _open_transport(self) -> Transport:
        """Open a transport, bounded by ``connect_timeout``.

        A TCP connection whose upgrade never completes (a black-holed path, a frozen server)
        would otherwise hang the supervisor forever; it becomes a failed attempt instead.
        """
        timeout = self._config.connect_timeout
        with trio.move_on_after(timeout):
            return await self._transport_factory(self._ws_url)
        raise HandshakeFailed(
            f"no WebSocket upgrade response from {self._display_url} within {timeout:g} s "
            "(RealtimeConfig.connect_timeout)"
        )

    def _give_up(self, reason: str) -> None:
        for ch in list(self._channels.values()):
            ch.end(reason)
        self._closed = True

    async def _run_connection(self, transport: Transport) -> str:
        """Run one connection until it dies (or is closed as idle or hidden); return why."""
        self._lost_reason = None
        self._lost_kind = "lost"
        self._link_dead = False
        self._transport = transport
        self._counters["connections"] += 1
        now = trio.current_time()
        self._connected_at = now
        self._conn.connection_made(now)
        self._set_state(ConnectionState.CONNECTED)
        self._connected.set()
        try:
            async with trio.open_nursery() as nursery:
                self._connection_scope = nursery.cancel_scope
                nursery.start_soon(self._reader, transport, nursery)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._watch_visibility)
                if self._config.connect == "lazy":
                    nursery.start_soon(self._watch_idle)
                for ch in list(self._channels.values()):
                    if ch.core.joined_once and ch.core.state is ChannelState.ERRORED and not ch.closing:
                        nursery.start_soon(self._rejoin, ch)
        finally:
            reason = self._lost_reason or "connection closed"
            self._connection_scope = None
            self._transport = None
            self._connected_at = None
            self._connection_id = None
            self._connected = trio.Event()
            lost = ConnectionLost(reason)
            for waiter in self._waiters.values():
                waiter.fail(lost)
            self._waiters.clear()
            for event in self._conn.connection_lost(reason):
                errored = self._channels.get(event.topic)
                if errored is not None:
                    self._channel_errored(errored, event)
            with trio.CancelScope(shield=True) as scope:
                # A dead link cannot answer a closing handshake: drop it at once rather than
                # wait for a close reply that will never come.
                grace = 0.0 if self._link_dead else self._config.close_timeout
                scope.deadline = trio.current_time() + grace
                await transport.aclose(1000, "")
        return reason

    def _lose(self, reason: str, kind: Literal["lost", "idle", "hidden"] = "lost") -> None:
        """Declare the current connection over (any sibling task may call this).

        ``kind`` says why: ``"lost"`` (reconnect with backoff), ``"idle"`` (lazy mode, no
        channels) or ``"hidden"`` (paused until visible).
        """
        if self._lost_reason is None:
            self._lost_reason = reason
            self._lost_kind = kind
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    async def _send_frame(self, frame: str | bytes) -> None:
        transport = self._transport
        if transport is None:
            raise ConnectionLost("not connected")
        async with self._send_lock:
            try:
                await transport.send_message(frame)
            except ConnectionLost as exc:
                self._lose(exc.reason)
                raise
        self._counters["frames_sent"] += 1

    # -- sibling tasks ---------------------------------------------------------------------------

    async def _reader(self, transport: Transport, nursery: trio.Nursery) -> None:
        conn = self._conn
        channels = self._channels
        waiters = self._waiters
        counters = self._counters
        backlog = self._backlog
        while True:
            if backlog:
                await self._let_consumers_drain()
            try:
                batch = await transport.receive_messages()
            except ConnectionLost as exc:
                self._lose(exc.reason)
                return
            now = trio.current_time()
            counters["frames_received"] += len(batch)
            for data in batch:
                try:
                    events = conn.receive(data, now)
                except RemoteProtocolError as exc:
                    counters["protocol_errors"] += 1
                    log.warning("dropped a frame from the server: %s", exc)
                    continue
                for event in events:
                    if isinstance(event, Reply):
                        waiter = waiters.pop(event.ref, None)
                        if waiter is not None:
                            waiter.resolve(event)
                        if event.event == "phx_join":
                            rejoined = channels.get(event.topic)
                            if (
                                rejoined is not None
                                and rejoined.errored
                                and rejoined.core.state is ChannelState.JOINED
                            ):
                                # Here, not in the rejoin task: events of the new join may
                                # follow in this same batch and must come after Rejoined.
                                rejoined.errored = False
                                rejoined.deliver(
                                    Rejoined(topic=rejoined.topic, recovered=_recovered(rejoined, event))
                                )
                    elif isinstance(event, HeartbeatAcked):
                        continue
                    elif isinstance(event, Authenticated):
                        self._connection_id = event.connection_id
                    elif isinstance(event, ChannelClosed):
                        ch = channels.get(event.topic)
                        if ch is None or ch.closing:
                            continue
                        if self._can_refresh(ch, event.reason):
                            # An expired or refused token: fetch a fresh one and rejoin.
                            log.warning(
                                "server closed %s (%s); rejoining with a fresh token", ch.topic, event.reason
                            )
                            self._conn.reopen_channel(ch.topic)
                            self._channel_errored(ch, ChannelErrored(topic=ch.topic, reason=event.reason))
                            nursery.start_soon(self._rejoin, ch)
                            continue
                        log.warning("server closed %s: %s", event.topic, event.reason)
                        ch.end(event.reason)
                        self._detach(ch)
                    else:
                        target = channels.get(event.topic)
                        if target is None:
                            continue
                        if isinstance(event, ChannelErrored):
                            self._channel_errored(target, event)
                            if target.core.joined_once and not target.closing:
                                nursery.start_soon(self._rejoin, target)
                        else:
                            if isinstance(event, SystemMessage) and event.extension == "postgres_changes":
                                target.postgres_result(event)
                            elif isinstance(event, Broadcast) and target.config.broadcast.replay is not None:
                                message_id = event.id
                                if message_id is not None and not target.first_delivery_of(
                                    message_id, self._config.replay_memory
                                ):
                                    continue
                                target.last_delivery = self._config.wall_clock()
                                stamp = event.meta.get("inserted_at") if event.meta else None
                                if isinstance(stamp, int) and not isinstance(stamp, bool):
                                    target.last_inserted_at = stamp
                            target.deliver(event)

    async def _let_consumers_drain(self) -> None:
        """Before reading the socket again, let the consumers empty what this read queued.

        Without this, a reader that finds data waiting on every read queues hundreds of events
        per scheduling round while an ``async for`` consumer takes one (each ``receive`` is a
        checkpoint), so under load the queue overflows and events are dropped. Waiting here
        instead leaves the data in the kernel: TCP pushes back on the server, as it does for
        the official clients whose callbacks run inline. The wait is bounded by
        ``_DRAIN_WAIT`` per read, and a consumer that takes nothing during a whole wait is
        not waited for again until it takes something, so one stuck consumer cannot slow
        the others (its queue's overflow policy applies as before), and heartbeat replies are
        read late by at most that much per read.
        """
        backlog = self._backlog
        pending = backlog[:]
        backlog.clear()
        deadline = trio.current_time() + _DRAIN_WAIT
        for subscriber in pending:
            subscriber.in_backlog = False
            if subscriber.backlog is None or subscriber.queued <= 0 or subscriber.closed_reason is not None:
                continue
            if subscriber.stalled:
                subscriber.in_backlog = True
                backlog.append(subscriber)  # look again after the next read
                continue
            taken = subscriber.taken
            subscriber.drained = trio.Event()
            with trio.move_on_at(deadline):
                await subscriber.drained.wait()
            subscriber.drained = None
            if subscriber.queued > 0 and not subscriber.in_backlog:
                if subscriber.taken == taken:
                    subscriber.stalled = True
                subscriber.in_backlog = True
                backlog.append(subscriber)

    def _can_refresh(self, ch: _Channel, reason: str) -> bool:
        """Whether a server close of ``ch`` is repaired by rejoining with a fresh token."""
        return (
            ch.core.joined_once
            and callable(self._token_source)
            and any(marker in reason for marker in _TOKEN_CLOSE_MARKERS)
        )

    def _channel_errored(self, ch: _Channel, event: ChannelErrored) -> None:
        """``ch`` lost its server-side join: tell the subscriber, who will see Rejoined next.

        A channel that was never joined is not told: its first join retries by itself, and
        its subscriber has not even been handed the subscription yet. Nor is anyone told
        while the client closes: the subscription just ends.
        """
        ch.ready = False
        if ch.core.joined_once and not self._closed:
            ch.errored = True
            ch.deliver(event)

    async def _watch_visibility(self) -> None:
        """Close the connection when the app becomes hidden (see ``set_visible``)."""
        while self._visible:
            await self._visibility_changed.wait()
        self._lose("paused: the app is hidden (set_visible(False))", kind="hidden")

    async def _watch_idle(self) -> None:
        """Lazy mode: close the connection once no channel was left for the idle delay."""
        delay = self._config.idle_disconnect_delay
        while True:
            while self._channels:
                await self._channels_changed.wait()
            with trio.move_on_after(delay):
                while not self._channels:
                    await self._channels_changed.wait()
                continue  # a channel was entered in time: keep the connection
            self._lose(f"idle: no channels for {delay:g} s", kind="idle")
            return

    async def _heartbeat(self) -> None:
        conn = self._conn
        while True:
            await trio.sleep_until(conn.heartbeat.deadline())
            now = trio.current_time()
            due = conn.heartbeat_due(now)
            if due == "dead":
                self._link_dead = True
                self._lose(
                    f"heartbeat timeout: no reply within {conn.heartbeat.timeout:g} s "
                    "(the link may be half-open)"
                )
                return
            if due == "send":
                frame = conn.send_heartbeat(now)
                self._counters["heartbeats_sent"] += 1
                try:
                    await self._send_frame(frame)
                except ConnectionLost:
                    return

    # -- joining and leaving -----------------------------------------------------------------------

    async def _join_once(self, ch: _Channel) -> Reply:
        """Send one phx_join and wait for its reply.

        Raises:
            ConnectionLost: the connection died first (no connection is needed to retry).
            JoinTimedOut: no reply within join_timeout.
        """
        token = await self._fetch_token()
        if self._transport is None:
            raise ConnectionLost("not connected")
        ch.postgres_status = None  # this join's database subscription result is still to come
        ref, frame = self._conn.join(
            ch.topic, ch.config.join_payload(token, replay_since=self._replay_since(ch))
        )
        waiter = self._waiters[ref] = _Waiter()
        try:
            await self._send_frame(frame)
            with trio.move_on_after(self._config.join_timeout):
                return await waiter.wait()
            raise JoinTimedOut(ch.topic, self._config.join_timeout)
        finally:
            self._waiters.pop(ref, None)
            self._conn.forget(ref)
            if ch.core.state is ChannelState.JOINING and ch.core.join_ref == ref:
                # No reply (timed out, or this task was cancelled): the join is void. ERRORED
                # lets the next attempt join again, and a leave undo a late server-side join.
                self._conn.join_timed_out(ch.topic)

    def _replay_since(self, ch: _Channel) -> int | None:
        """The replay ``since`` (Unix ms) for the next join of ``ch``, or None for no replay.

        First join: the configured ``since``, else "from now". Rejoins: from the last
        broadcast delivered: exactly its ``meta.inserted_at`` when the server stamps stored
        messages (the reference server does), else its delivery time minus ``replay_margin``
        for clock skew and delivery lag. Duplicates are dropped by id either way.
        """
        replay = ch.config.broadcast.replay
        if replay is None:
            return None
        now = self._config.wall_clock()
        if not ch.core.joined_once:
            if ch.last_delivery is None:
                ch.last_delivery = now
            if replay.since is not None:
                return replay.since
        if ch.core.joined_once and ch.last_inserted_at is not None:
            return ch.last_inserted_at  # the server's own clock: no lag or skew to cover
        base = now if ch.last_delivery is None else ch.last_delivery
        return int((base - self._config.replay_margin) * 1000)

    async def _first_join(self, ch: _Channel) -> None:
        while True:
            await self.wait_connected()
            try:
                reply = await self._join_once(ch)
            except ConnectionLost:
                continue  # it rejoins on the next connection
            if reply.ok:
                if ch.config.postgres_changes:
                    await self._wait_postgres_subscribed(ch)
                await self._joined(ch)
                return
            self._conn.close_channel(ch.topic)
            reason = _reason(reply.response)
            raise JoinRejected(ch.topic, reason, reply.response)

    async def _wait_postgres_subscribed(self, ch: _Channel) -> None:
        """Wait for the server's "Subscribed to PostgreSQL" (or its error) after a join.

        The official server acknowledges the join before the database subscription is live
        (rows committed in between are lost); waiting for the confirmation closes that gap.
        """
        with trio.move_on_after(self._config.join_timeout):
            message = await ch.wait_postgres_result()
            if message.status == "ok":
                return
            raise JoinRejected(ch.topic, message.message, {"reason": message.message})
        raise JoinTimedOut(ch.topic, self._config.join_timeout)

    async def _rejoin(self, ch: _Channel) -> None:
        """Rejoin ``ch`` on the current connection; a task of the connection's nursery."""
        policy = self._config.rejoin_backoff
        attempt = 0
        while not ch.closing and ch.closed_reason is None:
            if ch.core.state is not ChannelState.ERRORED:
                return  # someone else is on it
            try:
                reply = await self._join_once(ch)
            except ConnectionLost:
                return  # the supervisor handles the connection
            except JoinTimedOut as exc:
                reason = str(exc)
            else:
                if reply.ok:
                    if not ch.closing:
                        await self._joined(ch)
                    return
                reason = _reason(reply.response)
            attempt += 1
            log.warning("rejoin of %s failed (%s), attempt %d", ch.topic, reason, attempt)
            if policy.exhausted(attempt):
                self._conn.close_channel(ch.topic)
                ch.end(f"rejoin gave up after {attempt} attempts: {reason}")
                self._detach(ch)
                return
            await trio.sleep(policy.delay(attempt - 1, self._config.rng))

    async def _joined(self, ch: _Channel) -> None:
        """After a successful (re)join: re-track presence, flush the outbox.

        (``Rejoined`` was already delivered by the reader, as it processed the join reply.)
        """
        ch.flushing = True
        try:
            if ch.tracked_meta is not None:
                try:
                    _, frame = self._conn.push(
                        ch.topic,
                        "presence",
                        {"type": "presence", "event": "track", "payload": ch.tracked_meta},
                        expect_reply=False,
                    )
                    await self._send_frame(frame)
                except (ConnectionLost, LocalProtocolError):
                    return
            while ch.outbox and ch.core.state is ChannelState.JOINED:
                item = ch.outbox.pop(0)
                ch.wake_outbox()
                try:
                    item.ref, frame = self._conn.push(
                        ch.topic, item.event, item.payload, expect_reply=item.want_reply
                    )
                    if item.want_reply:
                        item.waiter = self._waiters[item.ref] = _Waiter()
                    await self._send_frame(frame)
                except (ConnectionLost, LocalProtocolError) as exc:
                    item.error = exc
                    item.done.set()
                    return
                item.done.set()
            ch.ready = ch.core.state is ChannelState.JOINED
        finally:
            ch.flushing = False

    async def _leave(self, ch: _Channel) -> None:
        """Leave ``ch`` on the server if it may be joined there, then close it locally."""
        ch.fail_outbox(trio.ClosedResourceError(f"subscription to {ch.topic!r} was closed"))
        if self._conn.channels.get(ch.topic) is not ch.core:
            return  # already detached (closed by the server): nothing to leave
        state = ch.core.state
        if self._transport is not None and state in (
            ChannelState.JOINED,
            ChannelState.JOINING,
            ChannelState.ERRORED,
        ):
            ref, frame = self._conn.leave(ch.topic)
            waiter = self._waiters[ref] = _Waiter()
            try:
                await self._send_frame(frame)
                await waiter.wait()
            except ConnectionLost:
                pass
            finally:
                self._waiters.pop(ref, None)
                self._conn.forget(ref)
        self._conn.close_channel(ch.topic)

    def _detach(self, ch: _Channel) -> None:
        """Take a channel the server closed out of the registries at once, so a new
        subscription to its topic starts a fresh join; its subscribers keep their streams
        (which end with SubscriptionClosed) until their blocks exit."""
        if self._channels.get(ch.topic) is ch:
            del self._channels[ch.topic]
        if self._conn.channels.get(ch.topic) is ch.core:
            self._conn.close_channel(ch.topic)
            self._conn.remove_channel(ch.topic)
        ch.mark_forgotten()
        self._notify_channels()

    def _forget_channel(self, ch: _Channel) -> None:
        """Remove ``ch`` from this client (its server-side join is over)."""
        if self._channels.get(ch.topic) is ch:
            del self._channels[ch.topic]
        if self._conn.channels.get(ch.topic) is ch.core:
            self._conn.close_channel(ch.topic)
            self._conn.remove_channel(ch.topic)
        for subscriber in list(ch.subscribers):
            ch.remove_subscriber(subscriber)
        ch.mark_forgotten()

    # -- pushes -------------------------------------------------------------------------------------

    async def _push(self, ch: _Channel, event: str, payload: Any, *, want_reply: bool) -> None:
        if ch.closing:
            raise trio.ClosedResourceError(f"subscription to {ch.topic!r} was closed")
        if ch.closed_reason is not None:
            raise SubscriptionClosed(ch.topic, ch.closed_reason)
        if self._config.vsn in ("1.0.0", SEED002_VSN) and isinstance(payload, dict):
            inner = payload.get("payload")
            if isinstance(inner, bytes | bytearray | memoryview):
                raise LocalProtocolError(
                    f"cannot send a binary payload on {ch.topic!r}: this client speaks vsn "
                    f"{self._config.vsn}, which carries only JSON; use RealtimeConfig(vsn='2.0.0')"
                )
        ref: str | None = None
        # Held here, not looked up after the send: the reader may resolve (and unregister) it
        # before this task runs again.
        waiter: _Waiter | None = None
        try:
            if ch.ready and not ch.flushing and not ch.outbox and self._transport is not None:
                ref, frame = self._conn.push(ch.topic, event, payload, expect_reply=want_reply)
                if want_reply:
                    waiter = self._waiters[ref] = _Waiter()
                await self._send_frame(frame)
            else:
                while len(ch.outbox) >= ch.max_pending:
                    await ch.wait_change()
                    if ch.closing:
                        raise trio.ClosedResourceError(f"subscription to {ch.topic!r} was closed")
                    if ch.closed_reason is not None:
                        raise SubscriptionClosed(ch.topic, ch.closed_reason)
                item = _Outgoing(event=event, payload=payload, want_reply=want_reply)
                ch.outbox.append(item)
                await item.done.wait()
                if item.error is not None:
                    raise item.error
                ref = item.ref
                waiter = item.waiter
            if waiter is None:
                return
            # If the connection died since the send, the waiter was failed with ConnectionLost.
            with trio.move_on_after(self._config.push_timeout):
                reply = await waiter.wait()
                if not reply.ok:
                    raise PushRejected(ch.topic, event, reply.response)
                return
            raise PushTimedOut(ch.topic, event, self._config.push_timeout)
        finally:
            if ref is not None:
                self._waiters.pop(ref, None)
                self._conn.forget(ref)

    async def _track(self, ch: _Channel, meta: dict[str, Any] | None) -> None:
        if self._config.vsn == SEED002_VSN:
            raise LocalProtocolError(
                f"cannot track presence on {ch.topic!r}: presence is not part of the seed-002 "
                "protocol; use RealtimeConfig(vsn='2.0.0')"
            )
        if meta is None:
            body: dict[str, Any] = {"type": "presence", "event": "untrack"}
        else:
            body = {"type": "presence", "event": "track", "payload": meta}
        await self._push(ch, "presence", body, want_reply=True)
        ch.tracked_meta = meta


#: Fragments of the official server's system messages that close a channel over its token
#: (PROTOCOL.md §3.7): a fresh token from the callable repairs them.
_TOKEN_CLOSE_MARKERS = ("Token has expired", "JWT", "not a valid JWT", "`role` and `exp`")


def _recovered(ch: _Channel, reply: Reply) -> bool:
    """Whether a rejoin provably missed nothing (SPEC X1).

    Only with replay on a private channel without postgres_changes (which cannot be
    replayed), and only if the server said its replay was complete: the reference server adds
    ``"replay": {"count": n, "complete": true}`` to the join reply (the official server says
    nothing, so against it this is always False: refetch).
    """
    if ch.config.broadcast.replay is None or not ch.config.private or ch.config.postgres_changes:
        return False
    response = reply.response
    if not isinstance(response, dict):
        return False
    replay = response.get("replay")
    return isinstance(replay, dict) and replay.get("complete") is True


def _reason(response: Any) -> str:
    if isinstance(response, dict):
        reason = response.get("reason")
        if isinstance(reason, str):
            return reason
        if response:
            return ", ".join(str(v) for v in response.values())
    return "the server gave no reason"


@asynccontextmanager
async def open_realtime(
    url: str,
    *,
    api_key: str | None = None,
    access_token: TokenSource = None,
    config: RealtimeConfig | None = None,
    transport_factory: TransportFactory | None = None,
) -> AsyncIterator[RealtimeClient]:
    """Connect to a Realtime server for the duration of the block.

    ``url`` is the Realtime endpoint, e.g. ``wss://<ref>.supabase.co/realtime/v1`` or the
    reference server's ``server.url`` (``/websocket`` is appended, as realtime-js does). The
    block is entered once the first connection is open. If that first attempt fails, this
    raises at once (a wrong URL or key should not hang); after that, lost connections are
    re-established with ``config.reconnect_backoff``, forever by default.

    Args:
        url: the endpoint.
        api_key: your project's API key, sent as the ``apikey`` query parameter.
        access_token: a user JWT, or an async callable returning the current one; it is
            fetched before every (re)join, so rotating tokens just works. Defaults to no token
            (the server then uses the API key).
        config: a :class:`RealtimeConfig`.
        transport_factory: replaces the WebSocket transport (for tests and benchmarks).

    Raises:
        HandshakeFailed: the first connection could not be made (``.status`` and ``.body``
            hold the server's refusal).
    """
    cfg = RealtimeConfig() if config is None else config
    client = RealtimeClient._create(
        url,
        api_key=api_key,
        access_token=access_token,
        config=cfg,
        transport_factory=transport_factory,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._run)
            try:
                yield client
            finally:
                client._closed = True
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise collapse(group, "the realtime client") from None
