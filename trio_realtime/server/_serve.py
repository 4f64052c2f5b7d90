"""The Trio side of the reference server: sockets, tasks, routing and fan-out.

Theory of operation
-------------------
:func:`serve_realtime` listens with trio-websocket. Each upgrade request is judged by the
sans-IO :func:`~._handshake.evaluate_upgrade`; an accepted socket becomes a
:class:`_Connection` run by three sibling tasks in one nursery:

* the **reader** takes frames off the socket, decodes them with the socket's serializer
  (vsn 1.0.0 or 2.0.0) and dispatches them. Dispatching is synchronous except for the join
  error backoff, so one socket's frames are handled strictly in order, as Phoenix does. A
  malformed frame is counted, logged (rate-limited, never its content) and dropped. A socket
  that sends nothing for ``idle_timeout`` is closed with 1000.
* the **writer** drains the socket's bounded outgoing queue onto the wire. Nothing else ever
  writes to the socket, and nothing ever waits for the writer: every frame is queued with
  ``send_nowait``. A queue that is full means the client stopped reading; that one socket is
  closed with 1008 ("send queue full") and everyone else carries on.
* the **expiry watcher** sleeps until the earliest channel token expiry (only with a JWT
  secret) and closes expired channels with the official ``system`` error.

With a database (``database_url``), a :class:`~._postgres.ChangeFeed` captures row changes
by logical decoding (see ``_postgres``). A join with postgres_changes bindings registers
them with the feed *before* its reply is queued (so no commit after the reply is missed),
then pushes the ``system`` subscription result after the reply; the feed hands each row
change's matches to :meth:`_Hub.deliver_changes`, which queues one ``postgres_changes``
message per channel, encoded once per (topic, ids, vsn).

Routing state is plain dictionaries owned by :class:`_Hub`, mutated only from synchronous
code (so no locks): ``(private, sub_topic) -> {channel}`` for fan-out and
``(private, sub_topic) -> PresenceTopic`` for presence. A fan-out looks up one set and encodes
the message at most once per serializer version, however many subscribers there are.

**Private channels** are authorized by the ``authorize`` policy (``_authorization``): read
at join (and for every delivery), write lazily on the first broadcast or track, all cached per
channel until its token changes. Every broadcast they accept is **stored** before it is fanned
out or acked (``_replay``: in memory, or in PostgreSQL with a database, where the insert is
awaited in a worker thread while this socket's reader waits, so its frames stay in order), and
carries ``meta.id``. A join asking for a **replay** subscribes the channel first and then
selects the stored messages; with a database the select is awaited, and whatever is fanned
out to the channel meanwhile is *held* (``_Channel.held``) and queued after the join reply
and the replay, minus the messages the replay already carried. So a replaying join misses
nothing between the select and the subscription, gets nothing twice, and gets nothing before
its reply. The **rate limits** (``_limits``) are counted on Trio's clock; joins, broadcast
pushes, unknown events and deliveries count.

Closing a socket (:meth:`_Hub._begin_close`) is immediate for routing: its channels are
unsubscribed and their presences leave at once. What remains is wire work: a *graceful*
close (idle timeout, :meth:`RealtimeServer.disconnect_all`) lets the writer flush the queue
before the close frame; an *abort* (send queue full) discards the queue, lets the writer
finish the frame it is writing, and sends the close frame. Both are bounded by
``close_timeout``, after which the TCP connection is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar, final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketServer

from .._errors import LocalProtocolError, RemoteProtocolError
from ..protocol import SEED002_VSN, SUPPORTED_VSNS, Message, Serializer, serializer_for
from ._auth import TokenRejected, TokenVerifier
from ._authorization import Action, Authorizer, ChannelPolicies, Extension, decide, default_authorize
from ._config import ServerConfig
from ._handshake import Accept, Refuse, evaluate_upgrade, redact_target
from ._join import JoinParams, parse_join
from ._limits import RateCounter
from ._postgres import CONNECTION_LOST, NO_DATABASE_MESSAGE, ChangeFeed, Delivery, open_change_feed
from ._presence import CallWindow, PresenceDiff, PresenceTopic, RefFactory
from ._replay import MemoryMessageStore, ReplayResult, StoredMessage, replay_request
from ._replay_postgres import PostgresMessageStore, StoreUnavailable, open_postgres_store
from ._seed002 import SEED002_PATH, auth_success, evaluate_seed002_upgrade, new_connection_id

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from trio_websocket import WebSocketConnection, WebSocketRequest

__all__ = ["RealtimeServer", "ServerStatistics", "serve_realtime"]

logger = logging.getLogger("trio_realtime.server")

_Frame = str | bytes
_Key = tuple[bool, str]  # (private, sub_topic): the internal PubSub topic

_TOPIC_PREFIX: Final = "realtime:"
_TOO_MANY_MESSAGES: Final = "Too many messages per second"
_TOO_MANY_JOINS: Final = "Too many joins per second"
_REPLAY_FAILED: Final = "UnableToReplayMessages: Realtime was unable to replay messages"
_HANDSHAKE_TIMEOUT: Final = 10.0
_T = TypeVar("_T")


class _NoPublicConstructor(type):
    """Metaclass of classes that only a factory may build (Trio's pattern)."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


@final
@attrs.frozen(kw_only=True)
class ServerStatistics:
    """A snapshot of :meth:`RealtimeServer.statistics`.

    Attributes:
        connections: WebSocket connections currently open.
        channels: channels currently joined, over all connections.
        messages_in: frames received from clients (including malformed ones).
        messages_out: frames queued for clients.
        malformed_frames: frames dropped because they could not be decoded.
        send_queue_overflows: sockets closed because their send queue was full.
        rejected_upgrades: upgrade requests refused (bad route, vsn or API key).
        postgres_changes: row changes decoded from the database (0 without one).
        postgres_messages: ``postgres_changes`` messages queued to channels.
        stored_messages: private broadcasts stored for replay.
        replayed_messages: stored broadcasts replayed to joining channels.
        unauthorized: requests the authorization policy denied (joins, sends, tracks,
            token refreshes that lost read access).
        rate_limited: joins refused and channels closed by the events/joins per second limits.
    """

    connections: int
    channels: int
    messages_in: int
    messages_out: int
    malformed_frames: int
    send_queue_overflows: int
    rejected_upgrades: int
    postgres_changes: int = 0
    postgres_messages: int = 0
    stored_messages: int = 0
    replayed_messages: int = 0
    unauthorized: int = 0
    rate_limited: int = 0


@attrs.define(eq=False)
class _Connection:
    id: int
    serializer: Serializer
    token: str = attrs.field(repr=False)
    remote: str
    send_channel: trio.MemorySendChannel[_Frame] = attrs.field(repr=False)
    receive_channel: trio.MemoryReceiveChannel[_Frame] = attrs.field(repr=False)
    channels: dict[str, _Channel] = attrs.field(factory=dict, repr=False)
    closing: bool = False
    discard: bool = False  # drop queued frames instead of flushing them
    close_code: int | None = None  # None: the peer is gone, nothing to send
    close_reason: str = ""
    reader_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, repr=False)
    writer_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, repr=False)
    expiry_changed: trio.Event = attrs.field(factory=trio.Event, repr=False)
    done: trio.Event = attrs.field(factory=trio.Event, repr=False)
    drained: trio.Event | None = attrs.field(default=None, repr=False)  # set by the writer
    stalled: bool = False  # did not drain within postgres_backpressure_timeout; not waited for
    malformed: int = 0


