"""Golden frames and error cases for the vsn 1.0.0 / 2.0.0 serializers (PROTOCOL.md §2).

Golden byte strings are copied from the worked examples in PROTOCOL.md §2.2-§2.4 (which cite
the js2 serializer tests and the Realtime server's ``message_dispatcher_test.exs``); they are
written out literally here, never produced by the code under test.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_realtime.protocol import (
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    V1Serializer,
    V2Serializer,
    decode_binary,
    serializer_for,
)

V1C = serializer_for("1.0.0", "client")
V1S = serializer_for("1.0.0", "server")
V2C = serializer_for("2.0.0", "client")
V2S = serializer_for("2.0.0", "server")


# -- serializer_for ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vsn", "cls"),
    [("1.0.0", V1Serializer), ("1", V1Serializer), ("2.0.0", V2Serializer), ("2", V2Serializer)],
)
@pytest.mark.parametrize("role", ["client", "server"])
def test_serializer_for(vsn: str, cls: type, role: str) -> None:
    s = serializer_for(vsn, role)  # type: ignore[arg-type]
    assert type(s) is cls
    assert s.role == role


@pytest.mark.parametrize("vsn", ["3.0.0", "", "10.0.0", "v2"])
def test_serializer_for_unsupported_vsn(vsn: str) -> None:
    with pytest.raises(
        LocalProtocolError, match=rf"^unsupported protocol version {vsn!r}; use one of 1\.0\.0, 2\.0\.0$"
    ):
        serializer_for(vsn, "client")


# -- vsn 1.0.0 (§2.2) --------------------------------------------------------------------


def test_v1_client_encode_join_golden() -> None:
    msg = Message(
        join_ref="1",
        ref="1",
        topic="realtime:topic",
        event="phx_join",
        payload={"config": {"private": False}},
    )
    frame = V1C.encode(msg)
    assert frame == (
        '{"topic":"realtime:topic","event":"phx_join","payload":{"config":{"private":false}},'
        '"ref":"1","join_ref":"1"}'
    )
    assert set(json.loads(frame)) == {"topic", "event", "payload", "ref", "join_ref"}


def test_v1_client_encode_heartbeat_golden() -> None:
    frame = V1C.encode(Message(topic="phoenix", event="heartbeat", ref="1", payload={}))
    assert frame == '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1","join_ref":null}'


def test_v1_server_encode_omits_join_ref() -> None:
    msg = Message(
        join_ref="1", ref="1", topic="phoenix", event="phx_reply", payload={"status": "ok", "response": {}}
    )
    frame = V1S.encode(msg)
    assert (
        frame == '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}'
    )
    assert set(json.loads(frame)) == {"topic", "event", "payload", "ref"}


def test_v1_server_encode_dispatcher_examples() -> None:
    """The two frames of message_dispatcher_test.exs (key order differs: compare as JSON)."""
    plain = V1S.encode(Message(topic="realtime:topic", event="event", payload={"data": "test"}))
    assert json.loads(plain) == json.loads(
        '{"event":"event","payload":{"data":"test"},"ref":null,"topic":"realtime:topic"}'
    )
    user = Message(
        topic="realtime:topic",
        event="broadcast",
        payload={
            "type": "broadcast",
            "event": "event123",
            "payload": {"data": "test"},
            "meta": {"id": "123", "replayed": True},
        },
        user_broadcast=True,
    )
    assert json.loads(V1S.encode(user)) == json.loads(
        '{"event":"broadcast","payload":{"event":"event123","meta":{"id":"123","replayed":true},'
        '"payload":{"data":"test"},"type":"broadcast"},"ref":null,"topic":"realtime:topic"}'
    )


def test_v1_decode_server_frame() -> None:
    msg = V1C.decode(
        '{"event":"broadcast","payload":{"event":"event123","meta":{"id":"123","replayed":true},'
        '"payload":{"data":"test"},"type":"broadcast"},"ref":null,"topic":"realtime:topic"}'
    )
    assert msg == Message(
        join_ref=None,
        ref=None,
        topic="realtime:topic",
        event="broadcast",
        payload={
            "event": "event123",
            "meta": {"id": "123", "replayed": True},
            "payload": {"data": "test"},
            "type": "broadcast",
        },
    )


def test_v1_decode_py_client_frame() -> None:
    """The py client's pydantic dump: other key order, ``join_ref: null``."""
    msg = V1S.decode('{"event":"phx_join","payload":{"a":1},"topic":"realtime:x","ref":"1","join_ref":null}')
    assert msg == Message(join_ref=None, ref="1", topic="realtime:x", event="phx_join", payload={"a": 1})


