"""The seed-002 serializer (SPEC L7): exact frames both ways, reply typing, errors, fuzzing.

Synchronous, no Trio: frames are written out literally (never produced by the code under
test) and piped between a client-role serializer (inside a real ``ClientConnection``) and a
server-role one, as h11's and wsproto's tests pipe two protocol objects together.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_realtime.protocol import (
    SEED002_VSN,
    Authenticated,
    Broadcast,
    BroadcastConfig,
    ChannelClosed,
    ChannelConfig,
    ChannelState,
    ClientConnection,
    HeartbeatAcked,
    LocalProtocolError,
    Message,
    PostgresChanges,
    PresenceConfig,
    RemoteProtocolError,
    ReplayConfig,
    Reply,
    Seed002Serializer,
    ServerEvent,
    SystemMessage,
    seed002_subprotocols,
    seed002_url,
    serializer_for,
)

TOPIC = "realtime:room"
JOIN_PAYLOAD = {
    "config": {
        "broadcast": {"ack": True, "self": False},
        "presence": {"enabled": False},
        "postgres_changes": [],
        "private": False,
    }
}


def server() -> Seed002Serializer:
    s = serializer_for("seed002", "server")
    assert isinstance(s, Seed002Serializer)
    return s


def client_conn() -> ClientConnection:
    conn = ClientConnection(SEED002_VSN, heartbeat_interval=25.0)
    conn.connection_made(0.0)
    return conn


def frame(text: str | bytes) -> Any:
    assert isinstance(text, str), "seed-002 frames are text"
    return json.loads(text)


def joined(conn: ClientConnection, srv: Seed002Serializer, topic: str = TOPIC) -> None:
    conn.add_channel(topic)
    _, wire = conn.join(topic, ChannelConfig().join_payload("token"))
    srv.decode(wire)
    reply = srv.encode(
        Message(
            join_ref="1",
            ref="1",
            topic=topic,
            event="phx_reply",
            payload={"status": "ok", "response": {"postgres_changes": []}},
        )
    )
    assert [type(e) for e in conn.receive(reply, 1.0)] == [Reply]
    assert conn.channels[topic].state is ChannelState.JOINED


# -- serializer_for and helpers ------------------------------------------------------------


@pytest.mark.parametrize("role", ["client", "server"])
def test_serializer_for_returns_a_new_serializer_per_call(role: str) -> None:
    a = serializer_for("seed002", role)  # type: ignore[arg-type]
    b = serializer_for("seed002", role)  # type: ignore[arg-type]
    assert isinstance(a, Seed002Serializer)
    assert a is not b
    assert (a.vsn, a.role) == ("seed002", role)


def test_subprotocols_carry_the_token() -> None:
    assert seed002_subprotocols("aaa.bbb.ccc") == ["jwt", "aaa.bbb.ccc"]


@pytest.mark.parametrize("token", ["", "has space", "comma,separated", "caf\u00e9"])
def test_subprotocols_refuse_tokens_a_header_cannot_carry(token: str) -> None:
    with pytest.raises(LocalProtocolError, match=r"^the seed-002 token travels as a WebSocket subprotocol"):
        seed002_subprotocols(token)


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        ("ws://h:1/seed002", None, "ws://h:1/seed002"),
        ("http://h:1/app/ws", None, "ws://h:1/app/ws"),
        ("https://h/ws?x=1", {"y": "2"}, "wss://h/ws?x=1&y=2"),
        ("ws://h", {}, "ws://h/"),
    ],
)
def test_url_is_used_as_given(url: str, params: dict[str, str] | None, expected: str) -> None:
    assert seed002_url(url, params) == expected


def test_url_scheme_is_checked() -> None:
    with pytest.raises(LocalProtocolError, match=r"^realtime URL must start with ws://"):
        seed002_url("ftp://h/seed002?secret=1")


# -- client to server: exact frames ---------------------------------------------------------


def test_client_frames_are_exact() -> None:
    conn = client_conn()
    conn.add_channel(TOPIC)
    _, wire = conn.join(TOPIC, ChannelConfig().join_payload("tok"))
    assert wire == '{"type":"subscribe","channel":"room","ref":"1"}'
    srv = server()
    srv.decode(wire)
    conn.receive('{"type":"subscribed","channel":"room","ref":"1"}', 0.1)
    _, wire = conn.push(TOPIC, "broadcast", {"type": "broadcast", "event": "hi", "payload": {"n": 1}})
    assert wire == '{"type":"channel_message","channel":"room","event":"hi","payload":{"n":1},"ref":"2"}'
    assert conn.send_heartbeat(25.0) == '{"type":"ping","ref":"3"}'
    _, wire = conn.push(TOPIC, "access_token", {"access_token": "t2"}, expect_reply=False)
    assert wire == '{"type":"auth","token":"t2"}'
    _, wire = conn.leave(TOPIC)
    assert wire == '{"type":"unsubscribe","channel":"room","ref":"5"}'


def test_connection_level_auth_frame() -> None:
    enc = serializer_for("seed002", "client")
    msg = Message(topic="phoenix", event="access_token", payload={"access_token": "abc"})
    assert enc.encode(msg) == '{"type":"auth","token":"abc"}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"type":"subscribe","channel":"room","ref":"1"}',
            Message(join_ref="1", ref="1", topic=TOPIC, event="phx_join", payload=JOIN_PAYLOAD),
        ),
        (
            '{"type":"unsubscribe","channel":"room","ref":"2"}',
            Message(ref="2", topic=TOPIC, event="phx_leave", payload={}),
        ),
        (
            '{"type":"channel_message","channel":"room","event":"e","payload":[1,"x"],"ref":"3"}',
            Message(
                ref="3",
                topic=TOPIC,
                event="broadcast",
                payload={"type": "broadcast", "event": "e", "payload": [1, "x"]},
            ),
        ),
        (
            '{"type":"channel_message","channel":"room","event":"e"}',
            Message(
                topic=TOPIC, event="broadcast", payload={"type": "broadcast", "event": "e", "payload": None}
            ),
        ),
        ('{"type":"ping","ref":4}', Message(ref="4", topic="phoenix", event="heartbeat", payload={})),
        (
            '{"type":"auth","token":"t"}',
            Message(topic="phoenix", event="access_token", payload={"access_token": "t"}),
        ),
    ],
)
def test_server_decodes_client_frames(text: str, expected: Message) -> None:
    assert server().decode(text) == expected


# -- server to client: exact frames ---------------------------------------------------------


def reply(ref: str | None, topic: str = TOPIC, status: str = "ok", response: Any = None) -> Message:
    return Message(
        ref=ref,
        topic=topic,
        event="phx_reply",
        payload={"status": status, "response": {} if response is None else response},
    )


@pytest.mark.parametrize(
    ("request_frame", "answer", "expected"),
    [
        (
            '{"type":"subscribe","channel":"room","ref":"1"}',
            reply("1"),
            {"type": "subscribed", "channel": "room", "ref": "1"},
        ),
        (
            '{"type":"unsubscribe","channel":"room","ref":"1"}',
            reply("1"),
            {"type": "unsubscribed", "channel": "room", "ref": "1"},
        ),
        (
            '{"type":"channel_message","channel":"room","event":"e","payload":{},"ref":"1"}',
            reply("1"),
            {"type": "ack", "ref": "1"},
        ),
        ('{"type":"ping","ref":"1"}', reply("1", topic="phoenix"), {"type": "pong", "ref": "1"}),
        (
            '{"type":"subscribe","channel":"room","ref":"1"}',
            reply("1", status="error", response={"reason": "JwtSignatureError: nope"}),
            {"type": "error", "ref": "1", "channel": "room", "message": "JwtSignatureError: nope"},
        ),
        (
            '{"type":"channel_message","channel":"room","event":"e"}',
            reply(None, status="error", response={"reason": "unmatched topic"}),
            {"type": "error", "ref": None, "channel": "room", "message": "unmatched topic"},
        ),
        (
            '{"type":"subscribe","channel":"room","ref":"1"}',
            reply("1", status="error"),
            {"type": "error", "ref": "1", "channel": "room", "message": "request failed"},
        ),
    ],
)
def test_server_types_replies_by_the_request(request_frame: str, answer: Message, expected: Any) -> None:
    srv = server()
    srv.decode(request_frame)
    assert srv.pending_requests == 1
    assert frame(srv.encode(answer)) == expected
    assert srv.pending_requests == 0  # answered: forgotten


def test_server_push_frames_are_exact() -> None:
    srv = server()
    fanout = Message(
        topic=TOPIC, event="broadcast", payload={"type": "broadcast", "event": "e", "payload": 1}
    )
    assert srv.encode(fanout) == '{"type":"channel_message","channel":"room","event":"e","payload":1}'
    with_meta = Message(
        topic=TOPIC,
        event="broadcast",
        payload={"type": "broadcast", "event": "e", "payload": 1, "meta": {"id": "m1"}},
    )
    assert frame(srv.encode(with_meta)) == {
        "type": "channel_message",
        "channel": "room",
        "event": "e",
        "payload": 1,
        "meta": {"id": "m1"},
    }
    hello = Message(topic="phoenix", event="auth_success", payload={"connectionId": "c-1"})
    assert srv.encode(hello) == '{"type":"auth_success","connectionId":"c-1"}'


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (
            Message(
                join_ref="1",
                topic=TOPIC,
                event="system",
                payload={"extension": "system", "status": "error", "message": "Token has expired"},
            ),
            {
                "type": "system",
                "channel": "room",
                "ref": "1",
                "payload": {"extension": "system", "status": "error", "message": "Token has expired"},
            },
        ),
        (
            Message(join_ref="1", ref="1", topic=TOPIC, event="phx_close", payload={}),
            {"type": "phx_close", "channel": "room", "ref": "1", "payload": {}},
        ),
        (
            Message(topic=TOPIC, event="presence_diff", payload={"joins": {}, "leaves": {}}),
            {"type": "presence_diff", "channel": "room", "payload": {"joins": {}, "leaves": {}}},
        ),
        (
            Message(topic="phoenix", event="phx_error", payload={}),
            {"type": "phx_error", "channel": None, "payload": {}},
        ),
    ],
)
def test_server_extension_frames(msg: Message, expected: Any) -> None:
    assert frame(server().encode(msg)) == expected


def test_server_refuses_binary_payloads() -> None:
    msg = Message(
        topic=TOPIC,
        event="broadcast",
        user_broadcast=True,
        payload={"type": "broadcast", "event": "e", "payload": b"\x00\x01"},
    )
    with pytest.raises(
        LocalProtocolError, match=r"^cannot send a binary payload on 'realtime:room' over seed-002"
    ):
        server().encode(msg)


# -- the pair: a ClientConnection over seed-002 ---------------------------------------------


def test_client_connection_over_seed002() -> None:
    conn = client_conn()
    srv = server()
    assert conn.receive('{"type":"auth_success","connectionId":"c-9"}', 0.0) == [
        Authenticated(connection_id="c-9")
    ]
    joined(conn, srv)
    # A heartbeat through the server serializer and back.
    ping = srv.decode(conn.send_heartbeat(25.0))
    assert conn.receive(srv.encode(reply(ping.ref, topic="phoenix")), 25.5) == [HeartbeatAcked(rtt=0.5)]
    # Fan-out from another subscriber.
    wire = srv.encode(
        Message(
            topic=TOPIC, event="broadcast", payload={"type": "broadcast", "event": "e", "payload": {"n": 1}}
        )
    )
    assert conn.receive(wire, 26.0) == [Broadcast(topic=TOPIC, event="e", payload={"n": 1})]
    # An acknowledged push: the client remembered the topic of ref 3.
    ref, pushed = conn.push(TOPIC, "broadcast", {"type": "broadcast", "event": "e", "payload": 2})
    push = srv.decode(pushed)
    events = conn.receive(srv.encode(reply(push.ref)), 27.0)
    assert events == [Reply(ref=ref, topic=TOPIC, event="broadcast", status="ok", response={})]
    # The server closes the channel: system message, then phx_close (its ref is the join ref).
    sys_frame = srv.encode(
        Message(
            join_ref="1",
            topic=TOPIC,
            event="system",
            payload={
                "extension": "system",
                "status": "error",
                "message": "Token has expired 1 seconds ago",
                "channel": "room",
            },
        )
    )
    close = srv.encode(Message(join_ref="1", ref="1", topic=TOPIC, event="phx_close", payload={}))
    assert isinstance(conn.receive(sys_frame, 28.0)[0], SystemMessage)
    assert conn.receive(close, 28.0) == [ChannelClosed(topic=TOPIC, reason="Token has expired 1 seconds ago")]
    assert conn.channels[TOPIC].state is ChannelState.CLOSED


def test_stale_phx_close_of_an_earlier_subscribe_is_ignored() -> None:
    conn = client_conn()
    joined(conn, server())
    assert conn.receive('{"type":"phx_close","channel":"room","ref":"0","payload":{}}', 1.0) == []
    assert conn.channels[TOPIC].state is ChannelState.JOINED


def test_join_error_reaches_the_core_as_an_error_reply() -> None:
    conn = client_conn()
    conn.add_channel(TOPIC)
    ref, _ = conn.join(TOPIC, ChannelConfig().join_payload(None))
    events = conn.receive('{"type":"error","ref":"1","channel":"room","message":"nope"}', 0.1)
    assert events == [
        Reply(ref=ref, topic=TOPIC, event="phx_join", status="error", response={"reason": "nope"})
    ]
    assert conn.channels[TOPIC].state is ChannelState.ERRORED


def test_leave_is_answered_by_unsubscribed() -> None:
    conn = client_conn()
    joined(conn, server())
    ref, _ = conn.leave(TOPIC)
    events = conn.receive(f'{{"type":"unsubscribed","channel":"room","ref":"{ref}"}}', 2.0)
    assert [e.event for e in events if isinstance(e, Reply)] == ["phx_leave"]
    assert conn.channels[TOPIC].state is ChannelState.CLOSED


def test_error_without_ref_is_a_notice() -> None:
    conn = client_conn()
    joined(conn, server())
    events = conn.receive('{"type":"error","ref":null,"channel":"room","message":"slow down"}', 1.0)
    assert events == [ServerEvent(topic=TOPIC, event="error", payload={"message": "slow down"})]
    assert conn.receive('{"type":"error","ref":null,"channel":null,"message":"x"}', 1.0) == []


def test_unknown_extension_frames_become_server_events() -> None:
    conn = client_conn()
    joined(conn, server())
    events = conn.receive('{"type":"custom","channel":"room","payload":{"a":1}}', 1.0)
    assert events == [ServerEvent(topic=TOPIC, event="custom", payload={"a": 1})]


# -- what seed-002 cannot say ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "what"),
    [
        (ChannelConfig(presence=PresenceConfig(enabled=True)), "presence is"),
        (
            ChannelConfig(postgres_changes=(PostgresChanges(event="*", schema="public"),)),
            "postgres_changes is",
        ),
        (ChannelConfig(private=True), "private channels is"),
        (ChannelConfig(broadcast=BroadcastConfig(receive_own=True)), "broadcast self-delivery is"),
        (
            ChannelConfig(private=True, presence=PresenceConfig(enabled=True)),
            "presence, private channels are",
        ),
    ],
)
def test_client_refuses_joins_seed002_cannot_honour(config: ChannelConfig, what: str) -> None:
    conn = client_conn()
    conn.add_channel(TOPIC)
    with pytest.raises(
        LocalProtocolError,
        match=rf"^cannot join 'realtime:room' over seed-002: {what} not part of the seed-002 protocol",
    ):
        conn.join(TOPIC, config.join_payload(None))
    assert conn.channels[TOPIC].state is ChannelState.CLOSED
    assert conn.serializer.pending_requests == 0  # type: ignore[attr-defined]


def test_client_refuses_replay_joins() -> None:
    config = ChannelConfig(broadcast=BroadcastConfig(replay=ReplayConfig(since=1)), private=False)
    enc = serializer_for("seed002", "client")
    msg = Message(
        join_ref="1",
        ref="1",
        topic=TOPIC,
        event="phx_join",
        payload=config.join_payload(None, replay_since=1),
    )
    with pytest.raises(LocalProtocolError, match=r"broadcast replay is not part of the seed-002 protocol"):
        enc.encode(msg)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (
            Message(
                ref="2",
                topic=TOPIC,
                event="presence",
                payload={"type": "presence", "event": "track", "payload": {}},
            ),
            r"^cannot track presence on 'realtime:room': presence is not part of the seed-002 protocol",
        ),
        (
            Message(
                ref="2",
                topic=TOPIC,
                event="broadcast",
                payload={"type": "broadcast", "event": "e", "payload": b"\x00"},
            ),
            r"^cannot send a binary payload on 'realtime:room' over seed-002",
        ),
        (
            Message(ref="2", topic=TOPIC, event="broadcast", payload={"type": "broadcast"}),
            r"^broadcast on 'realtime:room' needs a payload",
        ),
        (
            Message(
                ref="2",
                topic=TOPIC,
                event="broadcast",
                payload={"type": "broadcast", "event": "e", "payload": {1j}},
            ),
            r"^payload is not JSON-serialisable",
        ),
        (
            Message(ref="2", topic="room", event="phx_join", payload={}),
            r"^cannot send 'phx_join' on 'room' over seed-002: its channels are the Phoenix topics",
        ),
        (
            Message(ref="2", topic=TOPIC, event="custom", payload={}),
            r"^cannot send 'custom' on 'realtime:room' over seed-002: the protocol has only",
        ),
        (
            Message(topic="phoenix", event="auth_success", payload={"connectionId": "x"}),
            r"^cannot send 'auth_success' on 'phoenix' over seed-002",
        ),
    ],
)
def test_client_encode_errors(msg: Message, message: str) -> None:
    enc = Seed002Serializer("client")
    with pytest.raises(LocalProtocolError, match=message):
        enc.encode(msg)
    assert enc.pending_requests == 0  # a refused message leaves no trace


# -- the request memory ----------------------------------------------------------------------


def test_same_ref_twice_is_answered_in_order() -> None:
    srv = server()
    srv.decode('{"type":"subscribe","channel":"room","ref":"x"}')
    srv.decode('{"type":"channel_message","channel":"room","event":"e","ref":"x"}')
    assert frame(srv.encode(reply("x")))["type"] == "subscribed"
    assert frame(srv.encode(reply("x")))["type"] == "ack"
    assert srv.pending_requests == 0


def test_missing_refs_are_answered_with_null_in_order() -> None:
    srv = server()
    srv.decode('{"type":"subscribe","channel":"room"}')
    srv.decode('{"type":"unsubscribe","channel":"room"}')
    assert frame(srv.encode(reply(None))) == {"type": "subscribed", "channel": "room", "ref": None}
    assert frame(srv.encode(reply(None))) == {"type": "unsubscribed", "channel": "room", "ref": None}


def test_request_memory_is_bounded_oldest_first() -> None:
    srv = Seed002Serializer("server", max_pending=3)
    for ref in "12345":
        srv.decode(f'{{"type":"subscribe","channel":"room","ref":"{ref}"}}')
    assert srv.pending_requests == 3
    # "1" and "2" were forgotten: their replies fall back to ack; "3".."5" are still typed.
    assert frame(srv.encode(reply("1")))["type"] == "ack"
    assert frame(srv.encode(reply("3")))["type"] == "subscribed"
    assert srv.pending_requests == 2


def test_client_request_memory_is_bounded() -> None:
    conn = client_conn()
    for n in range(2000):
        conn.send_heartbeat(float(n))
    assert conn.serializer.pending_requests == 1024  # type: ignore[attr-defined]
    # A reply to a forgotten request still decodes (a pong is a pong); an answered one is dropped.
    assert conn.receive('{"type":"pong","ref":"1"}', 1999.5) == []  # not the pending heartbeat
    assert conn.serializer.pending_requests == 1024  # type: ignore[attr-defined]
    assert conn.receive('{"type":"pong","ref":"2000"}', 1999.5) == [HeartbeatAcked(rtt=0.5)]
    assert conn.serializer.pending_requests == 1023  # type: ignore[attr-defined]


def test_ack_for_a_forgotten_request_is_still_a_reply() -> None:
    dec = Seed002Serializer("client")
    assert dec.decode('{"type":"ack","ref":"9"}') == Message(
        ref="9", topic="", event="phx_reply", payload={"status": "ok", "response": {}}
    )


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"type":"ping"}', r"^binary frame on a seed-002 connection"),
        ("{", r"^frame is not valid JSON"),
        ("[]", r"^seed-002 frame must be a JSON object, got list"),
        ('{"type":1}', r"^seed-002 frame needs a string 'type'"),
        ('{"ref":"1"}', r"^seed-002 frame needs a string 'type'"),
        ('{"type":"subscribed","channel":"x"}', r"^unknown seed-002 message type 'subscribed' from a client"),
        (
            '{"type":"subscribe","ref":"1"}',
            r"^seed-002 'subscribe' frame needs a string 'channel', got missing",
        ),
        (
            '{"type":"subscribe","channel":5}',
            r"^seed-002 'subscribe' frame needs a string 'channel', got int",
        ),
        ('{"type":"ping","ref":1.5}', r"^ref must be a string or null, got float"),
        ('{"type":"ping","ref":true}', r"^ref must be a string or null, got bool"),
        (
            '{"type":"channel_message","channel":"c"}',
            r"^seed-002 'channel_message' frame needs a string 'event'",
        ),
        ('{"type":"auth"}', r"^seed-002 'auth' frame needs a string 'token'"),
        ('{"type":"ping","ref":NaN}', r"^frame is not valid JSON"),
    ],
)
def test_server_decode_errors(data: str | bytes, message: str) -> None:
    srv = server()
    with pytest.raises(RemoteProtocolError, match=message):
        srv.decode(data)
    assert srv.pending_requests == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"type":"auth_success"}', r"^seed-002 'auth_success' frame needs a string 'connectionId'"),
        (
            '{"type":"whatever"}',
            r"^unknown seed-002 message type 'whatever' \(extension frames carry a 'channel'\)",
        ),
        ('{"type":"subscribed","ref":"1"}', r"^seed-002 'subscribed' frame needs a string 'channel'"),
        (
            '{"type":"error","ref":"1","message":3}',
            r"^seed-002 'error' frame: 'message' must be a string or null",
        ),
        ('{"type":"channel_message","channel":"c","event":"e","meta":[]}', r"'meta' must be an object$"),
        ('{"type":"system","channel":7}', r"^seed-002 'system' frame: 'channel' must be a string or null"),
        ('{"type":"pong","ref":{}}', r"^ref must be a string or null, got dict"),
    ],
)
def test_client_decode_errors(data: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        Seed002Serializer("client").decode(data)


def test_connection_rejects_auth_success_without_an_id() -> None:
    conn = client_conn()
    with pytest.raises(RemoteProtocolError):
        conn.receive('{"type":"auth_success","connectionId":null}', 0.0)


# -- fuzzing -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
TYPES = [
    "subscribe",
    "unsubscribe",
    "channel_message",
    "ping",
    "auth",
    "subscribed",
    "unsubscribed",
    "ack",
    "error",
    "pong",
    "auth_success",
    "system",
    "phx_close",
]
KEYS = ["type", "channel", "ref", "event", "payload", "token", "message", "connectionId", "meta"]
frames = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6).flatmap(
    lambda d: st.sampled_from(TYPES).map(lambda t: {**d, "type": t}) | st.just(d)
)


@pytest.mark.parametrize("role", ["client", "server"])
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=frames)
def test_fuzz_structured_frames(role: str, obj: dict[str, Any]) -> None:
    dec = Seed002Serializer(role)  # type: ignore[arg-type]
    try:
        msg = dec.decode(json.dumps(obj))
    except RemoteProtocolError:
        return
    assert isinstance(msg, Message)


@pytest.mark.parametrize("role", ["client", "server"])
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.text(max_size=60) | st.binary(max_size=20))
def test_fuzz_arbitrary_frames(role: str, data: str | bytes) -> None:
    try:
        Seed002Serializer(role).decode(data)  # type: ignore[arg-type]
    except RemoteProtocolError:
        pass


@settings(max_examples=200)
@given(event=st.text(min_size=1, max_size=10), payload=json_values, channel=st.text(max_size=10))
def test_fuzz_broadcast_round_trip(event: str, payload: Any, channel: str) -> None:
    """Client push -> server decode -> server fan-out -> client decode keeps event and payload."""
    topic = "realtime:" + channel
    cli, srv = Seed002Serializer("client"), Seed002Serializer("server")
    body = {"type": "broadcast", "event": event, "payload": payload}
    pushed = srv.decode(cli.encode(Message(ref="1", topic=topic, event="broadcast", payload=body)))
    assert (pushed.topic, pushed.payload) == (topic, body)
    out = cli.decode(srv.encode(Message(topic=topic, event="broadcast", payload=pushed.payload)))
    assert out == Message(topic=topic, event="broadcast", payload=body)
    assert frame(srv.encode(reply("1", topic=topic))) == {"type": "ack", "ref": "1"}
