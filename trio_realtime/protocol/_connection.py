"""The client side of a Phoenix/Realtime connection, without I/O.

Theory of operation
-------------------
:class:`ClientConnection` is a state machine fed by its driver:

* outgoing: ``join``/``leave``/``push``/``send_heartbeat`` return the frame to put on the wire
  (``str`` text or ``bytes`` binary) and update the state. Nothing is sent by this module.
* incoming: ``receive(frame, now)`` decodes one frame and returns the events it produced:
  subscription events (:data:`RealtimeEvent`, each carrying its ``topic``) and connection
  events (:class:`Reply`, :class:`HeartbeatAcked`, :class:`ChannelClosed`,
  :class:`Authenticated`). A malformed frame
  raises :class:`RemoteProtocolError` and changes nothing.
* time: the driver passes ``now``; ``heartbeat.deadline()`` says when to call
  ``heartbeat_due(now)`` next.
* ``connection_lost()`` moves every live channel to ERRORED (they must be rejoined on the next
  connection) and forgets every pending reply.

Refs come from a per-connection counter (decimal strings from "1"). Replies are matched by
ref. Stale messages (those carrying a ``join_ref`` of an earlier join of the channel, and
``phx_close``/``phx_error`` whose ref is not the current join ref) are dropped, as
phoenix.js does, so an old join's close can never end a new join.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from .._errors import LocalProtocolError, RemoteProtocolError
from ._channel_state import ChannelState, Trigger, transition
from ._events import (
    Authenticated,
    Broadcast,
    ChannelClosed,
    ChannelErrored,
    ConnectionEvent,
    HeartbeatAcked,
    PostgresChange,
    RealtimeEvent,
    Reply,
    ServerEvent,
    SystemMessage,
)
from ._heartbeat import HeartbeatTimer
from ._messages import Message, Serializer, serializer_for
from ._presence import PresenceTracker

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._join import PostgresChanges

__all__ = ["ChannelCore", "ClientConnection", "Event"]

Event = RealtimeEvent | ConnectionEvent

_S = ChannelState


@attrs.define(eq=False)
class ChannelCore:
    """Protocol state of one channel on one connection."""

    topic: str
    state: ChannelState = ChannelState.CLOSED
    join_ref: str | None = None
    #: The message of the last ``system`` error: the reason of the ``phx_close`` that follows.
    close_reason: str | None = None
    #: Created on first use: most channels never see presence.
    _presence: PresenceTracker | None = attrs.field(default=None, init=False)
    #: Set once the first join succeeded (later joins are rejoins).
    joined_once: bool = False
    #: The channel's postgres_changes bindings, in the order sent in the join.
    bindings: tuple[PostgresChanges, ...] = ()
    #: The server's id for each binding, from the last successful join reply.
    binding_ids: tuple[int | None, ...] = ()
    #: Refs of this channel's pushes still waiting for a reply (None: none yet; an empty set
    #: costs 216 bytes, and thousands of idle channels have none).
    pending: set[str] | None = None

    @property
    def presence(self) -> PresenceTracker:
        """The channel's presence state (Phoenix presence sync)."""
        if self._presence is None:
            self._presence = PresenceTracker(self.topic)
        return self._presence

    def _to(self, trigger: Trigger) -> None:
        self.state = transition(self.topic, self.state, trigger)