def test_v1_server_requires_ref_key_client_does_not() -> None:
    """§2.2: Phoenix ``Map.fetch!``es ``ref`` from clients (null is fine, absent is not)."""
    with pytest.raises(RemoteProtocolError, match=r"^vsn 1\.0\.0 frame is missing the 'ref' key$"):
        V1S.decode('{"topic":"t","event":"e","payload":{}}')
    assert V1S.decode('{"topic":"t","event":"e","payload":{},"ref":null}').ref is None
    assert V1C.decode('{"topic":"t","event":"e","payload":{}}').ref is None


def test_v1_decode_numeric_ref_becomes_string() -> None:
    msg = V1S.decode('{"topic":"t","event":"e","payload":{},"ref":7,"join_ref":3}')
    assert (msg.ref, msg.join_ref) == ("7", "3")


def test_v1_encode_bytes_broadcast_is_local_error() -> None:
    msg = Message(
        join_ref="1",
        ref="2",
        topic="realtime:room",
        event="broadcast",
        payload={"type": "broadcast", "event": "e", "payload": b"\x00\x01"},
    )
    with pytest.raises(LocalProtocolError, match=r"binary payload on 'realtime:room'.*need vsn 2\.0\.0"):
        V1C.encode(msg)
    with pytest.raises(LocalProtocolError, match=r"binary payload on 'realtime:room'"):
        V1S.encode(attrs_evolve_user(msg))


def attrs_evolve_user(msg: Message) -> Message:
    import attrs

    return attrs.evolve(msg, user_broadcast=True)


def test_v1_encode_bytes_in_other_event_is_local_error() -> None:
    msg = Message(topic="realtime:room", event="custom", payload={"blob": b"\x00"})
    with pytest.raises(LocalProtocolError, match=r"^payload is not JSON-serialisable: .*bytes"):
        V1C.encode(msg)


def test_encode_nan_is_local_error() -> None:
    with pytest.raises(LocalProtocolError, match=r"^payload is not JSON-serialisable"):
        V2C.encode(Message(topic="t", event="e", payload={"x": float("nan")}))


# -- vsn 2.0.0 text (§2.3) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "frame"),
    [
        (
            Message(join_ref="0", ref="1", topic="t", event="e", payload={"foo": 1}),
            '["0","1","t","e",{"foo":1}]',
        ),
        (Message(topic="t", event="e", payload={"foo": 1}), '[null,null,"t","e",{"foo":1}]'),
        (Message(topic="phoenix", event="heartbeat", ref="1"), '[null,"1","phoenix","heartbeat",{}]'),
    ],
)
def test_v2_text_golden(msg: Message, frame: str) -> None:
    assert V2C.encode(msg) == frame
    assert V2S.decode(frame) == msg
    assert V2S.encode(msg) == frame
    assert V2C.decode(frame) == msg


def test_v2_server_reply_golden() -> None:
    reply = Message(
        join_ref="1",
        ref="1",
        topic="realtime:room",
        event="phx_reply",
        payload={"status": "ok", "response": {"postgres_changes": []}},
    )
    assert (
        V2S.encode(reply)
        == '["1","1","realtime:room","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]'
    )