@attrs.define(eq=False)
class _Channel:
    conn: _Connection
    topic: str
    sub_topic: str
    join_ref: str | None
    params: JoinParams
    presence_key: str
    presence_enabled: bool
    presence_calls: CallWindow
    token: str | None = attrs.field(repr=False)
    token_exp: float | None = None
    closed: bool = False
    #: The verified claims of the token (empty in development mode), for authorization.
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    #: Private channels' authorization decisions, cached until the token changes.
    policies: ChannelPolicies = attrs.field(factory=ChannelPolicies, repr=False)
    #: Ids of the stored messages replayed at join: never delivered again by fan-out.
    replayed_ids: set[str] = attrs.field(factory=set, repr=False)
    #: While the join awaits its replay: frames for this channel, held back (with their
    #: message id) until the join reply and the replay are queued.
    held: list[tuple[_Frame, str | None]] | None = attrs.field(default=None, repr=False)

    @property
    def key(self) -> _Key:
        return (self.params.private, self.sub_topic)


@attrs.frozen
class _Admission:
    """The outcome of the join checks: a refusal ``reason``, or what the channel starts with."""

    reason: str | None = None
    disconnect: bool = False  # refuse, then close the socket with 1001
    exp: float | None = None
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    policies: ChannelPolicies = attrs.field(factory=ChannelPolicies, repr=False)


def _payload_size(payload: dict[str, Any]) -> int:
    """Approximate size of a payload: its JSON length in bytes (raw bytes count as is)."""
    inner = payload.get("payload")
    if isinstance(inner, bytes | bytearray):
        rest = {k: v for k, v in payload.items() if k != "payload"}
        return len(inner) + len(json.dumps(rest, ensure_ascii=False, separators=(",", ":")))
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_unicode(data: _Frame, msg: Message) -> None:
    """Reject a frame whose JSON escapes decode to lone surrogates (not Unicode text).

    ``json`` accepts ``"\\ud800"`` and yields a string no UTF-8 encoder takes, so such a
    topic, event or payload could never be sent on, stored or logged as text. Checked only
    when the frame holds a surrogate escape at all (rare), so the common path costs one scan.
    """
    pattern = _SURROGATE_ESCAPE_BYTES if isinstance(data, bytes) else _SURROGATE_ESCAPE
    if not pattern.search(data):  # type: ignore[arg-type]
        return
    try:
        _strict_text([msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload]).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"frame is not valid Unicode text: {exc}") from None


_strict_text = json.JSONEncoder(ensure_ascii=False, default=lambda obj: None).encode


def _uuid1(rng: random.Random) -> str:
    # uuid1() would reach for the global RNG (clock_seq) and the MAC address (node); give it
    # both from the injected RNG (node with the multicast bit set, as RFC 4122 asks for
    # random node ids).
    return str(uuid.uuid1(node=rng.getrandbits(48) | 0x0100_0000_0000, clock_seq=rng.getrandbits(14)))


def _endpoint(endpoint: object) -> str:
    address, port = getattr(endpoint, "address", None), getattr(endpoint, "port", None)
    return f"{address}:{port}" if address is not None else str(endpoint)


