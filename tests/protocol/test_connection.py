"""ClientConnection driven by hand-written server frames, on vsn 1.0.0 and 2.0.0.

No Trio and no sockets: frames go from ``ClientConnection`` to a tiny :class:`FakeServer`
that decodes them with the *server* serializer, and the server's replies are encoded with
that serializer and fed back with an explicit ``now``.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_realtime.protocol import (
    Broadcast,
    BroadcastConfig,
    ChannelClosed,
    ChannelConfig,
    ChannelErrored,
    ChannelState,
    ClientConnection,
    HeartbeatAcked,
    LocalProtocolError,
    Message,
    PostgresChange,
    PostgresChanges,
    PresenceConfig,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    RemoteProtocolError,
    Reply,
    ServerEvent,
    SystemMessage,
    serializer_for,
)

S = ChannelState
TOPIC = "realtime:room"


class FakeServer:
    """Decodes client frames and builds server frames with the real server serializer."""

    def __init__(self, vsn: str) -> None:
        self.vsn = vsn
        self.serializer = serializer_for(vsn, "server")

    def recv(self, frame: str | bytes) -> Message:
        return self.serializer.decode(frame)

    def send(self, msg: Message) -> str | bytes:
        return self.serializer.encode(msg)

    def reply(self, push: Message, status: str = "ok", response: Any = None) -> str | bytes:
        return self.send(
            Message(
                join_ref=push.join_ref,
                ref=push.ref,
                topic=push.topic,
                event="phx_reply",
                payload={"status": status, "response": {} if response is None else response},
            )
        )

    def push(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str | bytes:
        """A channel push (V2 carries the join_ref; V1 drops it)."""
        return self.send(Message(join_ref=join_ref, ref=None, topic=topic, event=event, payload=payload))

    def fanout(self, topic: str, event: str, payload: Any) -> str | bytes:
        return self.send(Message(topic=topic, event=event, payload=payload))

    def user_broadcast(
        self, topic: str, event: str, payload: Any, meta: dict[str, Any] | None = None
    ) -> str | bytes:
        body: dict[str, Any] = {"type": "broadcast", "event": event, "payload": payload}
        if meta is not None:
            body["meta"] = meta
        return self.send(Message(topic=topic, event="broadcast", payload=body, user_broadcast=True))

    def close(self, topic: str, join_ref: str | None, event: str = "phx_close") -> str | bytes:
        """phx_close / phx_error: ref = join_ref (and join_ref too on V2)."""
        return self.send(Message(join_ref=join_ref, ref=join_ref, topic=topic, event=event, payload={}))


@pytest.fixture(params=["1.0.0", "2.0.0"])
def vsn(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server(vsn: str) -> FakeServer:
    return FakeServer(vsn)


@pytest.fixture
def conn(vsn: str) -> ClientConnection:
    c = ClientConnection(vsn)
    c.connection_made(0.0)
    return c


def joined(conn: ClientConnection, server: FakeServer, topic: str = TOPIC) -> Message:
    """Add and join ``topic``; returns the phx_join as the server saw it."""
    conn.add_channel(topic)
    _, frame = conn.join(topic, {"config": {}})
    push = server.recv(frame)
    events = conn.receive(server.reply(push), 1.0)
    assert [type(e) for e in events] == [Reply]
    assert conn.channels[topic].state is S.JOINED
    return push


# -- refs --------------------------------------------------------------------------------


def test_refs_start_at_one_and_increase(conn: ClientConnection, server: FakeServer) -> None:
    conn.add_channel(TOPIC)
    ref, frame = conn.join(TOPIC, {})
    join = server.recv(frame)
    assert (ref, join.ref, join.join_ref, join.event) == ("1", "1", "1", "phx_join")
    conn.receive(server.reply(join), 0.5)
    ref2, frame2 = conn.push(TOPIC, "custom", {"n": 1})
    assert ref2 == "2"
    assert (server.recv(frame2).ref, server.recv(frame2).join_ref) == ("2", "1")
    hb = server.recv(conn.send_heartbeat(25.0))
    assert (hb.ref, hb.join_ref, hb.topic, hb.event, hb.payload) == ("3", None, "phoenix", "heartbeat", {})
    ref4, frame4 = conn.leave(TOPIC)
    assert ref4 == "4"
    leave = server.recv(frame4)
    assert (leave.ref, leave.join_ref, leave.event, leave.payload) == ("4", "1", "phx_leave", {})
    assert conn.make_ref() == "5"


# -- join / leave ------------------------------------------------------------------------


def test_join_ok(conn: ClientConnection, server: FakeServer) -> None:
    ch = conn.add_channel(TOPIC)
    payload = ChannelConfig(presence=PresenceConfig(key="u1", enabled=True)).join_payload("jwt")
    ref, frame = conn.join(TOPIC, payload)
    push = server.recv(frame)
    assert push == Message(join_ref=ref, ref=ref, topic=TOPIC, event="phx_join", payload=payload)
    assert ch.state is S.JOINING
    assert conn.pending_refs == 1
    events = conn.receive(server.reply(push, response={"postgres_changes": []}), 1.0)
    assert events == [
        Reply(ref="1", topic=TOPIC, event="phx_join", status="ok", response={"postgres_changes": []})
    ]
    assert events[0].ok  # type: ignore[union-attr]
    assert ch.state is S.JOINED
    assert ch.joined_once
    assert conn.pending_refs == 0


def test_join_error(conn: ClientConnection, server: FakeServer) -> None:
    ch = conn.add_channel(TOPIC)
    _, frame = conn.join(TOPIC, {})
    push = server.recv(frame)
    response = {"reason": "Unauthorized: You do not have permissions to read from this Channel topic: room"}
    events = conn.receive(server.reply(push, "error", response), 1.0)
    assert events == [Reply(ref="1", topic=TOPIC, event="phx_join", status="error", response=response)]
    assert not events[0].ok  # type: ignore[union-attr]
    assert ch.state is S.ERRORED
    assert not ch.joined_once


def test_join_with_unencodable_payload_changes_nothing(conn: ClientConnection) -> None:
    """Regression: join() used to move to JOINING and register the ref before encoding."""
    ch = conn.add_channel(TOPIC)
    with pytest.raises(LocalProtocolError, match=r"^payload is not JSON-serialisable"):
        conn.join(TOPIC, {"config": object()})
    assert (ch.state, ch.join_ref, conn.pending_refs) == (S.CLOSED, None, 0)
    assert conn.join(TOPIC, {})[0] == "1"


def test_bytes_push_on_v1_changes_nothing() -> None:
    conn, server = ClientConnection("1.0.0"), FakeServer("1.0.0")
    joined(conn, server)
    body = {"type": "broadcast", "event": "blob", "payload": b"\x00"}
    with pytest.raises(LocalProtocolError, match=r"binary payload on 'realtime:room'.*vsn 2\.0\.0"):
        conn.push(TOPIC, "broadcast", body)
    assert conn.pending_refs == 0
    assert conn.push(TOPIC, "x", {})[0] == "2"


def test_leave_reply_closes(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    ref, frame = conn.leave(TOPIC)
    leave = server.recv(frame)
    assert conn.channels[TOPIC].state is S.LEAVING
    events = conn.receive(server.reply(leave), 2.0)
    assert events == [Reply(ref=ref, topic=TOPIC, event="phx_leave", status="ok", response={})]
    assert conn.channels[TOPIC].state is S.CLOSED
    # ... and the phx_close that follows (§3.6) is a no-op
    assert conn.receive(server.close(TOPIC, join.join_ref), 2.1) == []
    assert conn.channels[TOPIC].state is S.CLOSED
    conn.remove_channel(TOPIC)


def test_phx_close_before_leave_reply_is_silent(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    _, frame = conn.leave(TOPIC)
    leave = server.recv(frame)
    assert conn.receive(server.close(TOPIC, join.join_ref), 2.0) == []
    assert conn.channels[TOPIC].state is S.CLOSED
    assert [type(e) for e in conn.receive(server.reply(leave), 2.1)] == [Reply]
    assert conn.channels[TOPIC].state is S.CLOSED


def test_system_error_then_phx_close(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    sys_payload = {
        "extension": "system",
        "status": "error",
        "message": "Token has expired 5 seconds ago",
        "channel": "room",
    }
    events = conn.receive(server.push(TOPIC, "system", sys_payload, join.join_ref), 3.0)
    assert events == [
        SystemMessage(
            topic=TOPIC,
            extension="system",
            status="error",
            message="Token has expired 5 seconds ago",
            channel="room",
        )
    ]
    assert conn.channels[TOPIC].state is S.JOINED
    events = conn.receive(server.close(TOPIC, join.join_ref), 3.0)
    assert events == [ChannelClosed(topic=TOPIC, reason="Token has expired 5 seconds ago")]
    assert conn.channels[TOPIC].state is S.CLOSED


def test_phx_close_without_system_message(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    events = conn.receive(server.close(TOPIC, join.join_ref), 3.0)
    assert events == [ChannelClosed(topic=TOPIC, reason="the server closed the channel (phx_close)")]


def test_non_fatal_system_message_does_not_set_close_reason(
    conn: ClientConnection, server: FakeServer
) -> None:
    join = joined(conn, server)
    ok = {
        "extension": "postgres_changes",
        "status": "ok",
        "message": "Subscribed to PostgreSQL",
        "channel": "room",
    }
    assert conn.receive(server.push(TOPIC, "system", ok, join.join_ref), 3.0) == [
        SystemMessage(
            topic=TOPIC,
            extension="postgres_changes",
            status="ok",
            message="Subscribed to PostgreSQL",
            channel="room",
        )
    ]
    pg_error = {"extension": "postgres_changes", "status": "error", "message": "bad filter"}
    [event] = conn.receive(server.push(TOPIC, "system", pg_error, join.join_ref), 3.0)
    assert event == SystemMessage(
        topic=TOPIC, extension="postgres_changes", status="error", message="bad filter", channel=None
    )
    assert conn.channels[TOPIC].close_reason is None
    assert conn.channels[TOPIC].state is S.JOINED


def test_close_reason_is_reset_by_the_next_join(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    fatal = {"extension": "system", "status": "error", "message": "Too many messages per second"}
    conn.receive(server.push(TOPIC, "system", fatal, join.join_ref), 3.0)
    conn.receive(server.close(TOPIC, join.join_ref), 3.0)
    _, frame = conn.join(TOPIC, {})
    join2 = server.recv(frame)
    conn.receive(server.reply(join2), 4.0)
    assert conn.receive(server.close(TOPIC, join2.join_ref), 5.0) == [
        ChannelClosed(topic=TOPIC, reason="the server closed the channel (phx_close)")
    ]


def test_stale_phx_close_after_duplicate_join_is_ignored(conn: ClientConnection, server: FakeServer) -> None:
    """§3.6: join 1 times out client-side, join 2 succeeds, then the server closes join 1.

    The server writes the new join's reply before the queued phx_close of the old join; that
    phx_close (ref = old join_ref) must not end the new join.
    """
    conn.add_channel(TOPIC)
    _, frame1 = conn.join(TOPIC, {})
    join1 = server.recv(frame1)
    conn.join_timed_out(TOPIC)
    _, frame2 = conn.join(TOPIC, {})
    join2 = server.recv(frame2)
    assert (join1.join_ref, join2.join_ref) == ("1", "2")
    assert [type(e) for e in conn.receive(server.reply(join2), 1.0)] == [Reply]
    assert conn.channels[TOPIC].state is S.JOINED
    assert conn.receive(server.close(TOPIC, join1.join_ref), 1.1) == []
    assert conn.receive(server.close(TOPIC, join1.join_ref, "phx_error"), 1.1) == []
    # the late reply to the abandoned join is dropped too
    assert conn.receive(server.reply(join1), 1.2) == []
    assert conn.channels[TOPIC].state is S.JOINED
    # the current join's close still works
    assert [type(e) for e in conn.receive(server.close(TOPIC, join2.join_ref), 1.3)] == [ChannelClosed]


def test_phx_error(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    events = conn.receive(server.close(TOPIC, join.join_ref, "phx_error"), 3.0)
    assert events == [
        ChannelErrored(topic=TOPIC, reason="the server reported the channel crashed (phx_error)")
    ]
    assert conn.channels[TOPIC].state is S.ERRORED
    # a second phx_error on an already ERRORED channel reports nothing new
    assert conn.receive(server.close(TOPIC, join.join_ref, "phx_error"), 3.1) == []


def test_phx_error_while_joining(conn: ClientConnection, server: FakeServer) -> None:
    conn.add_channel(TOPIC)
    _, frame = conn.join(TOPIC, {})
    join = server.recv(frame)
    assert conn.receive(server.close(TOPIC, join.join_ref, "phx_error"), 1.0) == [
        ChannelErrored(topic=TOPIC, reason="the server reported the channel crashed (phx_error)")
    ]
    assert conn.channels[TOPIC].state is S.ERRORED


def test_phx_error_while_leaving_closes_silently(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    conn.leave(TOPIC)
    assert conn.receive(server.close(TOPIC, join.join_ref, "phx_error"), 3.0) == []
    assert conn.channels[TOPIC].state is S.CLOSED


def test_stale_v2_messages_with_old_join_ref_are_dropped() -> None:
    conn, server = ClientConnection("2.0.0"), FakeServer("2.0.0")
    conn.add_channel(TOPIC)
    _, frame = conn.join(TOPIC, {})
    join1 = server.recv(frame)
    conn.receive(server.reply(join1), 1.0)
    conn.receive(server.close(TOPIC, join1.join_ref, "phx_error"), 2.0)
    _, frame = conn.join(TOPIC, {})
    join2 = server.recv(frame)
    conn.receive(server.reply(join2), 3.0)
    assert (join1.join_ref, join2.join_ref) == ("1", "2")
    body = {"type": "broadcast", "event": "e", "payload": {"n": 1}}
    stale = [
        server.push(TOPIC, "broadcast", body, join_ref="1"),
        server.push(TOPIC, "presence_state", {"u": {"metas": [{"phx_ref": "A"}]}}, join_ref="1"),
        server.push(
            TOPIC, "system", {"extension": "system", "status": "error", "message": "old"}, join_ref="1"
        ),
        server.push(TOPIC, "whatever", {}, join_ref="1"),
    ]
    for frame in stale:
        assert conn.receive(frame, 4.0) == []
    assert conn.channels[TOPIC].close_reason is None
    assert conn.channels[TOPIC].presence.state == {}
    # the same push with the current join_ref, or with none (fan-out), is delivered
    expected = [Broadcast(topic=TOPIC, event="e", payload={"n": 1})]
    assert conn.receive(server.push(TOPIC, "broadcast", body, join_ref="2"), 4.0) == expected
    assert conn.receive(server.fanout(TOPIC, "broadcast", body), 4.0) == expected


# -- broadcast -----------------------------------------------------------------------------


def test_json_broadcast(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    body = {"type": "broadcast", "event": "msg", "payload": {"t": "hi"}}
    assert conn.receive(server.fanout(TOPIC, "broadcast", body), 5.0) == [
        Broadcast(topic=TOPIC, event="msg", payload={"t": "hi"}, meta=None)
    ]


def test_user_broadcast_with_meta(conn: ClientConnection, server: FakeServer) -> None:
    """kind 4 on V2, a JSON object with "meta" on V1 (§2.2 dispatcher example)."""
    joined(conn, server)
    frame = server.user_broadcast(TOPIC, "event123", {"data": "test"}, meta={"id": "123", "replayed": True})
    assert isinstance(frame, bytes if server.vsn == "2.0.0" else str)
    [event] = conn.receive(frame, 5.0)
    assert event == Broadcast(
        topic=TOPIC, event="event123", payload={"data": "test"}, meta={"id": "123", "replayed": True}
    )
    assert isinstance(event, Broadcast)
    assert (event.id, event.replayed) == ("123", True)


def test_binary_broadcast_via_kind4() -> None:
    conn, server = ClientConnection("2.0.0"), FakeServer("2.0.0")
    joined(conn, server)
    frame = server.user_broadcast(TOPIC, "blob", b"\x00\xff\x10")
    assert frame == bytes([4, 13, 4, 0, 0]) + b"realtime:room" + b"blob" + b"\x00\xff\x10"
    assert conn.receive(frame, 5.0) == [Broadcast(topic=TOPIC, event="blob", payload=b"\x00\xff\x10")]


def test_binary_broadcast_is_not_sent_to_v1_subscribers() -> None:
    server = FakeServer("1.0.0")
    with pytest.raises(LocalProtocolError, match=r"binary broadcasts need vsn 2\.0\.0"):
        server.user_broadcast(TOPIC, "blob", b"\x00")


def test_client_broadcast_push(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    body = {"type": "broadcast", "event": "cursor", "payload": {"x": 1}}
    ref, frame = conn.push(TOPIC, "broadcast", body)
    if server.vsn == "1.0.0":
        assert frame == (
            '{"topic":"realtime:room","event":"broadcast","payload":{"type":"broadcast",'
            '"event":"cursor","payload":{"x":1}},"ref":"2","join_ref":"1"}'
        )
    else:
        assert (
            frame == bytes([3, 1, 1, 13, 6, 0, 1]) + b"1" + b"2" + b"realtime:room" + b"cursor" + b'{"x":1}'
        )
    at_server = server.recv(frame)
    assert (at_server.ref, at_server.join_ref, at_server.payload) == (ref, "1", body)
    assert conn.receive(server.reply(at_server), 5.0) == [
        Reply(ref=ref, topic=TOPIC, event="broadcast", status="ok", response={})
    ]


def test_push_without_reply_is_not_pending(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    _ref, frame = conn.push(TOPIC, "access_token", {"access_token": "jwt"}, expect_reply=False)
    assert conn.pending_refs == 0
    assert server.recv(frame).event == "access_token"
    # a reply that nobody waits for is dropped
    assert conn.receive(server.reply(server.recv(frame)), 5.0) == []


def test_broadcast_with_non_object_payload_is_remote_error(
    conn: ClientConnection, server: FakeServer
) -> None:
    joined(conn, server)
    with pytest.raises(RemoteProtocolError, match=r"^broadcast on 'realtime:room' has a non-object payload$"):
        conn.receive(server.fanout(TOPIC, "broadcast", [1, 2]), 5.0)


# -- presence ------------------------------------------------------------------------------


def _p(ref: str, **meta: Any) -> dict[str, Any]:
    return {**meta, "presence_ref": ref}


def test_presence_state_then_diffs(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    state = {"u1": {"metas": [{"phx_ref": "A", "n": 1}]}}
    events = conn.receive(server.push(TOPIC, "presence_state", state, join.join_ref), 1.0)
    assert events == [
        PresenceJoin(topic=TOPIC, key="u1", current=(), new=(_p("A", n=1),)),
        PresenceSync(topic=TOPIC, state={"u1": (_p("A", n=1),)}),
    ]
    diff = {
        "joins": {"u2": {"metas": [{"phx_ref": "B", "n": 2}]}},
        "leaves": {"u1": {"metas": [{"phx_ref": "A", "n": 1}]}},
    }
    events = conn.receive(server.fanout(TOPIC, "presence_diff", diff), 2.0)
    assert events == [
        PresenceJoin(topic=TOPIC, key="u2", current=(), new=(_p("B", n=2),)),
        PresenceLeave(topic=TOPIC, key="u1", current=(), left=(_p("A", n=1),)),
        PresenceSync(topic=TOPIC, state={"u2": (_p("B", n=2),)}),
    ]
    # an update: new meta in joins (with phx_ref_prev), old meta in leaves
    update = {
        "joins": {"u2": {"metas": [{"phx_ref": "C", "phx_ref_prev": "B", "n": 3}]}},
        "leaves": {"u2": {"metas": [{"phx_ref": "B", "n": 2}]}},
    }
    events = conn.receive(server.fanout(TOPIC, "presence_diff", update), 3.0)
    assert events == [
        PresenceJoin(topic=TOPIC, key="u2", current=(_p("B", n=2),), new=(_p("C", n=3),)),
        PresenceLeave(topic=TOPIC, key="u2", current=(_p("C", n=3),), left=(_p("B", n=2),)),
        PresenceSync(topic=TOPIC, state={"u2": (_p("C", n=3),)}),
    ]


def test_presence_diff_before_state_is_buffered(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    diff = {"joins": {"u2": {"metas": [{"phx_ref": "B"}]}}, "leaves": {}}
    assert conn.receive(server.fanout(TOPIC, "presence_diff", diff), 1.0) == []
    assert conn.channels[TOPIC].presence.state == {}
    events = conn.receive(
        server.push(TOPIC, "presence_state", {"u1": {"metas": [{"phx_ref": "A"}]}}, join.join_ref), 2.0
    )
    assert events == [
        PresenceJoin(topic=TOPIC, key="u1", current=(), new=(_p("A"),)),
        PresenceJoin(topic=TOPIC, key="u2", current=(), new=(_p("B"),)),
        PresenceSync(topic=TOPIC, state={"u1": (_p("A"),), "u2": (_p("B"),)}),
    ]
    assert conn.channels[TOPIC].presence.pending_diffs == []


def test_presence_diffs_buffered_again_after_rejoin(conn: ClientConnection, server: FakeServer) -> None:
    """After a rejoin, diffs wait for the new join's presence_state (the old state is stale)."""
    join = joined(conn, server)
    conn.receive(
        server.push(TOPIC, "presence_state", {"u1": {"metas": [{"phx_ref": "A"}]}}, join.join_ref), 1.0
    )
    conn.connection_lost("gone")
    _, frame = conn.join(TOPIC, {})
    join2 = server.recv(frame)
    conn.receive(server.reply(join2), 2.0)
    diff = {"joins": {"u3": {"metas": [{"phx_ref": "C"}]}}, "leaves": {}}
    assert conn.receive(server.fanout(TOPIC, "presence_diff", diff), 2.5) == []
    events = conn.receive(server.push(TOPIC, "presence_state", {}, join2.join_ref), 3.0)
    assert events == [
        PresenceLeave(topic=TOPIC, key="u1", current=(), left=(_p("A"),)),
        PresenceJoin(topic=TOPIC, key="u3", current=(), new=(_p("C"),)),
        PresenceSync(topic=TOPIC, state={"u3": (_p("C"),)}),
    ]