def test_v2_decode_accepts_more_than_five_elements() -> None:
    """The server decoder matches ``[join_ref, ref, topic, event, payload | _]``."""
    msg = V2S.decode('["1","2","t","e",{"a":1},"extra",7]')
    assert msg == Message(join_ref="1", ref="2", topic="t", event="e", payload={"a": 1})


def test_v2_client_text_broadcast_without_event_stays_text() -> None:
    """Only broadcasts whose payload["event"] is a string become kind 3."""
    msg = Message(join_ref="1", ref="2", topic="t", event="broadcast", payload={"type": "broadcast"})
    assert V2C.encode(msg) == '["1","2","t","broadcast",{"type":"broadcast"}]'


def test_v2_text_broadcast_bytes_without_user_event_is_local_error() -> None:
    msg = Message(topic="t", event="broadcast", payload={"payload": b"x"})
    with pytest.raises(LocalProtocolError, match=r"binary payload on 't'"):
        V2S.encode(msg)


# -- vsn 2.0.0 binary (§2.4) -------------------------------------------------------------

JS2_KIND3 = (
    bytes([0x03, 0x02, 0x01, 0x03, 0x0A, 0x00, 0x01]) + b"10" + b"1" + b"top" + b"user-event" + b'{"a":"b"}'
)
JS2_KIND4 = (
    bytes([0x04, 0x03, 0x0A, 0x11, 0x01]) + b"top" + b"user-event" + b'{"replayed":true}' + b'{"a":"b"}'
)
SERVER_META = b'{"id":"123","replayed":true}'
SERVER_KIND4 = (
    bytes([4, 14, 8, len(SERVER_META), 1])
    + b"realtime:topic"
    + b"event123"
    + SERVER_META
    + b'{"data":"test"}'
)


def test_kind3_encode_js2_worked_example() -> None:
    msg = Message(
        join_ref="10",
        ref="1",
        topic="top",
        event="broadcast",
        payload={"type": "broadcast", "event": "user-event", "payload": {"a": "b"}},
    )
    assert V2C.encode(msg) == JS2_KIND3


def test_kind3_server_decode_js2_worked_example() -> None:
    assert V2S.decode(JS2_KIND3) == Message(
        join_ref="10",
        ref="1",
        topic="top",
        event="broadcast",
        payload={"type": "broadcast", "event": "user-event", "payload": {"a": "b"}},
        user_broadcast=True,
    )


def test_kind3_server_decode_drops_metadata() -> None:
    """js2's allowedMetadataKeys example: metadata is validated but not passed on."""
    meta = b'{"extra":"bit"}'
    frame = (
        bytes([3, 2, 1, 3, 10, len(meta), 1]) + b"10" + b"1" + b"top" + b"user-event" + meta + b'{"a":"b"}'
    )
    assert frame[5] == 0x0F
    msg = V2S.decode(frame)
    assert msg.payload == {"type": "broadcast", "event": "user-event", "payload": {"a": "b"}}


def test_kind4_decode_js2_worked_example() -> None:
    assert V2C.decode(JS2_KIND4) == Message(
        join_ref=None,
        ref=None,
        topic="top",
        event="broadcast",
        payload={
            "type": "broadcast",
            "event": "user-event",
            "meta": {"replayed": True},
            "payload": {"a": "b"},
        },
        user_broadcast=True,
    )


def test_kind4_decode_server_dispatcher_example() -> None:
    assert len(SERVER_META) == 28
    assert V2C.decode(SERVER_KIND4) == Message(
        topic="realtime:topic",
        event="broadcast",
        payload={
            "type": "broadcast",
            "event": "event123",
            "meta": {"id": "123", "replayed": True},
            "payload": {"data": "test"},
        },
        user_broadcast=True,
    )