class ClientConnection:
    """Client protocol state for one WebSocket connection's worth of channels.

    Args:
        vsn: "1.0.0" (JSON objects), "2.0.0" (JSON arrays + binary broadcasts) or "seed002"
            (the seed app's JSON protocol, :mod:`._seed002`).
        heartbeat_interval: seconds between heartbeats.
        heartbeat_timeout: seconds a heartbeat may go unanswered (default: the interval).
    """

    def __init__(
        self,
        vsn: str = "2.0.0",
        *,
        heartbeat_interval: float = 25.0,
        heartbeat_timeout: float | None = None,
    ) -> None:
        self.serializer: Serializer = serializer_for(vsn, "client")
        self.vsn = self.serializer.vsn
        self.heartbeat = HeartbeatTimer(
            interval=heartbeat_interval,
            timeout=heartbeat_interval if heartbeat_timeout is None else heartbeat_timeout,
        )
        self.channels: dict[str, ChannelCore] = {}
        self._pending: dict[str, tuple[str, str]] = {}
        self._ref = 0
        #: Frames for topics with no channel here (late messages after a leave), dropped.
        self.unroutable = 0

    # -- refs -------------------------------------------------------------------------

    def make_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    @property
    def pending_refs(self) -> int:
        """Pushes still waiting for a reply."""
        return len(self._pending)

    def forget(self, ref: str) -> None:
        """Stop waiting for the reply to ``ref`` (the driver gave up on it)."""
        self._settle(ref)

    def _expect(self, ch: ChannelCore, ref: str, event: str) -> None:
        self._pending[ref] = (ch.topic, event)
        if ch.pending is None:
            ch.pending = set()
        ch.pending.add(ref)

    def _settle(self, ref: str) -> tuple[str, str] | None:
        """Stop waiting for ``ref``; returns its ``(topic, event)`` if it was pending."""
        entry = self._pending.pop(ref, None)
        if entry is not None:
            ch = self.channels.get(entry[0])
            if ch is not None and ch.pending:
                ch.pending.discard(ref)
                if not ch.pending:
                    ch.pending = None
        return entry

    # -- connection lifecycle ------------------------------------------------------------

    def connection_made(self, now: float) -> None:
        self.heartbeat.start(now)

    def connection_lost(self, reason: str) -> list[ChannelErrored]:
        """The socket is gone: live channels become ERRORED, pending replies are void."""
        events: list[ChannelErrored] = []
        for ch in self.channels.values():
            if ch.state in (_S.JOINING, _S.JOINED):
                ch._to("error")
                events.append(ChannelErrored(topic=ch.topic, reason=reason))
            elif ch.state is _S.LEAVING:
                ch._to("error")
        self._pending.clear()
        for ch in self.channels.values():
            ch.pending = None
        self.heartbeat.stop()
        return events

    # -- channels --------------------------------------------------------------------------

    def add_channel(self, topic: str, bindings: tuple[PostgresChanges, ...] = ()) -> ChannelCore:
        if topic in self.channels:
            raise LocalProtocolError(f"channel {topic!r} already exists on this connection")
        ch = self.channels[topic] = ChannelCore(topic, bindings=bindings)
        return ch

    def remove_channel(self, topic: str) -> None:
        ch = self.channels.get(topic)
        if ch is None:
            return
        if ch.state is not _S.CLOSED:
            raise LocalProtocolError(f"cannot remove channel {topic!r}: it is {ch.state.name}")
        del self.channels[topic]
        for ref in ch.pending or ():
            self._pending.pop(ref, None)

    def _channel(self, topic: str) -> ChannelCore:
        try:
            return self.channels[topic]
        except KeyError:
            raise LocalProtocolError(f"no channel {topic!r} on this connection") from None

    def join(self, topic: str, payload: Mapping[str, Any]) -> tuple[str, str | bytes]:
        """Start (re)joining; returns ``(ref, frame)``. The ref is also the new join_ref."""
        ch = self._channel(topic)
        new_state = transition(topic, ch.state, "join")
        ref = str(self._ref + 1)
        # Encode before changing anything: an unencodable payload leaves the channel as it was.
        frame = self.serializer.encode(
            Message(join_ref=ref, ref=ref, topic=topic, event="phx_join", payload=dict(payload))
        )
        self._ref += 1
        ch.state = new_state
        ch.join_ref = ref
        ch.close_reason = None
        self._expect(ch, ref, "phx_join")
        return ref, frame

    def join_timed_out(self, topic: str) -> None:
        ch = self._channel(topic)
        ch._to("timeout")  # first: an illegal call must leave the pending refs alone
        if ch.join_ref is not None:
            self._settle(ch.join_ref)

    def leave(self, topic: str) -> tuple[str, str | bytes]:
        """Start leaving; returns ``(ref, frame)``."""
        ch = self._channel(topic)
        ch._to("leave")
        ref = self.make_ref()
        self._expect(ch, ref, "phx_leave")
        return ref, self.serializer.encode(
            Message(join_ref=ch.join_ref, ref=ref, topic=topic, event="phx_leave", payload={})
        )

    def reopen_channel(self, topic: str) -> None:
        """A channel the server closed is to be rejoined (e.g. after refreshing the token)."""
        self._channel(topic)._to("reopen")

    def close_channel(self, topic: str) -> None:
        """Mark the channel CLOSED locally (a fatal rejection, a finished leave, a give-up)."""
        ch = self._channel(topic)
        if ch.state is not _S.CLOSED:
            ch._to("close")

    def push(
        self, topic: str, event: str, payload: Any, *, expect_reply: bool = True
    ) -> tuple[str, str | bytes]:
        """Encode a push on a JOINED channel; returns ``(ref, frame)``.

        Raises:
            LocalProtocolError: the channel is not JOINED, or the payload cannot be encoded
                (e.g. ``bytes`` on vsn 1.0.0).
        """
        ch = self._channel(topic)
        if ch.state is not _S.JOINED:
            raise LocalProtocolError(
                f"cannot push {event!r} on {topic!r}: channel is {ch.state.name}, not JOINED"
            )
        ref = str(self._ref + 1)
        frame = self.serializer.encode(
            Message(join_ref=ch.join_ref, ref=ref, topic=topic, event=event, payload=payload)
        )
        self._ref += 1  # only once encoding succeeded: a refused push consumes no ref
        if expect_reply:
            self._expect(ch, ref, event)
        return ref, frame

    # -- heartbeat ---------------------------------------------------------------------------

    def heartbeat_due(self, now: float) -> Literal["send", "dead"] | None:
        return self.heartbeat.poll(now)

    def send_heartbeat(self, now: float) -> str | bytes:
        ref = self.make_ref()
        self.heartbeat.sent(ref, now)
        return self.serializer.encode(Message(topic="phoenix", event="heartbeat", ref=ref, payload={}))

    # -- incoming ----------------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> list[Event]:
        """Decode one frame; return the events it produced (possibly none)."""
        msg = self.serializer.decode(data)
        if msg.event == "phx_reply":
            return self._on_reply(msg, now)
        if msg.event == "auth_success" and msg.topic == "phoenix":
            connection_id = msg.payload.get("connectionId") if isinstance(msg.payload, dict) else None
            if not isinstance(connection_id, str):
                raise RemoteProtocolError("auth_success without a string 'connectionId'")
            return [Authenticated(connection_id=connection_id)]
        ch = self.channels.get(msg.topic)
        if ch is None:
            self.unroutable += 1
            return []
        event = msg.event
        if event in ("phx_close", "phx_error"):
            stale_ref = msg.join_ref if msg.join_ref is not None else msg.ref
            if stale_ref is not None and stale_ref != ch.join_ref:
                return []
        elif msg.join_ref is not None and msg.join_ref != ch.join_ref:
            return []
        payload = msg.payload
        if event == "broadcast":
            if not isinstance(payload, dict):
                raise RemoteProtocolError(f"broadcast on {msg.topic!r} has a non-object payload")
            meta = payload.get("meta")
            return [
                Broadcast(
                    topic=ch.topic,
                    event=str(payload.get("event", "")),
                    payload=payload.get("payload"),
                    meta=meta if isinstance(meta, dict) else None,
                )
            ]
        if event == "presence_state":
            if not isinstance(payload, dict):
                raise RemoteProtocolError(f"presence_state on {msg.topic!r} is not an object")
            return list(ch.presence.on_state(payload, ch.join_ref))
        if event == "presence_diff":
            if not isinstance(payload, dict):
                raise RemoteProtocolError(f"presence_diff on {msg.topic!r} is not an object")
            return list(ch.presence.on_diff(payload, ch.join_ref))
        if event == "system":
            return [self._on_system(ch, payload)]
        if event == "postgres_changes":
            return _postgres_change(ch, payload)
        if event == "phx_close":
            return self._on_close(ch)
        if event == "phx_error":
            if ch.state is _S.LEAVING:
                ch._to("error")
                return []
            if ch.state in (_S.JOINED, _S.JOINING):
                ch._to("error")
                return [
                    ChannelErrored(
                        topic=ch.topic,
                        reason="the server reported the channel crashed (phx_error)",
                    )
                ]
            return []
        return [ServerEvent(topic=ch.topic, event=event, payload=payload)]

    def _on_system(self, ch: ChannelCore, payload: Any) -> SystemMessage:
        if not isinstance(payload, dict):
            raise RemoteProtocolError(f"system message on {ch.topic!r} is not an object")
        sysmsg = SystemMessage(
            topic=ch.topic,
            extension=str(payload.get("extension", "")),
            status=str(payload.get("status", "")),
            message=str(payload.get("message", "")),
            channel=payload.get("channel") if isinstance(payload.get("channel"), str) else None,
        )
        if sysmsg.status == "error" and sysmsg.extension == "system":
            ch.close_reason = sysmsg.message
        return sysmsg

    def _on_close(self, ch: ChannelCore) -> list[Event]:
        if ch.state is _S.CLOSED:
            return []
        was_leaving = ch.state is _S.LEAVING
        ch._to("close")
        if was_leaving:
            return []
        reason = ch.close_reason or "the server closed the channel (phx_close)"
        return [ChannelClosed(topic=ch.topic, reason=reason)]

    def _on_reply(self, msg: Message, now: float) -> list[Event]:
        payload = msg.payload
        if not isinstance(payload, dict) or "status" not in payload:
            raise RemoteProtocolError(
                f"phx_reply on {msg.topic!r} must be an object with a 'status', got {payload!r:.80}"
            )
        status = str(payload["status"])
        response = payload.get("response")
        if msg.topic == "phoenix":
            rtt = self.heartbeat.acked(msg.ref, now)
            return [] if rtt is None else [HeartbeatAcked(rtt=rtt)]
        if msg.ref is None:
            return []
        pending = self._settle(msg.ref)
        if pending is None:
            return []  # a reply we stopped waiting for
        topic, event = pending
        reply = Reply(ref=msg.ref, topic=topic, event=event, status=status, response=response)
        ch = self.channels.get(topic)
        if ch is None:
            return [reply]
        if event == "phx_join" and msg.ref == ch.join_ref and ch.state is _S.JOINING:
            if status == "ok":
                mismatch = _assign_binding_ids(ch, response)
                if mismatch is not None:
                    # The server did not accept the bindings we asked for (js: CHANNEL_ERROR).
                    ch._to("join_error")
                    reply = Reply(
                        ref=msg.ref,
                        topic=topic,
                        event=event,
                        status="error",
                        response={"reason": mismatch, "server_response": response},
                    )
                    return [reply]
                ch._to("join_ok")
                ch.joined_once = True
            else:
                ch._to("join_error")
        elif event == "phx_leave" and ch.state is _S.LEAVING:
            ch._to("close")
        return [reply]