@pytest.mark.parametrize(
    ("event", "payload", "pattern"),
    [
        ("presence_state", [1], r"^presence_state on 'realtime:room' is not an object$"),
        ("presence_diff", "x", r"^presence_diff on 'realtime:room' is not an object$"),
        (
            "presence_diff",
            {"joins": [1], "leaves": {}},
            r"^presence_diff on 'realtime:room' needs objects under 'joins' and 'leaves'$",
        ),
        (
            "presence_diff",
            {"joins": {}, "leaves": "ab"},
            r"^presence_diff on 'realtime:room' needs objects under 'joins' and 'leaves'$",
        ),
        (
            "presence_state",
            {"u": {"metas": [{"phx_ref": [1]}]}},
            r"^presence 'u' has a phx_ref of type list; expected a string$",
        ),
        (
            "presence_diff",
            {"joins": {"u": {"metas": [{"phx_ref": {"a": 1}}]}}},
            r"^presence 'u' has a phx_ref of type dict; expected a string$",
        ),
        ("system", [], r"^system message on 'realtime:room' is not an object$"),
    ],
)
def test_malformed_channel_push_is_remote_error_and_changes_nothing(
    conn: ClientConnection, server: FakeServer, event: str, payload: Any, pattern: str
) -> None:
    """Regression (presence rows): these used to escape as AttributeError / TypeError."""
    join = joined(conn, server)
    conn.receive(
        server.push(TOPIC, "presence_state", {"k": {"metas": [{"phx_ref": "R"}]}}, join.join_ref), 1.0
    )
    before = _snapshot(conn)
    with pytest.raises(RemoteProtocolError, match=pattern):
        conn.receive(server.push(TOPIC, event, payload, join.join_ref), 2.0)
    assert _snapshot(conn) == before