def test_kind4_server_encode_dispatcher_example() -> None:
    msg = Message(
        topic="realtime:topic",
        event="broadcast",
        payload={
            "type": "broadcast",
            "event": "event123",
            "meta": {"id": "123", "replayed": True},
            "payload": {"data": "test"},
        },
        user_broadcast=True,
    )
    assert V2S.encode(msg) == SERVER_KIND4


def test_kind4_server_encode_without_meta() -> None:
    msg = Message(
        topic="top",
        event="broadcast",
        user_broadcast=True,
        payload={"type": "broadcast", "event": "user-event", "payload": {"a": "b"}},
    )
    assert V2S.encode(msg) == bytes([4, 3, 10, 0, 1]) + b"top" + b"user-event" + b'{"a":"b"}'
    # metadata_len 0 decodes to no "meta" key at all
    assert "meta" not in V2C.decode(V2S.encode(msg)).payload


def test_binary_encoding0_round_trip() -> None:
    """encoding 0 = opaque bytes, both directions (client kind 3 -> server -> kind 4)."""
    blob = bytes(range(256))
    push = Message(
        join_ref="1",
        ref="5",
        topic="realtime:room",
        event="broadcast",
        payload={"type": "broadcast", "event": "blob", "payload": blob},
    )
    frame = V2C.encode(push)
    assert isinstance(frame, bytes)
    assert frame[:7] == bytes([3, 1, 1, 13, 4, 0, 0])
    assert frame.endswith(blob)
    at_server = V2S.decode(frame)
    assert at_server == Message(
        join_ref="1",
        ref="5",
        topic="realtime:room",
        event="broadcast",
        payload={"type": "broadcast", "event": "blob", "payload": blob},
        user_broadcast=True,
    )
    out = V2S.encode(
        Message(topic=at_server.topic, event="broadcast", payload=at_server.payload, user_broadcast=True)
    )
    assert out == bytes([4, 13, 4, 0, 0]) + b"realtime:room" + b"blob" + blob
    assert V2C.decode(out).payload == {"type": "broadcast", "event": "blob", "payload": blob}


def test_binary_encoding0_accepts_bytearray_and_memoryview() -> None:
    for data in (bytearray(b"\x01\x02"), memoryview(b"\x01\x02")):
        frame = V2C.encode(Message(topic="t", event="broadcast", payload={"event": "e", "payload": data}))
        assert isinstance(frame, bytes)
        assert frame.endswith(b"\x01\x02")
        assert V2S.decode(frame).payload["payload"] == b"\x01\x02"


def test_v2_decode_accepts_bytearray_and_memoryview_frames() -> None:
    assert V2C.decode(bytearray(JS2_KIND4)) == V2C.decode(JS2_KIND4)
    assert V2C.decode(memoryview(JS2_KIND4)) == V2C.decode(JS2_KIND4)


def test_kind3_empty_join_ref_and_ref_decode_as_none() -> None:
    frame = V2C.encode(Message(topic="t", event="broadcast", payload={"event": "e", "payload": 1}))
    assert frame == bytes([3, 0, 0, 1, 1, 0, 1]) + b"t" + b"e" + b"1"
    msg = V2S.decode(frame)
    assert (msg.join_ref, msg.ref) == (None, None)


def test_kind0_server_decode() -> None:
    frame = bytes([0, 1, 1, 4, 3]) + b"1" + b"2" + b"top1" + b"evt" + b"\xff\x00data"
    assert V2S.decode(frame) == Message(
        join_ref="1", ref="2", topic="top1", event="evt", payload=b"\xff\x00data"
    )


def test_kind0_client_decode_has_no_ref() -> None:
    frame = bytes([0, 2, 3, 5]) + b"12" + b"top" + b"event" + b"\x01\x02"
    assert V2C.decode(frame) == Message(
        join_ref="12", ref=None, topic="top", event="event", payload=b"\x01\x02"
    )