class _Hub:
    """All routing state and protocol behaviour of one server."""

    def __init__(self, config: ServerConfig, jwt_secret: str | None,
                 authorize: Authorizer | None = None) -> None:
        self.config = config
        self.verifier = TokenVerifier(secret=jwt_secret) if jwt_secret is not None else None
        self.authorize: Authorizer = authorize if authorize is not None else default_authorize
        self.rng = config.rng if config.rng is not None else random.Random()
        self.new_ref = RefFactory(rng=self.rng)
        self.serializers = {vsn: serializer_for(vsn, "server") for vsn in SUPPORTED_VSNS}
        self.connections: dict[_Connection, None] = {}
        # dicts used as ordered sets, so fan-out order is reproducible
        self.subscriptions: dict[_Key, dict[_Channel, None]] = {}
        self.presence: dict[_Key, PresenceTopic] = {}
        self.conn_ids = itertools.count(1)
        self.channel_count = 0
        self.messages_in = 0
        self.messages_out = 0
        self.malformed = 0
        self.overflows = 0
        self.rejected = 0
        self.feed: ChangeFeed | None = None
        self.pg_pressured: dict[_Connection, None] = {}
        # Replay storage: in memory, unless the server has a database (set by serve_realtime).
        self.memory_store = MemoryMessageStore(per_topic=config.replay_memory_per_topic)
        self.pg_store: PostgresMessageStore | None = None
        self.last_inserted_at = 0
        self.replayed = 0
        self.unauthorized = 0
        self.rate_limited = 0
        self.events = self._rate_counter(config.max_events_per_second)
        self.joins = self._rate_counter(config.max_joins_per_second)

    def _rate_counter(self, limit: int | None) -> RateCounter | None:
        if limit is None:
            return None
        return RateCounter(limit=limit, tick=self.config.rate_counter_tick,
                           ticks=self.config.rate_counter_ticks)

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            connections=len(self.connections),
            channels=self.channel_count,
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            malformed_frames=self.malformed,
            send_queue_overflows=self.overflows,
            rejected_upgrades=self.rejected,
            postgres_changes=self.feed.changes_decoded if self.feed is not None else 0,
            postgres_messages=self.feed.messages_delivered if self.feed is not None else 0,
            stored_messages=self.pg_store.stored if self.pg_store is not None else self.memory_store.stored,
            replayed_messages=self.replayed,
            unauthorized=self.unauthorized,
            rate_limited=self.rate_limited,
        )

    # -- connection lifecycle ----------------------------------------------------------------

    async def handle(self, request: WebSocketRequest) -> None:
        """trio-websocket's per-request handler."""
        target = request.path
        # seed-002 (path /seed002, or the "jwt" subprotocol) is decided before the vsn logic.
        decision: Accept | Refuse | None = evaluate_seed002_upgrade(
            target, request.proposed_subprotocols, verifier=self.verifier, now=time.time()
        )
        if decision is None:
            decision = evaluate_upgrade(
                target, request.headers, verifier=self.verifier, now=time.time(),
                default_vsn=self.config.default_vsn,
            )
        joins = self.joins
        if isinstance(decision, Accept) and joins is not None and joins.triggered(trio.current_time()):
            # The official upgrade checks the tenant's joins/s limit too (§1.3 step 4).
            self.rate_limited += 1
            body = json.dumps({"error": _TOO_MANY_JOINS}, separators=(",", ":")).encode()
            decision = Refuse(status=429, body=body, reason="too many joins per second", backoff=True)
        if isinstance(decision, Refuse):
            await self._refuse(request, target, decision)
            return
        try:
            ws = await request.accept(subprotocol=decision.subprotocol)
        except ConnectionClosed:
            return
        send_channel, receive_channel = trio.open_memory_channel[_Frame](self.config.send_queue_size)
        conn = _Connection(
            id=next(self.conn_ids),
            # seed-002 serializers keep per-connection state: one each.
            serializer=self.serializers[decision.vsn] if decision.vsn in self.serializers
            else serializer_for(decision.vsn, "server"),
            token=decision.token,
            remote=_endpoint(request.remote),
            send_channel=send_channel,
            receive_channel=receive_channel,
        )
        self.connections[conn] = None
        if decision.vsn == SEED002_VSN:
            self._send(conn, auth_success(new_connection_id(self.rng)))  # before anything else
        logger.debug("connection %d from %s: accepted %s (vsn %s)", conn.id, conn.remote,
                     redact_target(target), decision.vsn)
        try:
            await self._run(conn, ws)
        except Exception:
            # A bug must cost one connection, not the server.
            logger.exception("connection %d: internal error; closing it with 1011", conn.id)
            self._begin_close(conn, 1011, "internal error", flush=False)
            with trio.move_on_after(self.config.close_timeout):
                await ws.aclose(1011, "internal error")
        finally:
            self._begin_close(conn, None, "", flush=False)
            del self.connections[conn]
            conn.done.set()
            logger.debug("connection %d: closed", conn.id)

    async def _refuse(self, request: WebSocketRequest, target: str, decision: Refuse) -> None:
        self.rejected += 1
        logger.info("refused upgrade %s from %s: %d %s", redact_target(target), _endpoint(request.remote),
                    decision.status, decision.reason)
        if decision.backoff and self.config.connect_error_backoff > 0:
            await trio.sleep(self.config.connect_error_backoff)
        headers = [(b"content-type", b"application/json")] if decision.body else []
        try:
            await request.reject(decision.status, extra_headers=headers, body=decision.body or None)
        except ConnectionClosed:
            pass

    async def _run(self, conn: _Connection, ws: WebSocketConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, conn, ws)
            nursery.start_soon(self._expiry_watcher, conn)
            await self._writer(conn, ws)
            nursery.cancel_scope.cancel()
        if conn.close_code is not None:
            with trio.move_on_after(self.config.close_timeout):
                await ws.aclose(conn.close_code, conn.close_reason or None)

    async def _reader(self, conn: _Connection, ws: WebSocketConnection) -> None:
        with conn.reader_scope:
            while not conn.closing:
                with trio.move_on_after(self.config.idle_timeout) as idle:
                    try:
                        data = await ws.get_message()
                    except ConnectionClosed:
                        self._begin_close(conn, None, "", flush=False)
                        return
                if idle.cancelled_caught:
                    logger.info("connection %d: idle for %g s; closing it", conn.id, self.config.idle_timeout)
                    self._begin_close(conn, 1000, "idle timeout", flush=True)
                    return
                self.messages_in += 1
                try:
                    msg = conn.serializer.decode(data)
                    _check_unicode(data, msg)
                except RemoteProtocolError as exc:
                    self._malformed(conn, data, exc)
                    continue
                await self._dispatch(conn, msg)

    async def _writer(self, conn: _Connection, ws: WebSocketConnection) -> None:
        with conn.writer_scope:
            async for frame in conn.receive_channel:
                if conn.discard:
                    break
                try:
                    await ws.send_message(frame)
                except ConnectionClosed:
                    self._begin_close(conn, None, "", flush=False)
                    break
                except UnicodeEncodeError:
                    # A lone surrogate that got past the decoder: that frame cannot be sent as
                    # UTF-8 text (wsproto checks before writing anything); drop it, not the socket.
                    logger.warning("connection %d: dropped an outgoing frame that is not valid UTF-8",
                                   conn.id)
                    continue
                if (conn.drained is not None or conn.stalled) and (
                    self._queued(conn) <= self.config.send_queue_size // 4
                ):
                    conn.stalled = False
                    if conn.drained is not None:
                        conn.drained.set()
                        conn.drained = None

    async def _expiry_watcher(self, conn: _Connection) -> None:
        while True:
            changed = conn.expiry_changed = trio.Event()
            # A channel still joining (awaiting its replay) is checked once its join completed.
            expiries = [c.token_exp for c in conn.channels.values()
                        if c.token_exp is not None and c.held is None]
            if not expiries:
                await changed.wait()
                continue
            delay = min(expiries) - time.time()
            if delay > 0:
                with trio.move_on_after(delay):
                    await changed.wait()
                continue
            now = time.time()
            for chan in list(conn.channels.values()):
                if chan.held is not None:
                    continue
                if chan.token_exp is not None and chan.token_exp <= now:
                    self._shutdown(chan, f"Token has expired {max(0, int(now - chan.token_exp))} seconds ago")

    def _begin_close(self, conn: _Connection, code: int | None, reason: str, *, flush: bool) -> None:
        """Stop routing to ``conn`` now, and tell its writer how to finish (see module doc)."""
        if conn.closing:
            return
        conn.closing = True
        conn.discard = not flush
        conn.close_code = code
        conn.close_reason = reason
        for chan in list(conn.channels.values()):
            self._close_channel(chan, push_close=False)
        conn.send_channel.close()
        conn.reader_scope.cancel()
        if code is None:
            conn.writer_scope.cancel()
        else:
            conn.writer_scope.deadline = min(
                conn.writer_scope.deadline, trio.current_time() + self.config.close_timeout
            )

    def _malformed(self, conn: _Connection, data: _Frame, exc: RemoteProtocolError) -> None:
        self.malformed += 1
        conn.malformed += 1
        n = conn.malformed
        # Never the frame itself: it may be huge, or carry a token.
        level = logging.WARNING if n <= 3 or n % 100 == 0 else logging.DEBUG
        logger.log(level, "connection %d: dropped malformed %s frame of %d bytes (%d so far): %s",
                   conn.id, "binary" if isinstance(data, bytes) else "text", len(data), n, exc)

    async def disconnect_all(self, code: int) -> None:
        conns = list(self.connections)
        for conn in conns:
            for chan in list(conn.channels.values()):
                # The one system message without a "channel" key (§1.5).
                self._push(chan, "system", {"extension": "system", "status": "ok",
                                            "message": "Server requested disconnect"})
            self._begin_close(conn, code, "", flush=True)
        await trio.lowlevel.checkpoint()
        for conn in conns:
            await conn.done.wait()

    # -- output --------------------------------------------------------------------------------

    def _enqueue(self, conn: _Connection, frame: _Frame) -> None:
        if conn.closing:
            return
        try:
            conn.send_channel.send_nowait(frame)
        except trio.WouldBlock:
            self.overflows += 1
            logger.warning("connection %d (%s): send queue full (%d frames), the client is not "
                           "reading; closing it with 1008", conn.id, conn.remote, self.config.send_queue_size)
            self._begin_close(conn, 1008, "send queue full", flush=False)
            return
        self.messages_out += 1

    def _send(self, conn: _Connection, msg: Message) -> None:
        if conn.closing:
            return
        try:
            frame = conn.serializer.encode(msg)
        except (LocalProtocolError, UnicodeEncodeError) as exc:
            logger.warning("connection %d: cannot encode %r on %r: %s", conn.id, msg.event[:100],
                           msg.topic[:100], exc)
            return
        self._enqueue(conn, frame)

    def _reply(self, conn: _Connection, msg: Message, join_ref: str | None, status: str,
               response: dict[str, Any]) -> None:
        self._send(conn, Message(join_ref=join_ref, ref=msg.ref, topic=msg.topic, event="phx_reply",
                                 payload={"status": status, "response": response}))

    def _push(self, chan: _Channel, event: str, payload: dict[str, Any]) -> None:
        """A channel push: carries the join_ref on V2 (``[join_ref, null, topic, event, payload]``)."""
        msg = Message(join_ref=chan.join_ref, topic=chan.topic, event=event, payload=payload)
        frame = self._encode_for(chan.conn.serializer, msg)
        if frame is not None:
            self._to_channel(chan, frame)

    def _to_channel(self, chan: _Channel, frame: _Frame, message_id: str | None = None) -> None:
        """Queue a frame for ``chan``, or hold it while the channel's join awaits its replay."""
        if chan.held is not None:
            chan.held.append((frame, message_id))
        else:
            self._enqueue(chan.conn, frame)

    def _encode_for(self, serializer: Serializer, msg: Message) -> _Frame | None:
        if msg.user_broadcast and serializer.vsn in ("1.0.0", SEED002_VSN):
            inner = msg.payload.get("payload") if isinstance(msg.payload, dict) else None
            if isinstance(inner, bytes | bytearray):
                return None  # V1 cannot carry binary: not delivered (§2.2)
        try:
            return serializer.encode(msg)
        except (LocalProtocolError, UnicodeEncodeError) as exc:
            logger.warning("cannot encode %r on %r for vsn %s: %s", msg.event[:100], msg.topic[:100],
                           serializer.vsn, exc)
            return None

    def _fanout(
        self,
        key: _Key,
        msg: Message,
        exclude: _Channel | None = None,
        *,
        extension: Extension = "broadcast",
        message_id: str | None = None,
        count_events: bool = False,
        limited: bool = False,
    ) -> None:
        """Queue ``msg`` to every channel subscribed to ``key``, encoding once per vsn.

        On private channels only members allowed to read ``extension`` get it. A stored
        message (``message_id``) skips the channels that already got it by replay. With
        ``count_events``, each delivery counts toward the events/s limit; ``limited`` (the
        limit was triggered when the message arrived) closes the receiving channels instead
        of delivering (§7.1).
        """
        subs = self.subscriptions.get(key)
        if not subs:
            return
        frames: dict[str, _Frame | None] = {}
        delivered = 0
        for chan in list(subs):
            if chan is exclude or chan.closed:
                continue
            conn = chan.conn
            if conn.closing:
                continue
            if message_id is not None and message_id in chan.replayed_ids:
                continue  # already_replayed (§4.7)
            if key[0] and not self._allowed(chan, extension, "read"):
                continue
            if limited:
                if chan.held is None:  # a channel still joining is left to its next message
                    self._rate_limit_shutdown(chan)
                continue
            # Shared serializers encode once per vsn; a per-connection one (stateful) encodes its own.
            serializer = conn.serializer
            shared = self.serializers.get(serializer.vsn) is serializer
            skey = serializer.vsn if shared else str(id(serializer))
            if skey in frames:
                frame = frames[skey]
            else:
                frame = frames[skey] = self._encode_for(serializer, msg)
            if frame is not None:
                self._to_channel(chan, frame, message_id)
                delivered += 1
        if count_events and delivered and self.events is not None:
            self.events.add(trio.current_time(), delivered)

    def _fanout_presence(self, key: _Key, topic: str, diff: PresenceDiff | None) -> None:
        if diff is not None:
            self._fanout(key, Message(topic=topic, event="presence_diff", payload=diff.to_payload()),
                         extension="presence")

    def _rate_limit_shutdown(self, chan: _Channel) -> None:
        self.rate_limited += 1
        self._shutdown(chan, _TOO_MANY_MESSAGES)

    def _allowed(self, chan: _Channel, extension: Extension, action: Action) -> bool:
        """The authorization decision for ``chan`` (always True on public channels), cached."""
        if not chan.params.private:
            return True
        allowed = chan.policies.get(extension, action)
        if allowed is None:
            allowed = decide(self.authorize, chan.claims, chan.sub_topic, extension, action)
            chan.policies.set(extension, action, allowed)
        return allowed

    # -- channels ------------------------------------------------------------------------------

    def _close_channel(self, chan: _Channel, *, push_close: bool) -> None:
        """Remove a channel: optional ``phx_close``, unsubscribe, presence leave to the others."""
        if chan.closed:
            return
        chan.closed = True
        self.channel_count -= 1
        if self.feed is not None:
            self.feed.unsubscribe(chan)
        conn = chan.conn
        if conn.channels.get(chan.topic) is chan:
            del conn.channels[chan.topic]
        key = chan.key
        subs = self.subscriptions.get(key)
        if subs is not None:
            subs.pop(chan, None)
            if not subs:
                del self.subscriptions[key]
        if push_close:
            self._send(conn, Message(join_ref=chan.join_ref, ref=chan.join_ref, topic=chan.topic,
                                     event="phx_close", payload={}))
        presence = self.presence.get(key)
        if presence is not None:
            diff = presence.untrack(chan)
            if not presence:
                del self.presence[key]
            self._fanout_presence(key, chan.topic, diff)
        if chan.token_exp is not None:
            conn.expiry_changed.set()

    def _shutdown(self, chan: _Channel, message: str) -> None:
        """The official "shutdown response": a ``system`` error, then ``phx_close`` (§3.7)."""
        logger.info("connection %d: closing %s: %s", chan.conn.id, chan.topic, message)
        self._push(chan, "system", {"extension": "system", "status": "error", "message": message,
                                    "channel": chan.sub_topic})
        self._close_channel(chan, push_close=True)

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self, conn: _Connection, msg: Message) -> None:
        if msg.topic == "phoenix":
            if msg.event == "heartbeat":
                self._reply(conn, msg, None, "ok", {})
            elif msg.event == "access_token" and conn.serializer.vsn == SEED002_VSN:
                self._on_socket_token(conn, msg)  # seed-002's {"type": "auth", "token": T}
            return
        if msg.event == "phx_join":
            try:
                await self._join(conn, msg)
            except Exception:
                # A bug in the join pipeline costs this join, not the connection.
                logger.exception("connection %d: joining %r crashed", conn.id, msg.topic[:100])
                self._reply(conn, msg, msg.join_ref, "error", {"reason": "Unknown Error on Channel"})
            return
        chan = conn.channels.get(msg.topic)
        if chan is None:
            if msg.event == "phx_leave":
                self._reply(conn, msg, msg.join_ref, "ok", {})
            else:
                self._reply(conn, msg, None, "error", {"reason": "unmatched topic"})
            return
        if msg.join_ref is not None and chan.join_ref is not None and msg.join_ref != chan.join_ref:
            # Phoenix 1.8 drops pushes of a previous join of the topic (a missing join_ref is fine).
            logger.debug("connection %d: dropped %r on %s with a stale join_ref",
                         conn.id, msg.event[:100], msg.topic[:100])
            return
        try:
            await self._channel_in(chan, msg)
        except Exception:
            # What a crashed Phoenix channel process does: phx_error, channel gone, socket stays.
            logger.exception("connection %d: %s crashed handling %r", conn.id, chan.topic[:100],
                             msg.event[:100])
            self._send(conn, Message(join_ref=chan.join_ref, ref=chan.join_ref, topic=chan.topic,
                                     event="phx_error", payload={}))
            self._close_channel(chan, push_close=False)

    async def _channel_in(self, chan: _Channel, msg: Message) -> None:
        event = msg.event
        if event == "phx_leave":
            self._reply(chan.conn, msg, chan.join_ref, "ok", {})
            self._close_channel(chan, push_close=True)
        elif event == "broadcast":
            await self._on_broadcast(chan, msg)
        elif event == "presence":
            self._on_presence(chan, msg)
        elif event == "access_token":
            self._on_access_token(chan, msg)
        else:
            if self.events is not None:
                self.events.add(trio.current_time())  # unknown events count too (§2.5)
            logger.info("connection %d: ignored unknown event %r on %s",
                        chan.conn.id, event[:100], chan.topic[:100])

    async def _join(self, conn: _Connection, msg: Message) -> None:
        topic = msg.topic
        if not topic.startswith(_TOPIC_PREFIX):
            self._reply(conn, msg, None, "error", {"reason": "unmatched topic"})
            return
        old = conn.channels.get(topic)
        if old is not None:
            # Duplicate join: the old channel goes now, its phx_close follows the new reply (§3.6).
            logger.debug("connection %d: duplicate join of %s; closing the previous one", conn.id,
                         topic[:100])
            self._close_channel(old, push_close=False)
        params = parse_join(msg.payload)
        if params.problems:
            logger.info("connection %d: InvalidJoinPayload on %s (ignored parts): %s", conn.id, topic[:100],
                        "; ".join(params.problems)[:1000])
        token = params.access_token if params.access_token is not None else conn.token
        admission = self._join_check(conn, topic, params, token)
        if admission.reason is not None:
            await self._refuse_join(conn, msg, old, admission)
            return
        sub_topic = topic[len(_TOPIC_PREFIX):]
        chan = _Channel(
            conn=conn,
            topic=topic,
            sub_topic=sub_topic,
            join_ref=msg.join_ref,
            params=params,
            presence_key=params.presence_key if params.presence_key is not None else _uuid1(self.rng),
            presence_enabled=params.presence_enabled,
            presence_calls=CallWindow(limit=self.config.presence_rate_limit,
                                      window=self.config.presence_rate_window),
            token=token,
            token_exp=admission.exp,
            claims=admission.claims,
            policies=admission.policies,
        )
        pg_error: str | None = None
        if params.postgres_changes:
            # Registered before the reply is queued: every commit after the reply reaches it.
            pg_error = await self._pg_subscribe(chan)
            if conn.closing:
                if self.feed is not None:
                    self.feed.unsubscribe(chan)
                return
        conn.channels[topic] = chan
        self.subscriptions.setdefault(chan.key, {})[chan] = None
        self.channel_count += 1
        response: dict[str, Any] = {"postgres_changes": list(params.postgres_changes)}
        replay: ReplayResult | None = None
        if params.replay is not None:
            replay = await self._replay_for(chan)
            if chan.closed:
                return  # the socket closed meanwhile
            if replay is None:
                chan.held = None
                self._close_channel(chan, push_close=False)
                await self._refuse_join(conn, msg, old, _Admission(reason=_REPLAY_FAILED))
                return
            response["replay"] = replay.extension
        self._reply(conn, msg, msg.join_ref, "ok", response)
        self._push_old_close(conn, old)
        if replay is not None:
            self._push_replay(chan, replay)
        if params.postgres_changes:
            self._push_pg_system(chan, pg_error)
        if params.replication_ready:
            # No replication here to wait for: always ready (§4.9).
            self._push(chan, "system", {"extension": "system", "status": "ok",
                                        "message": "Replication connection established",
                                        "channel": sub_topic})
        if chan.presence_enabled and self._allowed(chan, "presence", "read"):
            presence = self.presence.get(chan.key)
            self._push(chan, "presence_state", presence.state() if presence is not None else {})
        held, chan.held = chan.held, None
        for frame, message_id in held or ():
            if message_id is None or message_id not in chan.replayed_ids:
                self._enqueue(conn, frame)
        if admission.exp is not None:
            conn.expiry_changed.set()

    async def _refuse_join(self, conn: _Connection, msg: Message, old: _Channel | None,
                           admission: _Admission) -> None:
        logger.info("connection %d: join of %s refused: %s", conn.id, msg.topic[:100], admission.reason)
        if self.config.join_error_backoff > 0:
            await trio.sleep(self.config.join_error_backoff)
        self._reply(conn, msg, msg.join_ref, "error", {"reason": admission.reason})
        self._push_old_close(conn, old)
        if admission.disconnect:
            # The official server sends the transport a "disconnect": the socket goes (1001).
            self._begin_close(conn, 1001, "", flush=True)

    async def _replay_for(self, chan: _Channel) -> ReplayResult | None:
        """Select the join's replay (§4.7); None if the store failed.

        The channel is already subscribed: with a database, broadcasts fanned out while the
        query runs are held for it (``chan.held``), so none falls between the query's
        snapshot and the subscription, and none arrives before the join reply.
        """
        request = replay_request(chan.params.replay, self.config.replay_max_limit)
        now_ms = int(time.time() * 1000)
        if self.pg_store is None:
            return self.memory_store.replay(chan.key, request, now_ms)
        chan.held = []
        try:
            return await self.pg_store.replay(chan.key, request, now_ms)
        except ValueError:
            # A topic the database refuses (a NUL character) never had a message stored.
            return ReplayResult(messages=(), complete=True)
        except StoreUnavailable as exc:
            logger.error("connection %d: replay for %s failed: %s", chan.conn.id, chan.topic[:100], exc)
            return None

    def _push_replay(self, chan: _Channel, replay: ReplayResult) -> None:
        """The replayed messages, oldest first, after the join reply (§4.7).

        JSON ones are channel pushes (vsn 2.0.0 text frames carry the join_ref); binary ones
        go as kind 4 with the ``meta`` as metadata, and are skipped on vsn 1.0.0.
        """
        serializer = chan.conn.serializer
        for stored in replay.messages:
            chan.replayed_ids.add(stored.id)
            payload = stored.with_meta(replayed=True)
            if stored.binary:
                msg = Message(topic=chan.topic, event="broadcast", payload=payload, user_broadcast=True)
            else:
                msg = Message(join_ref=chan.join_ref, topic=chan.topic, event="broadcast", payload=payload)
            frame = self._encode_for(serializer, msg)
            if frame is not None:
                self._enqueue(chan.conn, frame)
                self.replayed += 1

    async def _pg_subscribe(self, chan: _Channel) -> str | None:
        """Register the channel's postgres_changes bindings; the error message, or None."""
        if self.feed is None:
            return NO_DATABASE_MESSAGE
        error = await self.feed.subscribe(chan, chan.params.postgres_changes)
        if error is not None:
            logger.info("connection %d: postgres_changes on %s not subscribed: %s", chan.conn.id, chan.topic,
                        error)
        return error

    def _push_pg_system(self, chan: _Channel, error: str | None) -> None:
        """The subscription result (§6.3): the channel stays joined either way."""
        self._push(chan, "system", {
            "extension": "postgres_changes",
            "status": "ok" if error is None else "error",
            "message": "Subscribed to PostgreSQL" if error is None else error,
            "channel": chan.sub_topic,
        })

    def pg_lost(self, chan: _Channel) -> None:
        """The feed lost its slot: tell the channel its changes stopped."""
        if not chan.closed:
            self._push_pg_system(chan, CONNECTION_LOST)

    def deliver_changes(self, deliveries: list[Delivery]) -> None:
        """Queue one row change's ``postgres_changes`` messages (called by the feed)."""
        frames: dict[tuple[str, tuple[int, ...], int, str | int], _Frame | None] = {}
        for chan, ids, data in deliveries:
            if chan.closed or chan.conn.closing:
                continue
            serializer = chan.conn.serializer
            # Shared serializers encode once per vsn; a per-connection one (stateful) encodes its own.
            vsn = serializer.vsn
            skey: str | int = vsn if self.serializers.get(vsn) is serializer else id(serializer)
            key = (chan.topic, ids, id(data), skey)
            if key in frames:
                frame = frames[key]
            else:
                # Fan-out, as the official server's: no join_ref, no ref.
                msg = Message(topic=chan.topic, event="postgres_changes",
                              payload={"ids": list(ids), "data": data})
                frame = frames[key] = self._encode_for(serializer, msg)
            if frame is not None:
                self._enqueue(chan.conn, frame)
                if not chan.conn.stalled and self._queued(chan.conn) > self.config.send_queue_size // 2:
                    self.pg_pressured[chan.conn] = None

    @staticmethod
    def _queued(conn: _Connection) -> int:
        return conn.receive_channel.statistics().current_buffer_used

    async def pg_backpressure(self) -> None:
        """Wait until the sockets the feed filled past half their queue drain to a quarter.

        Bounded by ``postgres_backpressure_timeout`` per socket; one that does not drain is
        marked *stalled* and not waited for again until it drains, so it is left to the
        overflow policy (closed when its queue is full) and costs the others one timeout.
        """
        while self.pg_pressured:
            conn = next(iter(self.pg_pressured))
            del self.pg_pressured[conn]
            with trio.move_on_after(self.config.postgres_backpressure_timeout) as scope:
                while not conn.closing and self._queued(conn) > self.config.send_queue_size // 4:
                    conn.drained = event = trio.Event()
                    await event.wait()
            conn.drained = None
            if scope.cancelled_caught:
                logger.info("connection %d: not reading its postgres_changes; no longer waiting for it",
                            conn.id)
                conn.stalled = True

    def _push_old_close(self, conn: _Connection, old: _Channel | None) -> None:
        if old is not None:
            self._send(conn, Message(join_ref=old.join_ref, ref=old.join_ref, topic=old.topic,
                                     event="phx_close", payload={}))

    def _join_check(self, conn: _Connection, topic: str, params: JoinParams, token: str | None) -> _Admission:
        """The official join pipeline's checks that apply here, in its order (§3.3)."""
        if topic == _TOPIC_PREFIX:
            return _Admission("TopicNameRequired: You must provide a topic name")
        if self.joins is not None:
            now = trio.current_time()
            if self.joins.triggered(now):
                self.rate_limited += 1
                return _Admission(f"ClientJoinRateLimitReached: {_TOO_MANY_JOINS}", disconnect=True)
            self.joins.add(now)
        if len(conn.channels) >= self.config.max_channels_per_client:
            return _Admission("ChannelRateLimitReached: Too many channels")
        exp = None
        claims: Mapping[str, Any] = {}
        if self.verifier is not None:
            result = self.verifier.verify(token or "", time.time())
            if isinstance(result, TokenRejected):
                return _Admission(result.join_reason)
            exp = result.exp
            claims = result.claims
        policies = ChannelPolicies()
        if params.private:
            sub_topic = topic[len(_TOPIC_PREFIX):]
            unauthorized = ("Unauthorized: You do not have permissions to read from this Channel topic: "
                            f"{sub_topic}")
            broadcast_read = decide(self.authorize, claims, sub_topic, "broadcast", "read")
            policies.set("broadcast", "read", broadcast_read)
            presence_read = False
            if params.presence_enabled:
                presence_read = decide(self.authorize, claims, sub_topic, "presence", "read")
                policies.set("presence", "read", presence_read)
            if not (broadcast_read or presence_read) or (params.replay is not None and not broadcast_read):
                self.unauthorized += 1
                return _Admission(unauthorized)
        replay_error = params.replay_error()
        if replay_error is not None:
            return _Admission(replay_error)
        return _Admission(exp=exp, claims=claims, policies=policies)

    async def _on_broadcast(self, chan: _Channel, msg: Message) -> None:
        payload = msg.payload
        if not isinstance(payload, dict):
            logger.info("connection %d: ignored a broadcast with a non-map payload on %s",
                        chan.conn.id, chan.topic[:100])
            return
        if self.events is not None:
            now = trio.current_time()
            if self.events.triggered(now):
                # Nothing is sent while the limit is triggered: the channels that would receive
                # this message are closed, and so is the sender's (§7.1).
                self._fanout(chan.key, Message(topic=chan.topic, event="broadcast", payload=payload),
                             exclude=chan, limited=True)
                self._rate_limit_shutdown(chan)
                return
            self.events.add(now)
        ack = chan.params.broadcast_ack
        if _payload_size(payload) > self.config.max_payload_bytes:
            logger.info("connection %d: dropped an oversized broadcast on %s", chan.conn.id, chan.topic[:100])
            if ack:
                self._reply(chan.conn, msg, chan.join_ref, "error", {"reason": "Payload size exceeded"})
            return
        exclude = None if chan.params.broadcast_self else chan
        if not chan.params.private:
            out = Message(topic=chan.topic, event="broadcast", payload=payload,
                          user_broadcast=msg.user_broadcast)
            self._fanout(chan.key, out, exclude=exclude, count_events=True)
            if ack:
                self._reply(chan.conn, msg, chan.join_ref, "ok", {})
            return
        if not self._allowed(chan, "broadcast", "write"):
            # Dropped without a reply, even with ack: the client's push times out (§4.3).
            self.unauthorized += 1
            logger.info("connection %d: dropped a broadcast on %s: no broadcast write permission",
                        chan.conn.id, chan.topic[:100])
            return
        stored = StoredMessage(id=self._new_message_id(), key=chan.key, inserted_at=self._inserted_at(),
                               payload=payload, user_broadcast=msg.user_broadcast)
        reason = await self._store(stored)
        if reason is not None:
            if ack:
                self._reply(chan.conn, msg, chan.join_ref, "error", {"reason": reason})
            return
        out = Message(topic=chan.topic, event="broadcast", payload=stored.with_meta(replayed=False),
                      user_broadcast=msg.user_broadcast)
        self._fanout(chan.key, out, exclude=exclude, message_id=stored.id, count_events=True)
        if ack:
            self._reply(chan.conn, msg, chan.join_ref, "ok", {})

    def _new_message_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _inserted_at(self) -> int:
        """Now in Unix ms, never before the previous message's (replay relies on the order)."""
        self.last_inserted_at = max(self.last_inserted_at, int(time.time() * 1000))
        return self.last_inserted_at

    async def _store(self, stored: StoredMessage) -> str | None:
        """Store a broadcast before it is fanned out; None, or why it was refused."""
        try:
            stored.storage_json()  # what cannot be stored as JSON is refused in memory too
            if self.pg_store is None:
                self.memory_store.add(stored)
            else:
                await self.pg_store.add(stored)
        except ValueError as exc:
            logger.info("dropped a broadcast on %r: %s", stored.key[1][:100], exc)
            return "InvalidPayload: the broadcast payload cannot be stored as JSON"
        except StoreUnavailable as exc:
            logger.error("dropped a broadcast on %r: %s", stored.key[1][:100], exc)
            return "UnableToHandleBroadcast: Realtime was unable to store the message"
        return None

    def _on_presence(self, chan: _Channel, msg: Message) -> None:
        if not chan.presence_calls.hit(trio.current_time()):
            self._shutdown(chan, "Client presence rate limit exceeded")
            return
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        event = payload.get("event")
        if event is None:
            self._reply(chan.conn, msg, chan.join_ref, "ok", {})
            return
        event = event.lower() if isinstance(event, str) else None
        if event == "track":
            meta = payload.get("payload", {})
            if not isinstance(meta, dict):
                self._reply(chan.conn, msg, chan.join_ref, "error",
                            {"reason": "Presence track payload must be a map"})
                return
            if _payload_size(meta) > self.config.max_payload_bytes:
                self._shutdown(chan, "Track message size exceeded")
                return
            if not self._allowed(chan, "presence", "write"):
                self.unauthorized += 1
                self._reply(chan.conn, msg, chan.join_ref, "error", {})  # nothing tracked (§5.2)
                return
            chan.presence_enabled = True  # auto-enabled, without a presence_state push (§5.1)
            diff = self.presence.setdefault(chan.key, PresenceTopic()).track(
                chan, chan.presence_key, meta, self.new_ref
            )
            self._reply(chan.conn, msg, chan.join_ref, "ok", {})
            self._fanout_presence(chan.key, chan.topic, diff)
        elif event == "untrack":
            presence = self.presence.get(chan.key)
            diff = presence.untrack(chan) if presence is not None else None
            if presence is not None and not presence:
                del self.presence[chan.key]
            self._reply(chan.conn, msg, chan.join_ref, "ok", {})
            self._fanout_presence(chan.key, chan.topic, diff)
        else:
            self._reply(chan.conn, msg, chan.join_ref, "error", {})

    def _on_socket_token(self, conn: _Connection, msg: Message) -> None:
        """seed-002's ``auth``: the socket's token for later joins, and each channel's now."""
        token = msg.payload.get("access_token") if isinstance(msg.payload, dict) else None
        if not isinstance(token, str):
            return
        if self.verifier is None or not isinstance(self.verifier.verify(token, time.time()), TokenRejected):
            conn.token = token
        for chan in list(conn.channels.values()):
            self._on_access_token(chan, msg)

    def _on_access_token(self, chan: _Channel, msg: Message) -> None:
        # Never replied to (§3.8).
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        token = payload.get("access_token")
        if not isinstance(token, str) or token.startswith("sb_") or token == chan.token:
            return
        if self.verifier is None:
            chan.token = token
        else:
            result = self.verifier.verify(token, time.time())
            if isinstance(result, TokenRejected):
                self._shutdown(chan, result.system_message)
                return
            if chan.params.private and self._read_revoked(chan, result.claims):
                self.unauthorized += 1
                self._shutdown(chan, f"You no longer have permission to read from this Channel topic: "
                                     f"{chan.sub_topic}")
                return
            chan.token = token
            chan.token_exp = result.exp
            chan.claims = result.claims
            chan.conn.expiry_changed.set()
        if self.feed is not None and self.feed.is_subscribed(chan):
            # The official server resubscribes with the new claims and says so again (§3.8).
            self._push_pg_system(chan, None)

    def _read_revoked(self, chan: _Channel, claims: Mapping[str, Any]) -> bool:
        """Re-run a private channel's read authorization with refreshed ``claims`` (§3.8).

        True if a read permission the channel had is gone. Otherwise the channel's cached
        decisions are replaced: reads by the new ones, writes asked again when next needed.
        """
        previous = chan.policies
        policies = ChannelPolicies()
        for extension in ("broadcast", "presence"):
            if extension == "broadcast" or previous.presence_read is not None or chan.presence_enabled:
                allowed = decide(self.authorize, claims, chan.sub_topic, extension, "read")
                if previous.get(extension, "read") and not allowed:
                    return True
                policies.set(extension, "read", allowed)
        chan.policies = policies
        return False