def test_deeply_nested_presence_meta_from_a_peer(conn: ClientConnection, server: FakeServer) -> None:
    """Regression: a peer tracking a meta nested ~600 deep (json.loads accepts it) made every
    other client's receive() raise RecursionError from copy.deepcopy in the presence sync."""
    join = joined(conn, server)
    depth = 600
    deep = "[" * depth + "]" * depth
    meta = f'{{"phx_ref":"D","x":{deep}}}'
    assert json.loads(meta)["phx_ref"] == "D"  # decodable at this stack depth
    conn.receive(server.push(TOPIC, "presence_state", {}, join.join_ref), 1.0)
    diff_payload = f'{{"joins":{{"u":{{"metas":[{meta}]}}}},"leaves":{{}}}}'
    if server.vsn == "1.0.0":
        frame = f'{{"topic":"{TOPIC}","event":"presence_diff","payload":{diff_payload},"ref":null}}'
    else:
        frame = f'[null,null,"{TOPIC}","presence_diff",{diff_payload}]'
    events = conn.receive(frame, 2.0)
    assert [type(e) for e in events] == [PresenceJoin, PresenceSync]
    assert conn.channels[TOPIC].presence.snapshot()["u"][0]["presence_ref"] == "D"


@pytest.mark.parametrize("payload", [[], "ok", None, {"response": {}}])
def test_malformed_reply_is_remote_error(conn: ClientConnection, server: FakeServer, payload: Any) -> None:
    conn.add_channel(TOPIC)
    _, frame = conn.join(TOPIC, {})
    join = server.recv(frame)
    bad = server.send(
        Message(join_ref=join.join_ref, ref=join.ref, topic=TOPIC, event="phx_reply", payload=payload)
    )
    with pytest.raises(
        RemoteProtocolError, match=r"^phx_reply on 'realtime:room' must be an object with a 'status'"
    ):
        conn.receive(bad, 1.0)
    assert conn.channels[TOPIC].state is S.JOINING
    assert conn.pending_refs == 1