def _assign_binding_ids(ch: ChannelCore, response: Any) -> str | None:
    """Match the join reply's bindings to ours by position (§6.5); None if they agree."""
    if not ch.bindings:
        ch.binding_ids = ()
        return None
    server = response.get("postgres_changes") if isinstance(response, dict) else None
    if not isinstance(server, list) or len(server) < len(ch.bindings):
        return (
            "mismatch between server and client bindings for postgres changes: the server "
            f"acknowledged {len(server) if isinstance(server, list) else 0} of {len(ch.bindings)}"
        )
    ids: list[int | None] = []
    for index, (mine, theirs) in enumerate(zip(ch.bindings, server, strict=False)):
        if not mine.matches_server(theirs):
            return (
                f"mismatch between server and client bindings for postgres changes: binding {index} "
                f"is {mine.to_json()!r}, the server has {theirs!r}"
            )
        bid = theirs.get("id")
        ids.append(bid if isinstance(bid, int) and not isinstance(bid, bool) else None)
    ch.binding_ids = tuple(ids)
    return None


def _postgres_change(ch: ChannelCore, payload: Any) -> list[Event]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise RemoteProtocolError(f"postgres_changes on {ch.topic!r} has no 'data' object")
    data = payload["data"]
    ids = payload.get("ids")
    change_type = str(data.get("type", "")).upper()
    # Binding ids are integers; anything else (even unhashable junk) matches nothing.
    id_set = {i for i in ids if type(i) is int} if isinstance(ids, list) else set()
    matched = tuple(
        index
        for index, (binding, bid) in enumerate(zip(ch.bindings, ch.binding_ids, strict=False))
        if bid is not None and bid in id_set and binding.event in ("*", change_type)
    )
    if not matched:
        return []
    columns = data.get("columns")
    record = data.get("record")
    old_record = data.get("old_record")
    errors = data.get("errors")
    return [
        PostgresChange(
            topic=ch.topic,
            type=change_type,
            schema=str(data.get("schema", "")),
            table=str(data.get("table", "")),
            commit_timestamp=data.get("commit_timestamp")
            if isinstance(data.get("commit_timestamp"), str)
            else None,
            columns=tuple(c for c in columns if isinstance(c, dict)) if isinstance(columns, list) else (),
            record=record if isinstance(record, dict) else {},
            old_record=old_record if isinstance(old_record, dict) else {},
            errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
            bindings=matched,
        )
    ]