@final
class RealtimeServer(metaclass=_NoPublicConstructor):
    """A running reference server, as handed out by :func:`serve_realtime`.

    Attributes:
        host: the host it was asked to bind.
        port: the bound port (the real one when 0 was asked for).
    """

    def __init__(self, hub: _Hub, host: str, port: int) -> None:
        self._hub = hub
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return f"<RealtimeServer {self.url}>"

    @property
    def url(self) -> str:
        """The Realtime endpoint, e.g. ``ws://127.0.0.1:4000/realtime/v1``.

        Clients append ``/websocket`` (and the query string) to it, as supabase-js does.
        """
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/realtime/v1"

    @property
    def seed002_url(self) -> str:
        """The endpoint for seed-002 clients, e.g. ``ws://127.0.0.1:4000/seed002``."""
        return self.url.removesuffix("/realtime/v1") + SEED002_PATH

    def websocket_url(self, vsn: str = "1.0.0") -> str:
        """The full WebSocket URL for serializer ``vsn`` (add ``&apikey=...`` yourself)."""
        return f"{self.url}/websocket?vsn={vsn}"

    def statistics(self) -> ServerStatistics:
        """A snapshot of the server's counters."""
        return self._hub.statistics()

    async def disconnect_all(self, code: int = 1012) -> None:
        """Disconnect every client, as the official server does on a config change.

        Each joined channel gets a ``system`` message "Server requested disconnect", then each
        socket is closed with ``code`` (1012, service restart, by default) after its queued
        frames. Returns when every socket is closed (each bounded by
        ``ServerConfig.close_timeout``). Clients reconnect on their own.

        This is a checkpoint.
        """
        await self._hub.disconnect_all(code)


