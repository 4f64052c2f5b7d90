"""A scripted, in-memory Phoenix/Realtime server for testing code that uses trio_realtime.

Theory of operation
-------------------
:class:`ScriptedServer` plugs into ``open_realtime``'s ``transport_factory`` seam. Each call of
:meth:`ScriptedServer.transport_factory` is one connection attempt: it is recorded, possibly
refused (:meth:`ScriptedServer.refuse_connections`), and otherwise answered with the client end
of a :func:`~trio_realtime.testing.memory_transport_pair`. The server end is handed over a
rendezvous channel to :meth:`ScriptedServer.serve`, which runs one handler task per connection
in its own nursery (the way ``trio.serve_listeners`` runs one task per accepted stream), so
no task ever outlives the server's block.

A handler decodes each frame with the real sans-IO serializer for the server side
(``serializer_for(vsn, "server")``), records it with ``trio.current_time()``, and answers the
way the official server does (PROTOCOL.md §1.4, §3.4, §3.6, §4.3, §5): heartbeats, joins (with
``presence_state`` after the reply when presence is enabled), leaves (reply, then
``phx_close``), broadcast acks and fan-out (``self`` honoured), presence track/untrack with
``presence_diff`` fan-out. A reply that must wait (``hold_replies``, ``join_reply_delay``)
waits in a task of that connection's own nursery, so the handler keeps reading and heartbeats
are still answered.

Everything it does is deterministic: no randomness, presence refs and keys come from counters,
and all times are the Trio clock's, so under the ``autojump_clock`` the recorded times are
exact.
"""

from __future__ import annotations

import json
import math
import zlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, NoReturn, final
from urllib.parse import parse_qs, urlsplit

import attrs
import trio

from .._errors import ConnectionLost, HandshakeFailed, RemoteProtocolError
from ..protocol import Message, Serializer, serializer_for, topic_for
from ._memory import MemoryTransport, memory_transport_pair

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["RecordedFrame", "ScriptedServer", "open_scripted_server"]

_ReplyStatus = Literal["ok", "error"]


@attrs.frozen(kw_only=True)
class RecordedFrame:
    """One message the :class:`ScriptedServer` received from a client.

    Attributes:
        time: ``trio.current_time()`` when it arrived.
        connection: the index of the connection it came on (0 for the first accepted one).
        message: the decoded message. Binary broadcast pushes (vsn 2.0.0) appear as
            ``event="broadcast"`` with ``user_broadcast=True``.
    """

    time: float
    connection: int
    message: Message


@attrs.define(eq=False)
class _Join:
    """The server side of one joined channel on one connection."""

    topic: str
    join_ref: str | None
    config: dict[str, Any]
    presence_key: str
    access_token: str | None
    #: The meta this join tracks (None: not tracking) and its phx_ref.
    meta: dict[str, Any] | None = None
    phx_ref: str | None = None

    @property
    def ack(self) -> bool:
        broadcast = self.config.get("broadcast")
        return isinstance(broadcast, dict) and bool(broadcast.get("ack"))

    @property
    def receive_own(self) -> bool:
        broadcast = self.config.get("broadcast")
        return isinstance(broadcast, dict) and bool(broadcast.get("self"))

    @property
    def presence_enabled(self) -> bool:
        presence = self.config.get("presence")
        return isinstance(presence, dict) and bool(presence.get("enabled"))


@attrs.define(eq=False)
class _PendingJoin:
    """A join whose reply has not been sent yet (held or delayed)."""

    message: Message
    abandoned: bool = False


@attrs.define(eq=False)
class _Connection:
    index: int
    transport: MemoryTransport
    joins: dict[str, _Join] = attrs.field(factory=dict)
    pending_joins: dict[str, _PendingJoin] = attrs.field(factory=dict)
    open: bool = True

    async def send(self, serializer: Serializer, message: Message) -> None:
        """Send ``message``; a connection that is gone is not an error (the client left)."""
        if not self.open:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self.transport.send_message(serializer.encode(message))
        except ConnectionLost:
            self.open = False