def test_kind1_client_decode_reply() -> None:
    frame = bytes([1, 1, 2, 3, 2]) + b"1" + b"10" + b"top" + b"ok" + b"\x00bin"
    assert V2C.decode(frame) == Message(
        join_ref="1",
        ref="10",
        topic="top",
        event="phx_reply",
        payload={"status": "ok", "response": b"\x00bin"},
    )


def test_kind2_client_decode_broadcast() -> None:
    frame = bytes([2, 3, 5]) + b"top" + b"event" + b"\x09\x08"
    assert V2C.decode(frame) == Message(topic="top", event="event", payload=b"\x09\x08")


def test_decode_binary_function_matches_serializer() -> None:
    assert decode_binary(JS2_KIND4, "client") == V2C.decode(JS2_KIND4)
    assert decode_binary(JS2_KIND3, "server") == V2S.decode(JS2_KIND3)


def test_non_ascii_strings_use_byte_lengths() -> None:
    msg = Message(
        join_ref="1", ref="2", topic="realtime:été", event="broadcast", payload={"event": "ñ", "payload": "x"}
    )
    frame = V2C.encode(msg)
    assert isinstance(frame, bytes)
    assert frame[3] == len("realtime:été".encode()) == 14
    assert frame[4] == 2
    decoded = V2S.decode(frame)
    assert (decoded.topic, decoded.payload["event"], decoded.payload["payload"]) == ("realtime:été", "ñ", "x")


@pytest.mark.parametrize(
    ("field", "msg"),
    [
        ("topic", Message(topic="t" * 256, event="broadcast", payload={"event": "e"})),
        ("topic", Message(topic="é" * 128, event="broadcast", payload={"event": "e"})),
        ("broadcast event name", Message(topic="t", event="broadcast", payload={"event": "e" * 300})),
        ("join_ref", Message(join_ref="1" * 256, topic="t", event="broadcast", payload={"event": "e"})),
        ("ref", Message(ref="1" * 256, topic="t", event="broadcast", payload={"event": "e"})),
    ],
)
def test_binary_field_over_255_bytes_is_local_error(field: str, msg: Message) -> None:
    with pytest.raises(LocalProtocolError, match=rf"^{field} is \d+ bytes; binary frames allow at most 255$"):
        V2C.encode(msg)


def test_binary_topic_of_exactly_255_bytes_is_fine() -> None:
    frame = V2C.encode(Message(topic="t" * 255, event="broadcast", payload={"event": "e"}))
    assert frame[3] == 255


def test_kind4_topic_over_255_bytes_is_local_error() -> None:
    msg = Message(
        topic="t" * 256, event="broadcast", payload={"event": "e", "payload": 1}, user_broadcast=True
    )
    with pytest.raises(LocalProtocolError, match=r"^topic is 256 bytes; binary frames allow at most 255$"):
        V2S.encode(msg)


def test_kind4_metadata_over_255_bytes_is_local_error() -> None:
    msg = Message(
        topic="t",
        event="broadcast",
        user_broadcast=True,
        payload={"event": "e", "payload": 1, "meta": {"id": "x" * 300}},
    )
    with pytest.raises(LocalProtocolError, match=r"^broadcast metadata is 3\d\d bytes; at most 255 allowed$"):
        V2S.encode(msg)


