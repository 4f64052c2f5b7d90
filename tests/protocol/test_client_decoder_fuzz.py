"""Hostile input to the client's decoder: ``ClientConnection.receive`` never raises anything but
``RemoteProtocolError``.

Sync tests, no Trio (this is the sans-IO core). Each example builds a connection whose
channels cover every kind (broadcast, presence with a state received, postgres_changes with
bindings acknowledged, one still JOINING, one LEAVING) and a heartbeat in flight, for vsn
1.0.0, 2.0.0 and seed002; then it feeds frames of every sort: garbage text and bytes,
JSON of the wrong shape, deep nesting, huge numbers, lone surrogates, truncated and oversized
binary frames, and well-framed messages for the channels' own topics, join refs and pending
refs whose payloads are random JSON or almost-right shapes, so the deep paths (presence sync,
postgres matching, reply routing, binding checks) are reached with garbage inside.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_realtime.protocol import (
    BroadcastConfig,
    ChannelConfig,
    ClientConnection,
    Message,
    PostgresChanges,
    PresenceConfig,
    RemoteProtocolError,
    serializer_for,
)

VSNS = ["1.0.0", "2.0.0", "seed002"]

PLAIN = "realtime:plain"
PRESENCE = "realtime:presence"
POSTGRES = "realtime:pg"
JOINING = "realtime:joining"
LEAVING = "realtime:leaving"
BINDINGS = (PostgresChanges(event="INSERT", schema="public", table="todos"),
            PostgresChanges(event="*", schema="public", table="todos", filter="id=eq.1"))


class Setup:
    """A connection with channels of every kind, and the refs a hostile server could echo."""

    def __init__(self, vsn: str) -> None:
        self.vsn = vsn
        self.conn = conn = ClientConnection(vsn)
        self.server = server = serializer_for(vsn, "server")
        conn.connection_made(0.0)
        self.refs: list[str] = []
        self.join_refs: list[str] = []
        seed = vsn == "seed002"
        channels: list[tuple[str, ChannelConfig]] = [
            (PLAIN, ChannelConfig(broadcast=BroadcastConfig(ack=True)))
        ]
        if not seed:
            channels += [
                (PRESENCE, ChannelConfig(presence=PresenceConfig(key="me", enabled=True))),
                (POSTGRES, ChannelConfig(postgres_changes=BINDINGS)),
            ]
        channels += [(JOINING, ChannelConfig()), (LEAVING, ChannelConfig())]
        for topic, config in channels:
            conn.add_channel(topic, config.postgres_changes)
            ref, frame = conn.join(topic, config.join_payload(None))
            self.join_refs.append(ref)
            server.decode(frame)  # seed-002's server side remembers what each ref was
            if topic == JOINING:
                continue
            echoed = [{**b.to_json(), "id": 1000 + i} for i, b in enumerate(config.postgres_changes)]
            reply = Message(join_ref=ref, ref=ref, topic=topic, event="phx_reply",
                            payload={"status": "ok", "response": {"postgres_changes": echoed}})
            conn.receive(server.encode(reply), 0.0)
        if not seed:
            state = {"other": {"metas": [{"phx_ref": "r1", "x": 1}]}}
            conn.receive(server.encode(Message(join_ref=self.join_refs[1], topic=PRESENCE,
                                               event="presence_state", payload=state)), 0.0)
        ref, frame = conn.leave(LEAVING)
        server.decode(frame)
        self.refs.append(ref)
        ref, frame = conn.push(PLAIN, "broadcast", {"type": "broadcast", "event": "e", "payload": {}})
        server.decode(frame)
        self.refs.append(ref)
        frame = conn.send_heartbeat(1.0)
        server.decode(frame)
        self.refs.append(str(conn._ref))
        self.topics = [topic for topic, _ in channels]


# -- strategies ----------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
EVENTS = ["phx_reply", "broadcast", "presence_state", "presence_diff", "postgres_changes", "system",
          "phx_close", "phx_error", "auth_success", "heartbeat", "INSERT", "whatever", ""]


@st.composite
def shaped_payloads(draw: st.DrawFn, event: str) -> Any:
    """Payloads that are almost what ``event`` expects, with garbage in the details."""
    junk = draw(json_values)
    if event == "phx_reply":
        response = draw(st.sampled_from([junk, {"postgres_changes": junk}, {"postgres_changes": [
            {"event": draw(st.sampled_from(["INSERT", "*", 5])), "schema": "public", "table": "todos",
             "id": draw(scalars)}, junk]}]))
        return {"status": draw(st.sampled_from(["ok", "error", junk])), "response": response}
    if event == "broadcast":
        return {"type": "broadcast", "event": draw(scalars), "payload": junk, "meta": draw(json_values)}
    if event == "presence_state":
        metas = [junk, {"metas": junk}, {"metas": [{"phx_ref": draw(scalars)}, junk]}]
        return {draw(st.text(max_size=5)): draw(st.sampled_from(metas))}
    if event == "presence_diff":
        entry = {draw(st.text(max_size=5)): {"metas": draw(st.sampled_from([
            junk, [{"phx_ref": draw(scalars), "phx_ref_prev": draw(scalars)}], [junk]]))}}
        return {"joins": draw(st.sampled_from([entry, junk])), "leaves": draw(st.sampled_from([entry, junk]))}
    if event == "postgres_changes":
        data = {"type": draw(st.sampled_from(["INSERT", "UPDATE", "DELETE", junk])), "schema": draw(scalars),
                "table": draw(scalars), "columns": draw(json_values), "record": draw(json_values),
                "old_record": draw(json_values), "errors": draw(json_values),
                "commit_timestamp": draw(scalars)}
        ids = draw(st.sampled_from([[1000, 1001], [junk], junk, [[1000]], [{"a": 1}]]))
        return {"ids": ids, "data": data}
    if event == "system":
        return {"extension": draw(scalars), "status": draw(st.sampled_from(["ok", "error", junk])),
                "message": draw(scalars), "channel": draw(scalars)}
    if event == "auth_success":
        return {"connectionId": draw(scalars)}
    return junk


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


@st.composite
def framed(draw: st.DrawFn, setup: Setup) -> str | bytes:
    """A well-framed message for this connection's topics and refs, with a hostile payload."""
    event = draw(st.sampled_from(EVENTS))
    topic = draw(st.sampled_from([*setup.topics, "phoenix", "realtime:unknown", ""]))
    ref = draw(st.sampled_from([*setup.refs, *setup.join_refs, None, "999"]))
    join_ref = draw(st.sampled_from([*setup.join_refs, None, "999"]))
    payload = draw(shaped_payloads(event) | json_values)
    if setup.vsn == "1.0.0":
        return _json({"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref})
    if setup.vsn == "2.0.0":
        return _json([join_ref, ref, topic, event, payload])
    channel = topic.removeprefix("realtime:")
    kind = draw(st.sampled_from(["subscribed", "unsubscribed", "ack", "error", "pong", "channel_message",
                                 "auth_success", "system", "phx_close", "phx_error", "presence_state",
                                 "presence_diff", "postgres_changes", "nonsense"]))
    obj: dict[str, Any] = {"type": kind, "channel": draw(st.sampled_from([channel, None, 5])), "ref": ref,
                           "event": draw(scalars), "payload": payload, "message": draw(scalars),
                           "connectionId": draw(scalars), "meta": draw(json_values)}
    return _json({k: v for k, v in obj.items() if draw(st.booleans()) or k == "type"})


@st.composite
def binary_frames(draw: st.DrawFn, setup: Setup) -> bytes:
    """vsn 2.0.0 binary frames: well-formed kinds 0-4, then truncated, padded or corrupted."""
    kind = draw(st.integers(min_value=0, max_value=6))
    topic = draw(st.sampled_from(setup.topics)).encode()
    event = draw(st.sampled_from([b"broadcast", b"e", b"phx_reply", "é".encode()]))
    join_ref = draw(st.sampled_from([r.encode() for r in setup.join_refs] + [b""]))
    ref = draw(st.sampled_from([r.encode() for r in setup.refs] + [b""]))
    meta = draw(st.sampled_from([b"", b'{"id":"x","replayed":true}', b"[1]", b"{", b"\xff"]))
    data = draw(st.sampled_from([b'{"a":1}', b"\x00\x01", b"", b"{", b"[" * 3000 + b"]" * 3000]))
    if kind == 4:
        encoding = draw(st.integers(min_value=0, max_value=3))
        frame = bytes((4, len(topic), len(event), len(meta), encoding)) + topic + event + meta + data
    elif kind == 1:
        status = draw(st.sampled_from([b"ok", b"error"]))
        header = bytes((1, len(join_ref), len(ref), len(topic), len(status)))
        frame = header + join_ref + ref + topic + status + data
    elif kind == 2:
        frame = bytes((2, len(topic), len(event))) + topic + event + data
    elif kind == 0:
        frame = bytes((0, len(join_ref), len(topic), len(event))) + join_ref + topic + event + data
    else:
        frame = bytes((kind,)) + draw(st.binary(max_size=40))
    mutation = draw(st.sampled_from(["none", "truncate", "lengths", "flip"]))
    if mutation == "truncate":
        frame = frame[: draw(st.integers(min_value=0, max_value=len(frame)))]
    elif mutation == "lengths" and len(frame) > 4:
        at = draw(st.integers(min_value=1, max_value=4))
        frame = frame[:at] + bytes((draw(st.integers(0, 255)),)) + frame[at + 1 :]
    elif mutation == "flip" and frame:
        at = draw(st.integers(min_value=0, max_value=len(frame) - 1))
        frame = frame[:at] + bytes((frame[at] ^ 0xFF,)) + frame[at + 1 :]
    return frame


GARBAGE_TEXT = [
    "", "{", "[", "null", "[]", "{}", "[1,2,3,4]", '"x"', "NaN", "[NaN]", "Infinity", "1e999",
    "1" * 5000, "[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000,
    '["\\ud800","\\udfff","realtime:plain","broadcast",{"event":"\\ud800"}]',
    '{"topic":"realtime:plain","event":"broadcast","payload":{"event":"\\udc00","payload":1},"ref":null}',
    '{"type":"channel_message","channel":"plain","event":"e","payload":{"x":"\\ud800"}}',
    "[" + "1," * 10 + "1]", "\x00", "\ufeff[]",
]


def hostile(setup: Setup) -> st.SearchStrategy[str | bytes]:
    options: list[st.SearchStrategy[Any]] = [
        st.sampled_from(GARBAGE_TEXT),
        st.text(max_size=200),
        st.binary(max_size=200),
        json_values.map(_json),
        framed(setup),
        framed(setup),
    ]
    if setup.vsn == "2.0.0":
        options.append(binary_frames(setup))
    return st.one_of(options)


def feed(setup: Setup, frames: list[str | bytes]) -> None:
    for n, frame in enumerate(frames):
        try:
            events = setup.conn.receive(frame, 2.0 + n)
        except RemoteProtocolError:
            continue  # the one allowed failure: the frame is the server's fault
        assert isinstance(events, list)


@pytest.mark.parametrize("vsn", VSNS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_receive_raises_only_remote_protocol_error(vsn: str, data: st.DataObject) -> None:
    setup = Setup(vsn)
    frames = data.draw(st.lists(hostile(setup), min_size=1, max_size=12))
    feed(setup, frames)


@pytest.mark.parametrize("vsn", VSNS)
def test_every_garbage_sample(vsn: str) -> None:
    """The hand-written nasties, each on a fresh connection (hypothesis may not draw them all)."""
    for frame in GARBAGE_TEXT:
        feed(Setup(vsn), [frame, frame.encode("utf-8", "surrogatepass")])


def test_setup_reaches_every_state() -> None:
    """The fuzzed connection really has each kind of channel in the intended state."""
    setup = Setup("2.0.0")
    states = {topic: ch.state.name for topic, ch in setup.conn.channels.items()}
    assert states == {PLAIN: "JOINED", PRESENCE: "JOINED", POSTGRES: "JOINED", JOINING: "JOINING",
                      LEAVING: "LEAVING"}
    assert setup.conn.channels[POSTGRES].binding_ids == (1000, 1001)
    assert setup.conn.pending_refs == 3  # the JOINING join, the leave and the acked push