@final
class ScriptedServer:
    """A small in-memory Realtime server for tests, driven through ``transport_factory``.

    It answers what the official server answers (heartbeats, joins, leaves, broadcast acks and
    fan-out, presence), records what it received with virtual-clock timestamps, and has knobs
    to make things go wrong on cue: refused connections, unanswered heartbeats (a half-open
    link), rejected, held or slow joins, held leaves, error replies to pushes, dropped
    connections and server-closed channels. Several clients may connect to one server; they see
    each other's broadcasts and presence.

    It must be running to accept connections: use :func:`open_scripted_server`, or start
    :meth:`serve` in a nursery of your own.

    Example::

        from trio_realtime import BackoffPolicy, ChannelErrored, RealtimeConfig, Rejoined, open_realtime
        from trio_realtime.testing import open_scripted_server

        async def test_rejoins_after_a_drop(autojump_clock):
            config = RealtimeConfig(reconnect_backoff=BackoffPolicy(base=1, jitter=False))
            async with (
                open_scripted_server() as server,
                open_realtime("ws://test/realtime/v1", config=config,
                              transport_factory=server.transport_factory) as client,
                client.channel("room") as sub,
            ):
                server.drop_connection()
                assert isinstance(await sub.receive(), ChannelErrored)
                assert isinstance(await sub.receive(), Rejoined)
                assert server.connect_times == [0, 1]    # reconnected after 1 s
                assert [t for _, t in server.join_times] == [0, 1]

    Args:
        vsn: the protocol version this server speaks, "2.0.0" (default) or "1.0.0". A client
            asking for another version in its URL is refused with HTTP 403, as Phoenix refuses
            a version it does not speak.

    Attributes:
        vsn: the protocol version.
        connect_times: the time of every connection attempt, refused ones included.
        refused_times: the time of every refused attempt.
        disconnect_times: when each connection ended, in the order they ended.
        connect_urls: the URL of every connection attempt (they carry the API key: test data).
        join_times: ``(topic, time)`` of every ``phx_join`` received.
        heartbeat_times: the time of every heartbeat received.
        frames: every message received, as :class:`RecordedFrame`, in order.
        protocol_errors: frames the server could not decode (the connection was then closed
            with code 1007, as a real server would).
        answer_heartbeats: set to False to stop answering heartbeats (the client then sees a
            half-open link and declares the connection dead).
        join_reply_delay: seconds to wait before answering each join (the official server waits
            5 s before every join error).
    """

    def __init__(self, vsn: str = "2.0.0") -> None:
        self._serializer = serializer_for(vsn, "server")
        self.vsn: str = self._serializer.vsn
        self.connect_times: list[float] = []
        self.refused_times: list[float] = []
        self.disconnect_times: list[float] = []
        self.connect_urls: list[str] = []
        self.join_times: list[tuple[str, float]] = []
        self.heartbeat_times: list[float] = []
        self.frames: list[RecordedFrame] = []
        self.protocol_errors: list[RemoteProtocolError] = []
        self.answer_heartbeats: bool = True
        self.join_reply_delay: float = 0.0
        self._refusals: int | float = 0
        self._refusal: tuple[int, str] = (503, "")
        self._rejections: dict[str, tuple[str, int | float]] = {}
        self._reply_overrides: dict[str, tuple[_ReplyStatus | None, Any]] = {}
        self._holding: dict[str, trio.Event] = {}
        self._connections: list[_Connection] = []
        self._incoming: trio.MemorySendChannel[_Connection] | None = None
        self._changed = trio.Event()
        self._counter = 0

    def __repr__(self) -> str:
        live = sum(c.open for c in self._connections)
        return (
            f"<ScriptedServer vsn={self.vsn} {len(self._connections)} connections ({live} open), "
            f"{len(self.frames)} frames received>"
        )

    # -- running --------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Accept connections and run one handler task per connection, until cancelled.

        Use it with ``await nursery.start(server.serve)``; :func:`open_scripted_server` does
        this for you. When it is cancelled, every connection it accepted is dropped with it,
        and later connection attempts raise :class:`HandshakeFailed`. A server is served once.

        Raises:
            RuntimeError: the server is being served, or was served before.
        """
        if self._incoming is not None:
            raise RuntimeError("a ScriptedServer can be served only once")
        send, receive = trio.open_memory_channel[_Connection](0)
        self._incoming = send
        try:
            async with trio.open_nursery() as nursery, receive:
                task_status.started()
                async for conn in receive:
                    nursery.start_soon(self._handle, conn)
        finally:
            send.close()
        raise AssertionError("unreachable: the incoming channel is never closed while serving")

    async def transport_factory(self, url: str) -> MemoryTransport:
        """Open a connection to this server: pass it as ``open_realtime(transport_factory=...)``.

        Records the attempt in :attr:`connect_times`, then either refuses it (see
        :meth:`refuse_connections`) or returns the client end of a new in-memory connection.
        A checkpoint.

        Raises:
            HandshakeFailed: the attempt was refused, the URL asked for another protocol
                version, or the server is not running.
        """
        self.connect_times.append(trio.current_time())
        self.connect_urls.append(url)
        await trio.lowlevel.checkpoint()
        incoming = self._incoming
        if incoming is None:
            raise HandshakeFailed(
                "the ScriptedServer is not running: use `async with open_scripted_server()` "
                "or `await nursery.start(server.serve)`"
            )
        vsn = parse_qs(urlsplit(url).query).get("vsn", ["1.0.0"])[-1]
        if vsn.split(".")[0] != self.vsn.split(".")[0]:
            self.refused_times.append(trio.current_time())
            raise HandshakeFailed(
                f"server refused the WebSocket upgrade with HTTP 403: this ScriptedServer speaks "
                f"vsn {self.vsn}, the client asked for {vsn!r}",
                status=403,
                body="",
            )
        if self._refusals > 0:
            self._refusals -= 1
            self.refused_times.append(trio.current_time())
            status, body = self._refusal
            shown = f": {body}" if body else " (empty body)"
            raise HandshakeFailed(
                f"server refused the WebSocket upgrade with HTTP {status}{shown}", status=status, body=body
            )
        client_end, server_end = memory_transport_pair()
        conn = _Connection(index=len(self._connections), transport=server_end)
        self._connections.append(conn)
        try:
            await incoming.send(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.open = False
            raise HandshakeFailed("the ScriptedServer has stopped serving") from None
        self._notify()
        return client_end

    # -- knobs ---------------------------------------------------------------------------------

    def refuse_connections(self, n: int | None = 1, *, status: int = 503, body: str = "") -> None:
        """Refuse the next ``n`` connection attempts (all of them if ``n`` is None).

        Each refused attempt makes the factory raise :class:`HandshakeFailed` with ``status``
        and ``body``, as a refused WebSocket upgrade does. ``refuse_connections(0)`` accepts
        again.
        """
        self._refusals = math.inf if n is None else n
        self._refusal = (status, body)

    def reject_join(self, topic: str, reason: str, *, times: int | None = None) -> None:
        """Answer joins of ``topic`` with ``{"status": "error", "response": {"reason": reason}}``.

        Args:
            topic: the channel name ("room1") or wire topic ("realtime:room1").
            reason: the reason string, e.g. ``"Unauthorized: You do not have permissions"``.
            times: reject only this many joins, then accept again (None: until
                :meth:`accept_joins`).
        """
        self._rejections[topic_for(topic)] = (reason, math.inf if times is None else times)

    def accept_joins(self, topic: str) -> None:
        """Undo :meth:`reject_join` for ``topic``."""
        self._rejections.pop(topic_for(topic), None)

    def hold_replies(self, event: str) -> None:
        """Do not answer pushes of ``event`` until :meth:`release_replies`.

        Holding ``"phx_join"`` makes joins hang (to test ``JoinTimedOut`` or a join cancelled
        half-way); holding ``"phx_leave"`` makes a subscription's exit wait for its
        ``leave_timeout``; holding ``"broadcast"`` or ``"presence"`` delays acknowledgements.
        Everything else, heartbeats included, is still answered. A held join that the client
        gives up on (it leaves, or the connection drops) is never answered; a held leave
        leaves the channel at once, only its reply waits.
        """
        if event not in self._holding:
            self._holding[event] = trio.Event()

    def release_replies(self, event: str) -> None:
        """Send every reply held by :meth:`hold_replies` for ``event``; stop holding new ones."""
        released = self._holding.pop(event, None)
        if released is not None:
            released.set()

    def reply_to(self, event: str, status: _ReplyStatus | None, response: Any = None) -> None:
        """Change how pushes of ``event`` ("broadcast", "presence", ...) are answered.

        Args:
            event: the pushed event name.
            status: "ok", "error", or None to stay silent (the client's push then times out).
                A broadcast answered with "error" is not delivered to anyone, as the official
                server drops a broadcast it refuses.
            response: the reply's ``response`` (default ``{}``).
        """
        self._reply_overrides[event] = (status, {} if response is None else response)

    def reset_replies(self) -> None:
        """Undo every :meth:`reply_to`."""
        self._reply_overrides.clear()

    # -- acting --------------------------------------------------------------------------------

    def drop_connection(
        self, index: int | None = None, *, reason: str = "connection lost (dropped by the ScriptedServer)"
    ) -> None:
        """Abort connections abruptly, as a network failure would.

        Messages in flight are lost; the client's next receive or send raises
        :class:`ConnectionLost` with ``reason``.

        Args:
            index: the connection to drop (see :attr:`RecordedFrame.connection`); None drops
                every open connection.
        """
        for conn in self._select(index):
            conn.open = False
            conn.transport.abort(reason)

    async def close_connection(self, code: int = 1000, reason: str = "", *, index: int | None = None) -> None:
        """Close connections gracefully with a WebSocket close ``code`` and ``reason``.

        The client receives what was sent before, then loses the connection (e.g. code 1012
        is what the official server sends on "Server requested disconnect"). A checkpoint.
        """
        for conn in self._select(index):
            conn.open = False
            await conn.transport.aclose(code, reason)
        await trio.lowlevel.checkpoint()

    async def push(self, topic: str, event: str, payload: Any) -> None:
        """Send a server push ``event`` with ``payload`` to every connection joined to ``topic``.

        This is how fan-out messages look on the wire (no ``join_ref``), e.g.
        ``push("room", "postgres_changes", {...})``. A checkpoint.
        """
        wire_topic = topic_for(topic)
        for conn, _ in self._joined(wire_topic):
            await conn.send(self._serializer, Message(topic=wire_topic, event=event, payload=payload))
        await trio.lowlevel.checkpoint()

    async def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Broadcast ``payload`` as ``event`` to every connection joined to ``topic``.

        On vsn 2.0.0 it goes out as a binary user broadcast (``payload`` may be ``bytes``), as
        the official server relays realtime-js broadcasts. A checkpoint.
        """
        wire_topic = topic_for(topic)
        message = Message(
            topic=wire_topic,
            event="broadcast",
            payload={"type": "broadcast", "event": event, "payload": payload},
            user_broadcast=self.vsn != "1.0.0",
        )
        for conn, _ in self._joined(wire_topic):
            await conn.send(self._serializer, message)
        await trio.lowlevel.checkpoint()

    async def close_channel(
        self, topic: str, system_message: str | None = "Token has expired 0 seconds ago"
    ) -> None:
        """Close ``topic`` on every connection joined to it, as the official server shuts a channel.

        Sends a ``system`` error carrying ``system_message`` (skipped if it is None), then
        ``phx_close`` for the current join; the channel is no longer joined on the server. A
        checkpoint.
        """
        wire_topic = topic_for(topic)
        for conn, join in self._joined(wire_topic):
            del conn.joins[wire_topic]
            if system_message is not None:
                await conn.send(
                    self._serializer,
                    Message(
                        join_ref=join.join_ref,
                        topic=wire_topic,
                        event="system",
                        payload={
                            "extension": "system",
                            "status": "error",
                            "message": system_message,
                            "channel": wire_topic.removeprefix("realtime:"),
                        },
                    ),
                )
            await self._send_close(conn, join)
            await self._presence_left(join)
        await trio.lowlevel.checkpoint()

    async def error_channel(self, topic: str) -> None:
        """Send ``phx_error`` for ``topic`` to every connection joined to it (the channel crashed).

        The channel is no longer joined on the server; clients rejoin it. A checkpoint.
        """
        wire_topic = topic_for(topic)
        for conn, join in self._joined(wire_topic):
            del conn.joins[wire_topic]
            await conn.send(
                self._serializer,
                Message(join_ref=join.join_ref, ref=join.join_ref, topic=wire_topic, event="phx_error"),
            )
            await self._presence_left(join)
        await trio.lowlevel.checkpoint()

    async def send(self, message: Message, *, index: int | None = None) -> None:
        """Send ``message`` as it is, to one connection (default: the latest open one).

        For frames the other helpers do not make, e.g. a ``phx_close`` with a stale
        ``join_ref``. A checkpoint.

        Raises:
            LookupError: there is no such open connection.
        """
        conns = self._select(index) if index is not None else self._select(None)[-1:]
        if not conns:
            raise LookupError("the ScriptedServer has no open connection to send to")
        await conns[0].send(self._serializer, message)

    # -- inspecting ---------------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """How many connections are open right now."""
        return sum(conn.open for conn in self._connections)

    def joined_topics(self, index: int | None = None) -> set[str]:
        """Topics currently joined on connection ``index`` (default: on any open connection)."""
        return {topic for conn in self._select(index) for topic in conn.joins}

    def join_ref(self, topic: str, index: int | None = None) -> str | None:
        """The join_ref of ``topic``'s current join on connection ``index`` (default: latest)."""
        wire_topic = topic_for(topic)
        for conn in reversed(self._select(index)):
            join = conn.joins.get(wire_topic)
            if join is not None:
                return join.join_ref
        return None

    def messages(self, event: str | None = None, *, topic: str | None = None) -> list[Message]:
        """The messages received so far, optionally only those with ``event`` on ``topic``."""
        return [frame.message for frame in self._matching(event, topic)]

    async def wait_frame(
        self, event: str | None = None, *, topic: str | None = None, count: int = 1
    ) -> RecordedFrame:
        """Wait until ``count`` frames matching ``event``/``topic`` were received; return the last.

        Frames received before the call count, so there is no race with the client. A
        checkpoint.
        """
        while True:
            matching = self._matching(event, topic)
            if len(matching) >= count:
                await trio.lowlevel.checkpoint()
                return matching[count - 1]
            await self._changed.wait()

    # -- internals --------------------------------------------------------------------------------

    def _matching(self, event: str | None, topic: str | None) -> list[RecordedFrame]:
        wire_topic = None if topic is None or topic == "phoenix" else topic_for(topic)
        if topic == "phoenix":
            wire_topic = "phoenix"
        return [
            frame
            for frame in self.frames
            if (event is None or frame.message.event == event)
            and (wire_topic is None or frame.message.topic == wire_topic)
        ]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _select(self, index: int | None) -> list[_Connection]:
        if index is None:
            return [conn for conn in self._connections if conn.open]
        if not 0 <= index < len(self._connections):
            raise LookupError(f"no connection {index}; {len(self._connections)} were accepted")
        conn = self._connections[index]
        return [conn] if conn.open else []

    def _joined(self, topic: str) -> list[tuple[_Connection, _Join]]:
        return [(conn, conn.joins[topic]) for conn in self._connections if conn.open and topic in conn.joins]

    def _next(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    async def _wait_released(self, event: str) -> None:
        while (held := self._holding.get(event)) is not None:
            await held.wait()

    async def _handle(self, conn: _Connection) -> None:
        """Serve one connection until it ends."""
        lost = False
        try:
            async with trio.open_nursery() as nursery:
                try:
                    while True:
                        batch = await conn.transport.receive_messages()
                        for data in batch:
                            if not await self._on_frame(conn, data, nursery):
                                await conn.transport.aclose(1007, "invalid frame")
                                raise ConnectionLost("closed after an invalid frame")
                except ConnectionLost:
                    lost = True
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            conn.open = False
            self.disconnect_times.append(trio.current_time())
            joins = list(conn.joins.values())
            conn.joins.clear()
            for pending in conn.pending_joins.values():
                pending.abandoned = True
            self._notify()
        if lost:
            for join in joins:
                await self._presence_left(join)

    async def _on_frame(self, conn: _Connection, data: str | bytes, nursery: trio.Nursery) -> bool:
        now = trio.current_time()
        try:
            msg = self._serializer.decode(data)
        except RemoteProtocolError as exc:
            self.protocol_errors.append(exc)
            return False
        self.frames.append(RecordedFrame(time=now, connection=conn.index, message=msg))
        self._notify()
        if msg.topic == "phoenix":
            if msg.event == "heartbeat":
                self.heartbeat_times.append(now)
                if self.answer_heartbeats:
                    await self._reply(conn, msg, "ok", {})
            return True
        event = msg.event
        if event == "phx_join":
            await self._on_join(conn, msg, nursery)
        elif event == "phx_leave":
            await self._on_leave(conn, msg, nursery)
        else:
            join = conn.joins.get(msg.topic)
            if join is None:
                await self._reply(conn, msg, "error", {"reason": "unmatched topic"})
            elif event == "broadcast":
                await self._on_broadcast(conn, join, msg, nursery)
            elif event == "presence":
                await self._on_presence(conn, join, msg, nursery)
            elif event == "access_token":
                token = msg.payload.get("access_token") if isinstance(msg.payload, dict) else None
                if isinstance(token, str):
                    join.access_token = token
                # The official server never replies to access_token.
            else:
                override = self._reply_overrides.get(event)
                if override is not None and override[0] is not None:
                    await self._answer(conn, msg, override[0], override[1], nursery)
        return True

    async def _answer(
        self, conn: _Connection, msg: Message, status: str, response: Any, nursery: trio.Nursery
    ) -> None:
        """Reply to ``msg`` now, or later in a task if replies to its event are held."""
        if msg.event in self._holding:
            nursery.start_soon(self._held_reply, conn, msg, status, response)
        else:
            await self._reply(conn, msg, status, response)

    async def _held_reply(self, conn: _Connection, msg: Message, status: str, response: Any) -> None:
        await self._wait_released(msg.event)
        await self._reply(conn, msg, status, response)

    async def _reply(self, conn: _Connection, msg: Message, status: str, response: Any) -> None:
        if msg.ref is None:
            return
        await conn.send(
            self._serializer,
            Message(
                join_ref=msg.join_ref,
                ref=msg.ref,
                topic=msg.topic,
                event="phx_reply",
                payload={"status": status, "response": response},
            ),
        )

    async def _send_close(self, conn: _Connection, join: _Join) -> None:
        await conn.send(
            self._serializer,
            Message(join_ref=join.join_ref, ref=join.join_ref, topic=join.topic, event="phx_close"),
        )

    # -- joins and leaves ----------------------------------------------------------------------------

    async def _on_join(self, conn: _Connection, msg: Message, nursery: trio.Nursery) -> None:
        self.join_times.append((msg.topic, trio.current_time()))
        rejection: str | None = None
        rule = self._rejections.get(msg.topic)
        if rule is not None:
            rejection, remaining = rule
            if remaining <= 1:
                del self._rejections[msg.topic]
            else:
                self._rejections[msg.topic] = (rejection, remaining - 1)
        pending = _PendingJoin(message=msg)
        previous = conn.pending_joins.get(msg.topic)
        if previous is not None:
            previous.abandoned = True
        conn.pending_joins[msg.topic] = pending
        if self.join_reply_delay > 0 or "phx_join" in self._holding:
            nursery.start_soon(self._finish_join, conn, pending, rejection, self.join_reply_delay)
        else:
            await self._finish_join(conn, pending, rejection, 0.0)

    async def _finish_join(
        self, conn: _Connection, pending: _PendingJoin, rejection: str | None, delay: float
    ) -> None:
        if delay > 0:
            await trio.sleep(delay)
        await self._wait_released("phx_join")
        if pending.abandoned or not conn.open:
            return
        msg = pending.message
        if conn.pending_joins.get(msg.topic) is pending:
            del conn.pending_joins[msg.topic]
        if rejection is not None:
            await self._reply(conn, msg, "error", {"reason": rejection})
            return
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        config = payload.get("config")
        config = config if isinstance(config, dict) else {}
        presence = config.get("presence")
        key = presence.get("key") if isinstance(presence, dict) else None
        token = payload.get("access_token")
        join = _Join(
            topic=msg.topic,
            join_ref=msg.join_ref if msg.join_ref is not None else msg.ref,
            config=config,
            presence_key=str(key) if key not in (None, "") else self._next("presence-key-"),
            access_token=token if isinstance(token, str) else None,
        )
        old = conn.joins.get(msg.topic)
        conn.joins[msg.topic] = join
        bindings = config.get("postgres_changes")
        changes = [
            {**binding, "id": _binding_id(binding)}
            for binding in (bindings if isinstance(bindings, list) else [])
            if isinstance(binding, dict)
        ]
        await self._reply(conn, msg, "ok", {"postgres_changes": changes})
        if old is not None:
            # A duplicate join: Phoenix shuts the old channel down after the new join's reply.
            await self._send_close(conn, old)
            await self._presence_left(old)
        if join.presence_enabled:
            await conn.send(
                self._serializer,
                Message(
                    join_ref=join.join_ref,
                    topic=join.topic,
                    event="presence_state",
                    payload=self._presence_state(join.topic),
                ),
            )

    async def _on_leave(self, conn: _Connection, msg: Message, nursery: trio.Nursery) -> None:
        pending = conn.pending_joins.pop(msg.topic, None)
        if pending is not None:
            pending.abandoned = True
        join = conn.joins.pop(msg.topic, None)
        if join is None and pending is None:
            await self._reply(conn, msg, "error", {"reason": "unmatched topic"})
            return
        if join is not None:
            await self._presence_left(join)
        if "phx_leave" in self._holding:
            nursery.start_soon(self._finish_leave, conn, msg, join)
        else:
            await self._finish_leave(conn, msg, join)

    async def _finish_leave(self, conn: _Connection, msg: Message, join: _Join | None) -> None:
        await self._wait_released("phx_leave")
        await self._reply(conn, msg, "ok", {})
        if join is not None:
            await self._send_close(conn, join)

    # -- broadcast ---------------------------------------------------------------------------------

    async def _on_broadcast(
        self, conn: _Connection, join: _Join, msg: Message, nursery: trio.Nursery
    ) -> None:
        status, response = self._reply_overrides.get("broadcast", ("ok", {}))
        if join.ack and status is not None:
            await self._answer(conn, msg, status, response, nursery)
        if status == "error":
            return
        payload = msg.payload
        if not isinstance(payload, dict):
            return
        if self.vsn == "1.0.0" or not msg.user_broadcast:
            out = Message(topic=msg.topic, event="broadcast", payload=payload)
        else:
            out = Message(topic=msg.topic, event="broadcast", payload=payload, user_broadcast=True)
        for other, other_join in self._joined(msg.topic):
            if other_join is join and not join.receive_own:
                continue
            await other.send(self._serializer, out)

    # -- presence ----------------------------------------------------------------------------------

    async def _on_presence(self, conn: _Connection, join: _Join, msg: Message, nursery: trio.Nursery) -> None:
        body = msg.payload if isinstance(msg.payload, dict) else {}
        kind = str(body.get("event", "")).lower()
        status, response = self._reply_overrides.get("presence", ("ok", {}))
        if status == "error" or status is None:
            if status is not None:
                await self._answer(conn, msg, status, response, nursery)
            return
        if kind == "track":
            meta = body.get("payload", {})
            if not isinstance(meta, dict):
                reason = {"reason": "Presence track payload must be a map"}
                await self._answer(conn, msg, "error", reason, nursery)
                return
            await self._answer(conn, msg, status, response, nursery)
            if meta == join.meta:
                return
            leaves = self._presence_entry(join) if join.meta is not None else {}
            previous_ref = join.phx_ref
            join.meta = dict(meta)
            join.phx_ref = self._next("phx-ref-")
            joins = self._presence_entry(join)
            if previous_ref is not None:
                joins[join.presence_key]["metas"][0]["phx_ref_prev"] = previous_ref
            await self._presence_diff(join.topic, joins, leaves)
        elif kind == "untrack":
            await self._answer(conn, msg, status, response, nursery)
            await self._presence_left(join)
        elif kind == "":
            await self._answer(conn, msg, status, response, nursery)
        else:
            await self._answer(conn, msg, "error", {}, nursery)

    def _presence_entry(self, join: _Join) -> dict[str, Any]:
        assert join.meta is not None
        return {join.presence_key: {"metas": [{**join.meta, "phx_ref": join.phx_ref}]}}

    def _presence_state(self, topic: str) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for _, join in self._joined(topic):
            if join.meta is not None:
                entry = self._presence_entry(join)[join.presence_key]
                state.setdefault(join.presence_key, {"metas": []})["metas"].extend(entry["metas"])
        return state

    async def _presence_left(self, join: _Join) -> None:
        """``join`` stopped tracking (untrack, leave, close, lost connection): tell the others."""
        if join.meta is None:
            await trio.lowlevel.checkpoint()
            return
        leaves = self._presence_entry(join)
        join.meta = None
        join.phx_ref = None
        await self._presence_diff(join.topic, {}, leaves)

    async def _presence_diff(self, topic: str, joins: dict[str, Any], leaves: dict[str, Any]) -> None:
        message = Message(topic=topic, event="presence_diff", payload={"joins": joins, "leaves": leaves})
        for conn, _ in self._joined(topic):
            await conn.send(self._serializer, message)


def _binding_id(binding: dict[str, Any]) -> int:
    """A deterministic integer id for a postgres_changes binding (the server uses phash2)."""
    return zlib.crc32(json.dumps(binding, sort_keys=True, default=str).encode("utf-8"))


@asynccontextmanager
async def open_scripted_server(vsn: str = "2.0.0") -> AsyncIterator[ScriptedServer]:
    """Run a :class:`ScriptedServer` for the duration of the block.

    The server owns a nursery that lives as long as the block; on exit every connection is
    dropped. Open it *before* the client, so the client's block exits first::

        async with (
            open_scripted_server() as server,
            open_realtime("ws://test/realtime/v1", transport_factory=server.transport_factory) as client,
        ):
            ...

    Args:
        vsn: the protocol version the server speaks ("2.0.0" or "1.0.0").
    """
    server = ScriptedServer(vsn)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