# -- RemoteProtocolError cases -----------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "frame", "pattern"),
    [
        # text framing
        (V1S, "{not json", r"^frame is not valid JSON: "),
        (V2S, "[1, 2", r"^frame is not valid JSON: "),
        (V1C, "", r"^frame is not valid JSON: "),
        (V2C, "", r"^frame is not valid JSON: "),
        (V1C, '[null,null,"t","e",{}]', r"^vsn 1\.0\.0 frame must be a JSON object, got list$"),
        (
            V2C,
            '{"topic":"t","event":"e","payload":{},"ref":null}',
            r"^vsn 2\.0\.0 text frame must be a JSON array, got dict$",
        ),
        (V2S, '"just a string"', r"^vsn 2\.0\.0 text frame must be a JSON array, got str$"),
        (V2S, '["1","2","t","e"]', r"^vsn 2\.0\.0 frame must have 5 elements .*, got 4$"),
        (V2S, "[]", r"^vsn 2\.0\.0 frame must have 5 elements .*, got 0$"),
        (V1S, '{"event":"e","payload":{},"ref":null}', r"^vsn 1\.0\.0 frame is missing the 'topic' key$"),
        (V1S, '{"topic":"t","payload":{},"ref":null}', r"^vsn 1\.0\.0 frame is missing the 'event' key$"),
        (V1C, '{"topic":"t","event":"e","ref":null}', r"^vsn 1\.0\.0 frame is missing the 'payload' key$"),
        (V1C, '{"topic":1,"event":"e","payload":{},"ref":null}', r"^topic must be a string, got int$"),
        (
            V1C,
            '{"topic":"t","event":null,"payload":{},"ref":null}',
            r"^event must be a string, got NoneType$",
        ),
        (V2C, '[null,null,["t"],"e",{}]', r"^topic must be a string, got list$"),
        (V2C, '[null,null,"t",1.5,{}]', r"^event must be a string, got float$"),
        (V2C, '[true,null,"t","e",{}]', r"^join_ref must be a string or null, got bool$"),
        (
            V1S,
            '{"topic":"t","event":"e","payload":{},"ref":{"x":1}}',
            r"^ref must be a string or null, got dict$",
        ),
        # binary framing
        (V1C, b'{"topic":"t"}', r"^binary frame on a vsn 1\.0\.0 connection"),
        (V2C, b"", r"^empty binary frame$"),
        (V2S, b"", r"^empty binary frame$"),
        (V2C, bytes([4, 3, 10]), r"^binary frame truncated: header needs 5 bytes, frame has 3$"),
        (V2S, bytes([3, 2, 1]), r"^binary frame truncated: header needs 7 bytes, frame has 3$"),
        (V2C, bytes([1]), r"^binary frame truncated: header needs 5 bytes, frame has 1$"),
        (V2C, bytes([4, 3, 10, 0, 1]) + b"to", r"^binary frame truncated inside topic$"),
        (V2C, bytes([4, 3, 10, 0, 1]) + b"topuser", r"^binary frame truncated inside event$"),
        (V2C, bytes([4, 3, 10, 5, 1]) + b"topuser-event{}", r"^binary frame truncated inside metadata$"),
        (V2S, bytes([3, 2, 1, 3, 10, 0, 1]) + b"1", r"^binary frame truncated inside join_ref$"),
        (V2S, bytes([0, 0, 1, 1, 1]), r"^binary frame truncated inside ref$"),
        (V2C, bytes([4, 3, 1, 0, 1]) + b"t\xffp" + b"e", r"^binary frame topic is not valid UTF-8$"),
        (V2C, bytes([4, 1, 2, 0, 1]) + b"t" + b"\xc3\x28", r"^binary frame event is not valid UTF-8$"),
        (V2C, bytes([2, 1, 1]) + b"\x80" + b"e", r"^binary frame topic is not valid UTF-8$"),
        (
            V2C,
            bytes([4, 1, 1, 0, 7]) + b"te{}",
            r"^unknown user broadcast payload encoding 7 \(expected 0 or 1\)$",
        ),
        (V2S, bytes([3, 0, 0, 1, 1, 0, 2]) + b"te{}", r"^unknown user broadcast payload encoding 2"),
        (V2C, bytes([4, 1, 1, 0, 1]) + b"te{bad", r"^frame is not valid JSON: "),
        (V2C, bytes([4, 1, 1, 0, 1]) + b"te\xff\xfe\xfd", r"^frame is not valid JSON: "),
        (V2C, bytes([4, 1, 1, 2, 1]) + b"te[]{}", r"^user broadcast metadata must be a JSON object$"),
        (
            V2S,
            bytes([3, 0, 0, 1, 1, 1, 1]) + b"te" + b"1" + b"{}",
            r"^user broadcast metadata must be a JSON object$",
        ),
        (V2C, bytes([4, 1, 1, 2, 1]) + b"te{x{}", r"^frame is not valid JSON: "),
        (V2C, bytes([5]) + b"rest", r"^unknown binary frame kind 5 \(expected 0, 1, 2 or 4\)$"),
        (V2C, bytes([255]), r"^unknown binary frame kind 255 "),
        # kind 3 is client->server only; kind 1, 2, 4 are server->client only
        (V2C, JS2_KIND3, r"^unknown binary frame kind 3 \(expected 0, 1, 2 or 4\)$"),
        (V2S, JS2_KIND4, r"^binary frame of kind 4 is not accepted from clients \(0 or 3\)$"),
        (V2S, bytes([1, 0, 0, 0, 0]), r"^binary frame of kind 1 is not accepted from clients \(0 or 3\)$"),
        (V2S, bytes([2, 0, 0]), r"^binary frame of kind 2 is not accepted from clients \(0 or 3\)$"),
    ],
)
def test_remote_protocol_errors(
    serializer: V1Serializer | V2Serializer, frame: str | bytes, pattern: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=pattern):
        serializer.decode(frame)


