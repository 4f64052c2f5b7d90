"""Phoenix messages and the vsn 1.0.0 / 2.0.0 serializers (PROTOCOL.md §2).

A :class:`Message` is the logical unit ``(join_ref, ref, topic, event, payload)``. The
serializers turn it into a WebSocket frame (``str`` for text, ``bytes`` for binary) and back.
They do no I/O, keep no state, and raise :class:`RemoteProtocolError` on a frame they cannot
decode and :class:`LocalProtocolError` on a message they cannot encode.

User broadcasts on vsn 2.0.0 travel as binary frames: the client pushes kind 3, the server
fans out kind 4 (§2.4). Decoded, they look like any other broadcast::

    Message(event="broadcast",
            payload={"type": "broadcast", "event": <user event>, "payload": <JSON or bytes>,
                     "meta": {...}},          # "meta" only when the frame carried metadata
            user_broadcast=True)

``user_broadcast`` remembers that the message is a "UserBroadcast" (binary framing on V2), which
the server needs to choose the output framing for each subscriber.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "KIND_BROADCAST",
    "KIND_PUSH",
    "KIND_REPLY",
    "KIND_USER_BROADCAST",
    "KIND_USER_BROADCAST_PUSH",
    "SUPPORTED_VSNS",
    "Message",
    "Role",
    "Serializer",
    "V1Serializer",
    "V2Serializer",
    "serializer_for",
]

#: The ``vsn`` values the serializers speak.
SUPPORTED_VSNS: Final = ("1.0.0", "2.0.0")

Role = Literal["client", "server"]

KIND_PUSH: Final = 0
KIND_REPLY: Final = 1
KIND_BROADCAST: Final = 2
KIND_USER_BROADCAST_PUSH: Final = 3
KIND_USER_BROADCAST: Final = 4

_ENCODING_BINARY: Final = 0
_ENCODING_JSON: Final = 1

_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity by default; they are not JSON, and the encoder
    # (allow_nan=False) could not send them on, so they must not get past the decoder.
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads(..., parse_constant=...) would build a new JSONDecoder on every call.
_json_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def _json_loads(text: str | bytes) -> Any:
    if not isinstance(text, str):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError, as json.loads raises
    return _json_decode(text)


@attrs.frozen(kw_only=True)
class Message:
    """One Phoenix message.

    Attributes:
        join_ref: the ref of the channel's current ``phx_join`` (None on the ``phoenix`` topic
            and on server fan-out).
        ref: the ref of a push, echoed by its reply (None on server pushes).
        topic: e.g. ``"realtime:room1"`` or ``"phoenix"``.
        event: e.g. ``"phx_join"``, ``"broadcast"``, ``"phx_reply"``.
        payload: a JSON object (``dict``). Broadcast payloads may hold ``bytes`` under
            ``"payload"`` (vsn 2.0.0 binary user broadcasts only).
        user_broadcast: True for a broadcast that is (or came as) a binary user-broadcast frame.
    """

    join_ref: str | None = None
    ref: str | None = None
    topic: str
    event: str
    payload: Any = attrs.field(factory=dict)
    user_broadcast: bool = False


def _check_ref(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # Some clients send numeric refs; Phoenix echoes whatever came in.
        return str(value)
    raise RemoteProtocolError(f"{what} must be a string or null, got {type(value).__name__}")


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _loads(text: str | bytes) -> Any:
    try:
        return _json_loads(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"frame is not valid JSON: {exc}") from exc


def _dumps(obj: Any) -> str:
    try:
        return _json_dumps(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"payload is not JSON-serialisable: {exc}") from exc


class Serializer:
    """Encode/decode messages for one ``vsn`` and one side of the connection."""

    vsn: str

    def __init__(self, role: Role) -> None:
        self.role: Role = role

    def encode(self, msg: Message) -> str | bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, data: str | bytes) -> Message:  # pragma: no cover - abstract
        raise NotImplementedError


class V1Serializer(Serializer):
    """vsn 1.0.0: JSON objects in text frames; no binary payloads (§2.2).

    Clients send ``join_ref``; the server never does (Phoenix's V1 serializer drops it).
    """

    vsn = "1.0.0"

    def encode(self, msg: Message) -> str:
        payload = msg.payload
        if msg.user_broadcast or msg.event == "broadcast":
            payload = _v1_broadcast_payload(msg)
        if self.role == "client":
            obj: dict[str, Any] = {
                "topic": msg.topic,
                "event": msg.event,
                "payload": payload,
                "ref": msg.ref,
                "join_ref": msg.join_ref,
            }
        else:
            obj = {"topic": msg.topic, "event": msg.event, "payload": payload, "ref": msg.ref}
        return _dumps(obj)

    def decode(self, data: str | bytes) -> Message:
        if isinstance(data, bytes):
            raise RemoteProtocolError("binary frame on a vsn 1.0.0 connection (only text is allowed)")
        obj = _loads(data)
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"vsn 1.0.0 frame must be a JSON object, got {type(obj).__name__}")
        try:
            topic = obj["topic"]
            event = obj["event"]
            payload = obj["payload"]
            if self.role == "server" and "ref" not in obj:
                # Phoenix requires the key from clients (Map.fetch!), even when it is null.
                raise KeyError("ref")
        except KeyError as exc:
            raise RemoteProtocolError(f"vsn 1.0.0 frame is missing the {exc.args[0]!r} key") from None
        return Message(
            join_ref=_check_ref(obj.get("join_ref"), "join_ref"),
            ref=_check_ref(obj.get("ref"), "ref"),
            topic=_check_str(topic, "topic"),
            event=_check_str(event, "event"),
            payload=payload,
        )


def _v1_broadcast_payload(msg: Message) -> Any:
    """The JSON object a broadcast carries in a text frame (vsn 1 or V2 text)."""
    payload = msg.payload
    if isinstance(payload, Mapping) and isinstance(payload.get("payload"), bytes | bytearray):
        raise LocalProtocolError(
            f"cannot send a binary payload on {msg.topic!r} as text: binary broadcasts need vsn 2.0.0"
        )
    return payload


class V2Serializer(Serializer):
    """vsn 2.0.0: JSON arrays ``[join_ref, ref, topic, event, payload]`` plus binary frames.

    The client encodes every broadcast whose ``payload["event"]`` is a string as kind 3 (as
    realtime-js does) and decodes kinds 0, 1, 2 and 4. The server decodes kinds 0 and 3 and
    encodes user broadcasts as kind 4.
    """

    vsn = "2.0.0"

    def encode(self, msg: Message) -> str | bytes:
        if self.role == "client":
            if msg.event == "broadcast" and isinstance(msg.payload, Mapping):
                user_event = msg.payload.get("event")
                if isinstance(user_event, str):
                    return encode_user_broadcast_push(msg)
        elif msg.user_broadcast:
            return encode_user_broadcast(msg)
        payload = _v1_broadcast_payload(msg) if msg.event == "broadcast" else msg.payload
        return _dumps([msg.join_ref, msg.ref, msg.topic, msg.event, payload])

    def decode(self, data: str | bytes) -> Message:
        if isinstance(data, bytes | bytearray | memoryview):
            return decode_binary(bytes(data), self.role)
        arr = _loads(data)
        if not isinstance(arr, list):
            raise RemoteProtocolError(f"vsn 2.0.0 text frame must be a JSON array, got {type(arr).__name__}")
        if len(arr) < 5:
            raise RemoteProtocolError(
                f"vsn 2.0.0 frame must have 5 elements [join_ref, ref, topic, event, payload], got {len(arr)}"
            )
        return Message(
            join_ref=_check_ref(arr[0], "join_ref"),
            ref=_check_ref(arr[1], "ref"),
            topic=_check_str(arr[2], "topic"),
            event=_check_str(arr[3], "event"),
            payload=arr[4],
        )


def serializer_for(vsn: str, role: Role) -> Serializer:
    """The serializer for a ``vsn`` query value (Phoenix matches ``~> 1.0.0`` / ``~> 2.0.0``).

    ``"seed002"`` gives a new :class:`~._seed002.Seed002Serializer`, which keeps
    per-connection state: call this once per connection.
    """
    if vsn == "seed002":
        from ._seed002 import Seed002Serializer  # here: _seed002 imports this module

        return Seed002Serializer(role)
    if vsn.startswith("1.") or vsn == "1":
        return V1Serializer(role)
    if vsn.startswith("2.") or vsn == "2":
        return V2Serializer(role)
    raise LocalProtocolError(f"unsupported protocol version {vsn!r}; use one of {', '.join(SUPPORTED_VSNS)}")


# -- binary frames (§2.4) ---------------------------------------------------------------


def _b(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise LocalProtocolError(f"{what} is {len(raw)} bytes; binary frames allow at most 255")
    return raw


def _user_payload(payload: Any) -> tuple[int, bytes]:
    if isinstance(payload, bytes | bytearray | memoryview):
        return _ENCODING_BINARY, bytes(payload)
    return _ENCODING_JSON, _dumps(payload).encode("utf-8")


def encode_user_broadcast_push(msg: Message) -> bytes:
    """Kind 3: a client's broadcast push, ``msg.payload = {"event": e, "payload": p, ...}``."""
    payload = msg.payload
    encoding, data = _user_payload(payload.get("payload", {}))
    join_ref = _b(msg.join_ref or "", "join_ref")
    ref = _b(msg.ref or "", "ref")
    topic = _b(msg.topic, "topic")
    event = _b(payload["event"], "broadcast event name")
    meta = b""
    header = bytes(
        (KIND_USER_BROADCAST_PUSH, len(join_ref), len(ref), len(topic), len(event), len(meta), encoding)
    )
    return b"".join((header, join_ref, ref, topic, event, meta, data))


def encode_user_broadcast(msg: Message) -> bytes:
    """Kind 4: the server's user broadcast to a vsn 2.0.0 subscriber."""
    payload = msg.payload
    encoding, data = _user_payload(payload.get("payload", {}))
    topic = _b(msg.topic, "topic")
    event = _b(payload["event"], "broadcast event name")
    meta_obj = payload.get("meta")
    meta = _dumps(meta_obj).encode("utf-8") if meta_obj else b""
    if len(meta) > 255:
        raise LocalProtocolError(f"broadcast metadata is {len(meta)} bytes; at most 255 allowed")
    header = bytes((KIND_USER_BROADCAST, len(topic), len(event), len(meta), encoding))
    return b"".join((header, topic, event, meta, data))


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1

    def lengths(self, n: int) -> list[int]:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError(
                f"binary frame truncated: header needs {end} bytes, frame has {len(self.data)}"
            )
        out = list(self.data[self.pos : end])
        self.pos = end
        return out

    def text(self, n: int, what: str) -> str:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError(f"binary frame truncated inside {what}")
        try:
            value = self.data[self.pos : end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"binary frame {what} is not valid UTF-8") from exc
        self.pos = end
        return value

    def rest(self) -> bytes:
        return self.data[self.pos :]


def _decode_user_data(encoding: int, data: bytes) -> Any:
    if encoding == _ENCODING_BINARY:
        return data
    if encoding == _ENCODING_JSON:
        return _loads(data)
    raise RemoteProtocolError(f"unknown user broadcast payload encoding {encoding} (expected 0 or 1)")


def _decode_meta(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    meta = _loads(raw)
    if not isinstance(meta, dict):
        raise RemoteProtocolError("user broadcast metadata must be a JSON object")
    return meta


def decode_binary(data: bytes, role: Role) -> Message:
    """Decode a vsn 2.0.0 binary frame received by ``role``."""
    if not data:
        raise RemoteProtocolError("empty binary frame")
    kind = data[0]
    r = _Reader(data)
    if role == "server":
        if kind == KIND_PUSH:
            jl, rl, tl, el = r.lengths(4)
            join_ref, ref = r.text(jl, "join_ref"), r.text(rl, "ref")
            topic, event = r.text(tl, "topic"), r.text(el, "event")
            return Message(
                join_ref=join_ref or None, ref=ref or None, topic=topic, event=event, payload=r.rest()
            )
        if kind == KIND_USER_BROADCAST_PUSH:
            jl, rl, tl, el, ml, encoding = r.lengths(6)
            join_ref, ref = r.text(jl, "join_ref"), r.text(rl, "ref")
            topic, event = r.text(tl, "topic"), r.text(el, "event")
            _decode_meta(r.text(ml, "metadata"))  # validated, then dropped as the official server does
            return Message(
                join_ref=join_ref or None,
                ref=ref or None,
                topic=topic,
                event="broadcast",
                payload={
                    "type": "broadcast",
                    "event": event,
                    "payload": _decode_user_data(encoding, r.rest()),
                },
                user_broadcast=True,
            )
        raise RemoteProtocolError(f"binary frame of kind {kind} is not accepted from clients (0 or 3)")
    if kind == KIND_USER_BROADCAST:
        tl, el, ml, encoding = r.lengths(4)
        topic, event = r.text(tl, "topic"), r.text(el, "event")
        meta = _decode_meta(r.text(ml, "metadata"))
        payload: dict[str, Any] = {
            "type": "broadcast",
            "event": event,
            "payload": _decode_user_data(encoding, r.rest()),
        }
        if meta:
            payload["meta"] = meta
        return Message(topic=topic, event="broadcast", payload=payload, user_broadcast=True)
    if kind == KIND_PUSH:
        jl, tl, el = r.lengths(3)
        join_ref, topic, event = r.text(jl, "join_ref"), r.text(tl, "topic"), r.text(el, "event")
        return Message(join_ref=join_ref or None, topic=topic, event=event, payload=r.rest())
    if kind == KIND_REPLY:
        jl, rl, tl, sl = r.lengths(4)
        join_ref, ref = r.text(jl, "join_ref"), r.text(rl, "ref")
        topic, status = r.text(tl, "topic"), r.text(sl, "status")
        return Message(
            join_ref=join_ref or None,
            ref=ref or None,
            topic=topic,
            event="phx_reply",
            payload={"status": status, "response": r.rest()},
        )
    if kind == KIND_BROADCAST:
        tl, el = r.lengths(2)
        topic, event = r.text(tl, "topic"), r.text(el, "event")
        return Message(topic=topic, event=event, payload=r.rest())
    raise RemoteProtocolError(f"unknown binary frame kind {kind} (expected 0, 1, 2 or 4)")