# -- routing -------------------------------------------------------------------------------


def test_unknown_event_is_server_event(conn: ClientConnection, server: FakeServer) -> None:
    join = joined(conn, server)
    assert conn.receive(server.push(TOPIC, "custom_event", {"ids": [1]}, join.join_ref), 1.0) == [
        ServerEvent(topic=TOPIC, event="custom_event", payload={"ids": [1]})
    ]


def test_message_for_unknown_topic_is_unroutable(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    assert conn.unroutable == 0
    body = {"type": "broadcast", "event": "e", "payload": {}}
    assert conn.receive(server.fanout("realtime:other", "broadcast", body), 1.0) == []
    assert conn.receive(server.close("realtime:other", "9"), 1.0) == []
    assert conn.unroutable == 2
    # replies are routed by ref, not topic: an unknown ref is dropped but not "unroutable"
    stray = Message(
        join_ref=None,
        ref="99",
        topic="realtime:other",
        event="phx_reply",
        payload={"status": "ok", "response": {}},
    )
    assert conn.receive(server.send(stray), 1.0) == []
    assert conn.unroutable == 2


def test_reply_to_forgotten_ref_is_dropped(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    ref, frame = conn.push(TOPIC, "presence", {"type": "presence", "event": "track", "payload": {}})
    assert conn.pending_refs == 1
    conn.forget(ref)
    assert conn.pending_refs == 0
    assert conn.receive(server.reply(server.recv(frame)), 1.0) == []
    conn.forget("no-such-ref")  # no error


def test_reply_with_null_ref_is_dropped(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    msg = Message(topic=TOPIC, event="phx_reply", payload={"status": "ok", "response": {}})
    assert conn.receive(server.send(msg), 1.0) == []


def test_reply_for_removed_channel_is_still_reported(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server)
    _, frame = conn.leave(TOPIC)
    leave = server.recv(frame)
    conn.close_channel(TOPIC)
    # the channel is closed but still registered: its leave reply comes back as a Reply
    assert conn.receive(server.reply(leave), 1.0) == [
        Reply(ref=leave.ref, topic=TOPIC, event="phx_leave", status="ok", response={})  # type: ignore[arg-type]
    ]


# -- connection lost -----------------------------------------------------------------------


def test_connection_lost(conn: ClientConnection, server: FakeServer) -> None:
    joined(conn, server, "realtime:joined")
    conn.add_channel("realtime:joining")
    conn.join("realtime:joining", {})
    joined(conn, server, "realtime:leaving")
    conn.leave("realtime:leaving")
    conn.add_channel("realtime:errored")
    _, frame = conn.join("realtime:errored", {})
    conn.receive(server.reply(server.recv(frame), "error", {"reason": "nope"}), 1.0)
    conn.add_channel("realtime:closed")
    conn.push("realtime:joined", "x", {})
    frame = conn.send_heartbeat(25.0)
    assert conn.pending_refs == 3  # joining's join, leaving's leave, the push (heartbeat is separate)
    assert conn.heartbeat.pending_ref is not None

    events = conn.connection_lost("connection reset")

    assert events == [
        ChannelErrored(topic="realtime:joined", reason="connection reset"),
        ChannelErrored(topic="realtime:joining", reason="connection reset"),
    ]
    assert {t: ch.state for t, ch in conn.channels.items()} == {
        "realtime:joined": S.ERRORED,
        "realtime:joining": S.ERRORED,
        "realtime:leaving": S.CLOSED,
        "realtime:errored": S.ERRORED,
        "realtime:closed": S.CLOSED,
    }
    assert conn.pending_refs == 0
    assert conn.heartbeat.deadline() == math.inf
    assert conn.heartbeat_due(1e9) is None
    # a heartbeat reply from the dead connection is not an ack
    assert conn.receive(server.reply(server.recv(frame)), 26.0) == []


# -- heartbeat -----------------------------------------------------------------------------


def test_heartbeat_schedule(conn: ClientConnection, server: FakeServer) -> None:
    """connection_made(0): send at 25, ack at 25.5, send at 50, no ack by 75 -> dead."""
    hb = conn.heartbeat
    assert hb.deadline() == 25.0
    assert conn.heartbeat_due(0.0) is None
    assert conn.heartbeat_due(24.999) is None
    assert conn.heartbeat_due(25.0) == "send"
    msg = server.recv(conn.send_heartbeat(25.0))
    assert (msg.topic, msg.event, msg.ref, msg.join_ref, msg.payload) == (
        "phoenix",
        "heartbeat",
        "1",
        None,
        {},
    )
    assert hb.deadline() == 50.0
    assert conn.heartbeat_due(49.999) is None
    assert conn.receive(server.reply(msg), 25.5) == [HeartbeatAcked(rtt=0.5)]
    assert hb.last_rtt == 0.5
    assert hb.deadline() == 50.0
    assert conn.heartbeat_due(49.999) is None
    assert conn.heartbeat_due(50.0) == "send"
    msg2 = server.recv(conn.send_heartbeat(50.0))
    assert msg2.ref == "2"
    assert hb.deadline() == 75.0
    assert conn.heartbeat_due(74.999) is None
    assert conn.heartbeat_due(75.0) == "dead"


def test_heartbeat_sent_at_25_no_ack_by_50_is_dead(conn: ClientConnection) -> None:
    assert conn.heartbeat_due(25.0) == "send"
    conn.send_heartbeat(25.0)
    assert conn.heartbeat_due(49.9) is None
    assert conn.heartbeat_due(50.0) == "dead"
    assert conn.heartbeat_due(60.0) == "dead"


def test_heartbeat_ack_with_wrong_ref_is_ignored(conn: ClientConnection, server: FakeServer) -> None:
    conn.send_heartbeat(25.0)
    wrong = Message(topic="phoenix", event="phx_reply", ref="42", payload={"status": "ok", "response": {}})
    assert conn.receive(server.send(wrong), 26.0) == []
    assert conn.heartbeat_due(50.0) == "dead"


def test_duplicate_heartbeat_ack_counts_once(conn: ClientConnection, server: FakeServer) -> None:
    msg = server.recv(conn.send_heartbeat(25.0))
    assert conn.receive(server.reply(msg), 26.0) == [HeartbeatAcked(rtt=1.0)]
    assert conn.receive(server.reply(msg), 27.0) == []


def test_heartbeat_timeout_shorter_than_interval(server: FakeServer) -> None:
    conn = ClientConnection(server.vsn, heartbeat_interval=25.0, heartbeat_timeout=10.0)
    conn.connection_made(0.0)
    assert conn.heartbeat.deadline() == 25.0
    assert conn.heartbeat_due(25.0) == "send"
    msg = server.recv(conn.send_heartbeat(25.0))
    assert conn.heartbeat.deadline() == 35.0
    assert conn.heartbeat_due(34.999) is None
    assert conn.receive(server.reply(msg), 30.0) == [HeartbeatAcked(rtt=5.0)]
    assert conn.heartbeat.deadline() == 50.0  # acked: back to the interval
    assert conn.heartbeat_due(35.0) is None
    assert conn.heartbeat_due(50.0) == "send"
    conn.send_heartbeat(50.0)
    assert conn.heartbeat.deadline() == 60.0
    assert conn.heartbeat_due(59.999) is None
    assert conn.heartbeat_due(60.0) == "dead"


def test_heartbeat_restarts_with_connection_made(conn: ClientConnection) -> None:
    conn.send_heartbeat(25.0)
    conn.connection_lost("x")
    conn.connection_made(100.0)
    assert conn.heartbeat.pending_ref is None
    assert conn.heartbeat.deadline() == 125.0
    assert conn.heartbeat_due(124.0) is None
    assert conn.heartbeat_due(125.0) == "send"


def test_v1_heartbeat_golden() -> None:
    conn = ClientConnection("1.0.0")
    conn.connection_made(0.0)
    assert (
        conn.send_heartbeat(25.0)
        == '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1","join_ref":null}'
    )
    reply = '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}'
    assert conn.receive(reply, 25.25) == [HeartbeatAcked(rtt=0.25)]


def test_v2_heartbeat_golden() -> None:
    conn = ClientConnection("2.0.0")
    conn.connection_made(0.0)
    assert conn.send_heartbeat(25.0) == '[null,"1","phoenix","heartbeat",{}]'
    assert conn.receive('[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]', 26.0) == [
        HeartbeatAcked(rtt=1.0)
    ]


# -- §3.11 example session -----------------------------------------------------------------

SESSION_3_11 = [
    ">",
    '{"topic":"realtime:room","event":"phx_join","payload":{"config":{"broadcast":{"ack":true,"self":true},"presence":{"key":"u1","enabled":true},"postgres_changes":[],"private":false},"access_token":"<jwt>"},"ref":"1","join_ref":"1"}',
    "<",
    '{"topic":"realtime:room","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"}',
    "<",
    '{"topic":"realtime:room","event":"presence_state","payload":{},"ref":null}',
    ">",
    '{"topic":"realtime:room","event":"presence","payload":{"type":"presence","event":"track","payload":{"online_at":"2024-01-01T00:00:00Z"}},"ref":"2","join_ref":"1"}',
    "<",
    '{"topic":"realtime:room","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}',
    "<",
    '{"topic":"realtime:room","event":"presence_diff","payload":{"joins":{"u1":{"metas":[{"phx_ref":"F1","online_at":"2024-01-01T00:00:00Z"}]}},"leaves":{}},"ref":null}',
    ">",
    '{"topic":"realtime:room","event":"broadcast","payload":{"type":"broadcast","event":"msg","payload":{"t":"hi"}},"ref":"3","join_ref":"1"}',
    "<",
    '{"topic":"realtime:room","event":"broadcast","payload":{"type":"broadcast","event":"msg","payload":{"t":"hi"}},"ref":null}',
    "<",
    '{"topic":"realtime:room","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"3"}',
    ">",
    '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"4","join_ref":null}',
    "<",
    '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"4"}',
    ">",
    '{"topic":"realtime:room","event":"phx_leave","payload":{},"ref":"5","join_ref":"1"}',
    "<",
    '{"topic":"realtime:room","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"5"}',
    "<",
    '{"topic":"realtime:room","event":"phx_close","payload":{},"ref":"1"}',
]


def test_example_session_3_11_v1_golden() -> None:
    transcript = list(zip(SESSION_3_11[::2], SESSION_3_11[1::2], strict=True))
    sent = [frame for d, frame in transcript if d == ">"]
    received = iter(frame for d, frame in transcript if d == "<")
    online = {"online_at": "2024-01-01T00:00:00Z"}
    me = {"presence_ref": "F1", **online}

    conn = ClientConnection("1.0.0")
    conn.connection_made(0.0)
    ch = conn.add_channel(TOPIC)
    config = ChannelConfig(
        broadcast=BroadcastConfig(ack=True, receive_own=True), presence=PresenceConfig(key="u1", enabled=True)
    )
    out: list[str | bytes] = []

    _ref, frame = conn.join(TOPIC, config.join_payload("<jwt>"))
    out.append(frame)
    assert conn.receive(next(received), 0.1) == [
        Reply(ref="1", topic=TOPIC, event="phx_join", status="ok", response={"postgres_changes": []})
    ]
    assert ch.state is S.JOINED
    assert conn.receive(next(received), 0.2) == [PresenceSync(topic=TOPIC, state={})]

    out.append(conn.push(TOPIC, "presence", {"type": "presence", "event": "track", "payload": online})[1])
    assert conn.receive(next(received), 0.3) == [
        Reply(ref="2", topic=TOPIC, event="presence", status="ok", response={})
    ]
    assert conn.receive(next(received), 0.4) == [
        PresenceJoin(topic=TOPIC, key="u1", current=(), new=(me,)),
        PresenceSync(topic=TOPIC, state={"u1": (me,)}),
    ]

    out.append(
        conn.push(TOPIC, "broadcast", {"type": "broadcast", "event": "msg", "payload": {"t": "hi"}})[1]
    )
    assert conn.receive(next(received), 0.5) == [Broadcast(topic=TOPIC, event="msg", payload={"t": "hi"})]
    assert conn.receive(next(received), 0.6) == [
        Reply(ref="3", topic=TOPIC, event="broadcast", status="ok", response={})
    ]

    assert conn.heartbeat_due(25.0) == "send"
    out.append(conn.send_heartbeat(25.0))
    assert conn.receive(next(received), 25.125) == [HeartbeatAcked(rtt=0.125)]

    out.append(conn.leave(TOPIC)[1])
    assert ch.state is S.LEAVING
    assert conn.receive(next(received), 26.0) == [
        Reply(ref="5", topic=TOPIC, event="phx_leave", status="ok", response={})
    ]
    assert ch.state is S.CLOSED
    assert conn.receive(next(received), 26.1) == []
    assert next(received, None) is None

    assert out == sent  # byte-for-byte, including key order
    assert conn.pending_refs == 0
    assert conn.unroutable == 0


def test_example_session_3_11_v2_frames() -> None:
    """The V2 frames quoted at the end of §3.11."""
    conn = ClientConnection("2.0.0")
    ch = conn.add_channel(TOPIC)
    conn.join(TOPIC, {})
    assert [
        type(e)
        for e in conn.receive(
            '["1","1","realtime:room","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]', 0.0
        )
    ] == [Reply]
    assert conn.receive('["1",null,"realtime:room","presence_state",{}]', 0.0) == [
        PresenceSync(topic=TOPIC, state={})
    ]
    diff = json.dumps({"joins": {"u1": {"metas": [{"phx_ref": "F1"}]}}, "leaves": {}})
    assert [type(e) for e in conn.receive(f'[null,null,"realtime:room","presence_diff",{diff}]', 0.0)] == [
        PresenceJoin,
        PresenceSync,
    ]
    assert conn.receive('["1","1","realtime:room","phx_close",{}]', 0.0) == [
        ChannelClosed(topic=TOPIC, reason="the server closed the channel (phx_close)")
    ]
    assert ch.state is S.CLOSED


# -- fuzz: receive() either returns events or raises RemoteProtocolError, changing nothing ---


def _snapshot(conn: ClientConnection) -> Any:
    hb = conn.heartbeat
    return copy.deepcopy(
        (
            {
                t: (
                    ch.state,
                    ch.join_ref,
                    ch.close_reason,
                    ch.joined_once,
                    ch.presence.state,
                    ch.presence.join_ref,
                    ch.presence.pending_diffs,
                )
                for t, ch in conn.channels.items()
            },
            dict(conn._pending),
            conn._ref,
            conn.unroutable,
            (hb.pending_ref, hb.sent_at, hb.next_send, hb.last_rtt),
        )
    )


json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4)
json_values = st.recursive(
    json_scalars,
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "u1", "metas", "phx_ref"]), c, max_size=3)
    ),
    max_leaves=10,
)
junk = st.sampled_from([[1], "ab", 3, None]) | json_values
metas = st.lists(
    st.fixed_dictionaries(
        {"phx_ref": st.sampled_from(["A", "B", "C", [1], {"a": 1}]) | json_values},
        optional={"phx_ref_prev": st.sampled_from(["A", "B"]), "x": json_values},
    ),
    max_size=3,
)
presence_maps = st.dictionaries(
    st.sampled_from(["u1", "u2"]), st.fixed_dictionaries({"metas": metas}) | json_values, max_size=2
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {}, optional={"status": json_values | st.sampled_from(["ok", "error"]), "response": json_values}
    ),
    st.fixed_dictionaries({}, optional={"joins": presence_maps | junk, "leaves": presence_maps | junk}),
    presence_maps,
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.just("broadcast"),
            "event": json_values,
            "payload": json_values,
            "meta": json_values,
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "extension": json_values | st.just("system"),
            "status": json_values | st.just("error"),
            "message": json_values,
            "channel": json_values,
        },
    ),
)
server_messages = st.builds(
    Message,
    join_ref=st.sampled_from([None, None, "1", "1", "9"]),
    ref=st.sampled_from([None, "1", "2", "3", "4"]),
    topic=st.sampled_from([TOPIC, TOPIC, TOPIC, "phoenix", "realtime:other"]),
    event=st.sampled_from(
        [
            "phx_reply",
            "phx_close",
            "phx_error",
            "broadcast",
            "presence_state",
            "presence_diff",
            "system",
            "custom",
        ]
    ),
    payload=payloads,
)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(server_messages, min_size=1, max_size=8), joined_first=st.booleans())
@pytest.mark.parametrize("fuzz_vsn", ["1.0.0", "2.0.0"])
def test_fuzz_receive_total_and_atomic(fuzz_vsn: str, messages: list[Message], joined_first: bool) -> None:
    """Whatever the server sends, receive() returns events or raises RemoteProtocolError, and
    a RemoteProtocolError leaves every bit of connection state as it was."""
    conn = ClientConnection(fuzz_vsn)
    server = FakeServer(fuzz_vsn)
    conn.connection_made(0.0)
    conn.add_channel(TOPIC)
    conn.join(TOPIC, {})  # ref 1
    conn.send_heartbeat(25.0)  # ref 2
    if joined_first:
        conn.receive(server.reply(Message(join_ref="1", ref="1", topic=TOPIC, event="phx_join")), 25.0)
        conn.receive(server.push(TOPIC, "presence_state", {"u1": {"metas": [{"phx_ref": "A"}]}}, "1"), 25.0)
        conn.push(TOPIC, "x", {})  # ref 3
    for i, msg in enumerate(messages):
        try:
            frame = server.send(msg)
        except LocalProtocolError:
            continue
        before = _snapshot(conn)
        try:
            events = conn.receive(frame, 26.0 + i)
        except RemoteProtocolError:
            assert _snapshot(conn) == before
        else:
            assert isinstance(events, list)