def _listener_port(listener: trio.SocketListener) -> int:
    port: int = listener.socket.getsockname()[1]
    return port


def _same_port(listeners: list[trio.SocketListener]) -> Iterator[trio.SocketListener]:
    first = _listener_port(listeners[0])
    for listener in listeners:
        if _listener_port(listener) == first:
            yield listener


async def serve_realtime(
    host: str,
    port: int,
    *,
    jwt_secret: str | None = None,
    config: ServerConfig | None = None,
    database_url: str | None = None,
    authorize: Authorizer | None = None,
    task_status: trio.TaskStatus[RealtimeServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a Supabase Realtime-compatible server until cancelled.

    It speaks vsn 1.0.0 and 2.0.0 on ``/socket/websocket`` and ``/realtime/v1/websocket``:
    heartbeats, channel joins, broadcast (with ``self``/``ack``, JSON and binary), presence,
    access token refreshes and the official error replies, and postgres_changes when given a
    database. It also speaks the seed app's own protocol (seed-002: the token as the
    subprotocols ``["jwt", token]``, JSON ``{"type": ...}`` frames) on ``/seed002``
    (:attr:`RealtimeServer.seed002_url`) and on any path offering the ``jwt`` subprotocol;
    its channels are shared with Phoenix clients (seed-002 channel ``C`` is ``realtime:C``).

    **postgres_changes** need ``database_url``: a PostgreSQL with ``wal_level=logical`` and
    the wal2json plugin, and a user allowed to create replication slots (e.g. the DSN of
    :func:`trio_realtime.server.open_embedded_postgres`). The server then streams every
    INSERT/UPDATE/DELETE committed after a channel's join reply to the channel's matching
    bindings (event, schema, table, filter). Without a database, joins with bindings still
    succeed (ids echoed) and get a ``system`` error saying there is no database.

    **Private channels** (``config.private: true``) are authorized by ``authorize``, a
    function of an :class:`AuthorizationRequest` (claims, sub-topic, ``broadcast`` or
    ``presence``, ``read`` or ``write``) returning True to allow; see
    :func:`default_authorize` for the default. Every broadcast they accept is stored (in the
    database's ``realtime_messages`` table with ``database_url``, else in memory) and carries
    ``meta.id``; joins may ask for a **replay** of the stored ones with
    ``config.broadcast.replay``, and the join reply then says whether that replay is complete
    (``"replay": {"count": n, "complete": bool}``, an extension official clients ignore).

    Use with the Trio start protocol::

        server = await nursery.start(serve_realtime, "127.0.0.1", 0)
        url = server.websocket_url("2.0.0")

    Args:
        host: the address to bind, e.g. ``"127.0.0.1"``.
        port: the port; 0 picks a free one (see :attr:`RealtimeServer.port`).
        jwt_secret: the HMAC secret API keys and access tokens must be signed with (HS256,
            HS384, HS512), carrying ``role`` and ``exp``. None is **development mode**: any
            API key is accepted and tokens are never checked.
        config: limits and timings; ``ServerConfig()`` by default.
        database_url: a libpq URL or connection string of the database whose changes are
            streamed, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``. Passwords in it
            are never logged.
        authorize: the private-channel policy; None uses :func:`default_authorize`
            (development mode: allow all; with ``jwt_secret``: allow the roles
            ``authenticated`` and ``service_role``, deny the others, ``anon`` included). It is
            called from the server's tasks and must not block; an exception counts as a denial.
        task_status: the Trio start protocol; receives the :class:`RealtimeServer`.

    Raises:
        OSError: the address cannot be bound.
        DatabaseUnavailable: ``database_url`` cannot be reached, is not set up for logical
            decoding with wal2json, or the ``realtime_messages`` tables cannot be created
            (raised before ``task_status.started``).
    """
    config = config if config is not None else ServerConfig()
    if jwt_secret is None:
        logger.warning("DEVELOPMENT MODE: no JWT secret; the server accepts ANY API key and "
                       "checks no access token. Pass a JWT secret for anything but local testing.")
    elif len(jwt_secret.encode("utf-8")) < 32:
        logger.warning("the JWT secret is shorter than 32 bytes; HMAC-SHA256 wants at least 32")
    hub = _Hub(config, jwt_secret, authorize)
    async with contextlib.AsyncExitStack() as stack:
        if database_url is not None:
            hub.feed = await stack.enter_async_context(open_change_feed(
                database_url, hub.deliver_changes, on_lost=hub.pg_lost, backpressure=hub.pg_backpressure,
                poll_interval=config.postgres_poll_interval, batch_size=config.postgres_batch_size,
                max_record_bytes=config.postgres_max_record_bytes,
            ))
            hub.pg_store = await stack.enter_async_context(
                open_postgres_store(database_url, per_topic=config.replay_database_per_topic)
            )
        await _serve(hub, host, port, task_status)


async def _serve(hub: _Hub, host: str, port: int, task_status: trio.TaskStatus[RealtimeServer]) -> None:
    config = hub.config
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        # Port 0 on a name with several addresses binds each on a different port; keep one.
        keep = list(_same_port(listeners))
        for listener in listeners:
            if listener not in keep:
                await listener.aclose()
        listeners = keep
    ws_server = WebSocketServer(
        hub.handle,
        listeners,
        max_message_size=config.max_frame_size,
        connect_timeout=_HANDSHAKE_TIMEOUT,
        disconnect_timeout=config.close_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(ws_server.run)
        server = RealtimeServer._create(hub, host, _listener_port(listeners[0]))
        logger.info("listening on %s (vsn %s)", server.url, " and ".join(SUPPORTED_VSNS))
        task_status.started(server)