def test_remote_protocol_error_chains_json_cause() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        V2C.decode("[")
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("serializer", [V1C, V1S, V2C, V2S], ids=["v1c", "v1s", "v2c", "v2s"])
@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '[null,null,"t","e",' + "[" * 100_000 + "]" * 100_000 + "]",
    ],
    ids=["open-arrays", "closed-arrays", "objects", "deep-payload"],
)
def test_deep_nesting_is_remote_error_not_recursion_error(
    serializer: V1Serializer | V2Serializer, text: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=r"^frame is not valid JSON: .*recursion"):
        serializer.decode(text)


def test_deep_nesting_in_binary_json_payload_is_remote_error() -> None:
    frame = bytes([4, 1, 1, 0, 1]) + b"te" + b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RemoteProtocolError, match=r"^frame is not valid JSON"):
        V2C.decode(frame)


def test_huge_int_is_remote_error() -> None:
    digits = sys.get_int_max_str_digits() or 4300
    with pytest.raises(RemoteProtocolError, match=r"^frame is not valid JSON: .*integer"):
        V2S.decode('[null,null,"t","e",' + "9" * (digits + 1) + "]")
    with pytest.raises(RemoteProtocolError, match=r"^frame is not valid JSON: .*integer"):
        V1S.decode('{"topic":"t","event":"e","payload":{},"ref":' + "9" * (digits + 1) + "}")


def test_large_float_ref_is_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^ref must be a string or null, got float$"):
        V2S.decode('[null,1e400,"t","e",{}]')


# -- hypothesis --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
refs = st.none() | st.text(min_size=1, max_size=10)
names = st.text(max_size=30)


@settings(deadline=None, max_examples=200)
@given(
    join_ref=refs, ref=refs, topic=names, event=names.filter(lambda e: e != "broadcast"), payload=json_objects
)
@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
def test_text_round_trip_client_to_server(
    vsn: str, join_ref: str | None, ref: str | None, topic: str, event: str, payload: dict[str, object]
) -> None:
    msg = Message(join_ref=join_ref, ref=ref, topic=topic, event=event, payload=payload)
    frame = serializer_for(vsn, "client").encode(msg)
    assert isinstance(frame, str)
    assert serializer_for(vsn, "server").decode(frame) == msg