# -- postgres_changes (§6.4, §6.5) -------------------------------------------------------------


def _join_with_bindings(conn: ClientConnection, server: FakeServer, response: Any) -> list[Any]:
    bindings = (
        PostgresChanges(event="INSERT", schema="public", table="todos"),
        PostgresChanges(event="*", schema="public", table="todos", filter="id=eq.1"),
    )
    conn.add_channel(TOPIC, bindings)
    _, frame = conn.join(TOPIC, {"config": {}})
    return conn.receive(server.reply(server.recv(frame), response=response), 1.0)


SERVER_BINDINGS = {
    "postgres_changes": [
        {"event": "INSERT", "schema": "public", "table": "todos", "id": 11},
        {"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1", "id": 22},
    ]
}


def _change(ids: list[int], change_type: str = "INSERT") -> dict[str, Any]:
    return {
        "ids": ids,
        "data": {
            "schema": "public",
            "table": "todos",
            "commit_timestamp": "2024-01-01T12:00:00.123Z",
            "type": change_type,
            "columns": [{"name": "id", "type": "int4"}],
            "record": {"id": 1},
            "old_record": {"id": 1} if change_type != "INSERT" else None,
            "errors": None,
        },
    }


def test_postgres_change_routed_by_binding_ids_once(conn: ClientConnection, server: FakeServer) -> None:
    [reply] = _join_with_bindings(conn, server, SERVER_BINDINGS)
    assert reply.ok
    assert conn.channels[TOPIC].binding_ids == (11, 22)
    [change] = conn.receive(server.fanout(TOPIC, "postgres_changes", _change([11, 22])), 1.0)
    assert change == PostgresChange(
        topic=TOPIC,
        type="INSERT",
        schema="public",
        table="todos",
        commit_timestamp="2024-01-01T12:00:00.123Z",
        columns=({"name": "id", "type": "int4"},),
        record={"id": 1},
        old_record={},
        errors=(),
        bindings=(0, 1),
    )
    assert change.new == {"id": 1}