@settings(deadline=None, max_examples=200)
@given(join_ref=refs, ref=refs, topic=names, event=names, payload=json_objects)
@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
def test_text_round_trip_server_to_client(
    vsn: str, join_ref: str | None, ref: str | None, topic: str, event: str, payload: dict[str, object]
) -> None:
    msg = Message(join_ref=join_ref, ref=ref, topic=topic, event=event, payload=payload)
    frame = serializer_for(vsn, "server").encode(msg)
    assert isinstance(frame, str)
    decoded = serializer_for(vsn, "client").decode(frame)
    # vsn 1.0.0 servers never send join_ref (§2.2)
    expected_join_ref = None if vsn == "1.0.0" else join_ref
    assert decoded == Message(join_ref=expected_join_ref, ref=ref, topic=topic, event=event, payload=payload)


short_names = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)


@settings(deadline=None, max_examples=200)
@given(
    join_ref=refs,
    ref=refs,
    topic=short_names,
    user_event=short_names,
    user_payload=json_values | st.binary(max_size=64),
    meta=st.none() | st.dictionaries(st.text(max_size=5), json_scalars, min_size=1, max_size=3),
)
def test_binary_broadcast_round_trip(
    join_ref: str | None,
    ref: str | None,
    topic: str,
    user_event: str,
    user_payload: object,
    meta: dict[str, object] | None,
) -> None:
    """kind 3 (client) -> server decode -> kind 4 (server) -> client decode."""
    push = Message(
        join_ref=join_ref,
        ref=ref,
        topic=topic,
        event="broadcast",
        payload={"type": "broadcast", "event": user_event, "payload": user_payload},
    )
    frame = V2C.encode(push)
    assert isinstance(frame, bytes)
    assert frame[0] == 3
    at_server = V2S.decode(frame)
    assert at_server == Message(
        join_ref=join_ref or None,
        ref=ref or None,
        topic=topic,
        event="broadcast",
        payload=push.payload,
        user_broadcast=True,
    )
    fanout_payload = dict(at_server.payload)
    if meta is not None:
        fanout_payload["meta"] = meta
    out = V2S.encode(Message(topic=topic, event="broadcast", payload=fanout_payload, user_broadcast=True))
    assert isinstance(out, bytes)
    assert out[0] == 4
    assert V2C.decode(out) == Message(
        topic=topic, event="broadcast", payload=fanout_payload, user_broadcast=True
    )


ALL_SERIALIZERS = [V1C, V1S, V2C, V2S]


def _decode_or_remote_error(data: str | bytes) -> None:
    for serializer in ALL_SERIALIZERS:
        try:
            result = serializer.decode(data)
        except RemoteProtocolError:
            continue
        assert isinstance(result, Message)
        assert isinstance(result.topic, str)
        assert isinstance(result.event, str)
        assert result.ref is None or isinstance(result.ref, str)
        assert result.join_ref is None or isinstance(result.join_ref, str)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text() | st.binary())
def test_fuzz_decode_arbitrary(data: str | bytes) -> None:
    _decode_or_remote_error(data)


# Near-valid inputs reach deeper into the decoders than random noise does.
binary_frames = st.builds(
    lambda kind, header, body: bytes([kind, *header]) + body,
    st.integers(min_value=0, max_value=6),
    st.lists(st.integers(min_value=0, max_value=12), max_size=7),
    st.binary(max_size=40) | st.sampled_from([b"{}", b'{"a":1}', b"topicevent{}", b"\xff\xfe"]),
)
text_frames = st.one_of(
    st.lists(json_values, max_size=7).map(json.dumps),
    st.dictionaries(st.sampled_from(["topic", "event", "payload", "ref", "join_ref", "x"]), json_values).map(
        json.dumps
    ),
    st.builds(lambda d: "[" * d, st.integers(min_value=0, max_value=3000)),
    st.builds(lambda n: "9" * n, st.integers(min_value=4000, max_value=5000)),
)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(binary_frames | text_frames)
def test_fuzz_decode_near_valid(data: str | bytes) -> None:
    _decode_or_remote_error(data)