def test_postgres_change_event_type_filters_bindings(conn: ClientConnection, server: FakeServer) -> None:
    _join_with_bindings(conn, server, SERVER_BINDINGS)
    # An UPDATE listing both ids reaches only the "*" binding (the INSERT binding ignores it).
    [change] = conn.receive(server.fanout(TOPIC, "postgres_changes", _change([11, 22], "UPDATE")), 1.0)
    assert change.bindings == (1,)
    assert change.old == {"id": 1}
    # Ids of other channels' bindings match nothing here.
    assert conn.receive(server.fanout(TOPIC, "postgres_changes", _change([99])), 1.0) == []


def test_postgres_binding_mismatch_fails_the_join(conn: ClientConnection, server: FakeServer) -> None:
    wrong = {"postgres_changes": [{"event": "DELETE", "schema": "public", "table": "todos", "id": 11}]}
    [reply] = _join_with_bindings(conn, server, wrong)
    assert not reply.ok
    assert reply.response["reason"].startswith("mismatch between server and client bindings")
    assert conn.channels[TOPIC].state is S.ERRORED


def test_malformed_postgres_change_is_a_remote_error(conn: ClientConnection, server: FakeServer) -> None:
    _join_with_bindings(conn, server, SERVER_BINDINGS)
    with pytest.raises(RemoteProtocolError, match="has no 'data' object"):
        conn.receive(server.fanout(TOPIC, "postgres_changes", {"ids": [11]}), 1.0)
