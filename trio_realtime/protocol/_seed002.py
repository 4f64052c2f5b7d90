"""The seed-002 wire protocol as a third serializer (SPEC L7), sans-IO.

The seed app's ``LazyWebSocketClient`` speaks a small JSON protocol of its own. Rather than a
second client and a second server, this module translates it to and from the Phoenix
:class:`~._messages.Message` values that :class:`~._connection.ClientConnection` and the
reference server already understand, so channels, broadcast, heartbeats, reconnect and
visibility pause work over it unchanged. Select it with ``RealtimeConfig(vsn="seed002")`` (or
``serializer_for("seed002", role)``).

The protocol
------------
JSON text frames only: every frame is one JSON object with a string ``"type"``. Binary frames
are a protocol error. ``C`` is a channel name (the Phoenix topic is ``realtime:C``), ``R`` a
request ref (a string, echoed by the reply; numbers are accepted from peers and read as
strings), ``P`` any JSON value.

**Authentication.** The client offers the WebSocket subprotocols ``["jwt", <token>]`` (the
token must consist of RFC 7230 token characters, which every JWT does). The server accepts
with the subprotocol ``"jwt"`` and sends, before anything else::

    {"type": "auth_success", "connectionId": "<uuid>"}

With a JWT secret, a missing, malformed, badly signed or expired token is refused at the
upgrade: HTTP 401 with the body ``{"error": "<reason>"}`` (the reference server's usual
wording, e.g. ``"Token has expired"``). Without a secret (development mode) any token is
accepted.

**Client to server:**

* ``{"type": "subscribe", "channel": C, "ref": R}``: join ``C``; answered by ``subscribed``
  or ``error``.
* ``{"type": "unsubscribe", "channel": C, "ref": R}``: leave ``C``; answered by
  ``unsubscribed``.
* ``{"type": "channel_message", "channel": C, "event": E, "payload": P, "ref": R}``: send
  ``P`` as ``E`` to the other subscribers of ``C``; answered by ``ack`` or ``error``.
* ``{"type": "ping", "ref": R}``: liveness; answered by ``pong``.
* ``{"type": "auth", "token": T}``: use token ``T`` from now on (for this socket's channels
  and its later subscribes); no reply.

``ref`` may be null or absent (the reply then carries ``"ref": null``); ``payload`` may be
absent (null).

**Server to client:**

* ``{"type": "auth_success", "connectionId": "<uuid>"}``: the first frame of every connection.
* ``{"type": "subscribed", "channel": C, "ref": R}``: the subscribe ``R`` succeeded.
* ``{"type": "unsubscribed", "channel": C, "ref": R}``: the unsubscribe ``R`` succeeded.
* ``{"type": "ack", "ref": R}``: the channel_message ``R`` was accepted.
* ``{"type": "error", "ref": R, "channel": C, "message": M}``: request ``R`` failed, e.g.
  ``"unmatched topic"`` for a channel_message on a channel not subscribed. ``ref`` is null
  when the request had none, ``channel`` when it is about the connection; an error with a
  null ``ref`` answers nothing (our client delivers it as a ``ServerEvent("error")``).
* ``{"type": "pong", "ref": R}``: the answer to ping ``R``.
* ``{"type": "channel_message", "channel": C, "event": E, "payload": P}``: a message from
  another subscriber of ``C`` (the sender never receives its own), whether it spoke seed-002
  or Phoenix (a Phoenix client's ``broadcast`` on ``realtime:C``). A ``"meta"`` object is
  added when the server has message metadata. Binary Phoenix broadcasts are not delivered.

**Extension frames** (server to client). What the reference server may say that the seed's
protocol has no word for travels as ``{"type": <event>, "channel": C, "payload": P}`` plus
``"ref": R`` (the ref of the subscribe it concerns) when there is one: ``system`` (e.g.
``{"extension": "system", "status": "error", "message": "Token has expired 3 seconds ago"}``
before a server-side close), ``phx_close`` (the server ended the subscription: after an
``unsubscribe``, or on its own), ``phx_error``, ``presence_state``, ``presence_diff``,
``postgres_changes``. ``channel`` is null for a frame about the whole connection. Clients
that do not know a type should ignore the frame.

Mapping to Phoenix messages
---------------------------
``subscribe`` ⇄ ``phx_join`` (``join_ref = ref``), ``unsubscribe`` ⇄ ``phx_leave``,
``channel_message`` ⇄ ``broadcast`` with payload ``{"type": "broadcast", "event": E,
"payload": P}``, ``ping`` ⇄ ``heartbeat`` on topic ``phoenix``, ``auth`` ⇄ ``access_token``,
``auth_success`` ⇄ ``Message(topic="phoenix", event="auth_success",
payload={"connectionId": ...})``, and ``subscribed``/``unsubscribed``/``ack``/``pong``/``error``
⇄ ``phx_reply`` with status ``ok`` or ``error`` (response ``{"reason": M}``).

A seed-002 ``subscribe`` has no join options: the server side decodes it as a public join
with ``broadcast: {"ack": true, "self": false}`` and presence disabled (so every
``channel_message`` is answered, and the sender never gets its own). The client side refuses
(:class:`LocalProtocolError`) joins that ask for what the protocol cannot do: presence,
postgres_changes, private channels, ``self`` delivery or replay. Presence pushes are refused
likewise.

Replies say only *which* request they answer, by ref, not what kind it was, yet the Phoenix
reply must become ``subscribed`` or ``ack`` and so on. So each serializer remembers
``ref -> (request type, topic)`` for the requests it decoded (server role) or encoded (client
role), and forgets an entry when its reply passes. The memory is bounded
(:data:`MAX_PENDING_REQUESTS`, oldest forgotten first); per ref it is first-in first-out, so a
peer reusing one ref (or sending none) still gets its replies typed in order. A reply whose
request was forgotten goes out as ``ack``/``error`` (server) or is decoded with the topic its
frame names, else ``""`` (client), which the connection core matches by ref anyway.

Serializers of this kind hold per-connection state: use one per connection
(:func:`~._messages.serializer_for` returns a new one each call). Malformed input raises
:class:`RemoteProtocolError`, a message this protocol cannot carry (``bytes`` payloads
included: seed-002 is JSON only) raises :class:`LocalProtocolError`; nothing else escapes.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from .._errors import LocalProtocolError, RemoteProtocolError
from ._messages import Message, Role, Serializer, _check_ref, _dumps, _loads

__all__ = [
    "MAX_PENDING_REQUESTS",
    "SEED002_SUBPROTOCOL",
    "SEED002_VSN",
    "Seed002Serializer",
    "seed002_subprotocols",
    "seed002_url",
]

#: The ``vsn`` name of the seed-002 protocol (``RealtimeConfig(vsn=SEED002_VSN)``).
SEED002_VSN: Final = "seed002"
#: The WebSocket subprotocol the server accepts; the token follows it in the client's offer.
SEED002_SUBPROTOCOL: Final = "jwt"
#: Requests a serializer remembers while waiting for their replies (oldest forgotten first).
MAX_PENDING_REQUESTS: Final = 1024

_PREFIX: Final = "realtime:"
# RFC 7230 "token": what a Sec-WebSocket-Protocol value may contain.
_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def seed002_subprotocols(token: str) -> list[str]:
    """The subprotocol offer that carries ``token``: ``["jwt", token]``.

    Raises:
        LocalProtocolError: the token is empty or has characters a subprotocol cannot carry.
    """
    if not isinstance(token, str) or not _TOKEN_RE.match(token):
        raise LocalProtocolError(
            "the seed-002 token travels as a WebSocket subprotocol, so it must be a non-empty "
            "string of RFC 7230 token characters (a JWT is); this one is not"
        )
    return [SEED002_SUBPROTOCOL, token]


def seed002_url(url: str, params: Mapping[str, str] | None = None) -> str:
    """The WebSocket URL for a seed-002 server: ``url`` as given (``http`` -> ``ws``).

    Unlike the Phoenix URL, nothing is appended (no ``/websocket``, no ``apikey`` or ``vsn``):
    the seed's endpoint is whatever the app serves, and the token travels in the
    subprotocol. ``params`` are added to the query string.

    Raises:
        LocalProtocolError: the scheme is not ws, wss, http or https.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        raise LocalProtocolError(
            f"realtime URL must start with ws://, wss://, http:// or https://, got {shown!r}"
        )
    query = parts.query
    if params:
        query = (query + "&" if query else "") + urlencode(dict(params))
    return urlunsplit((scheme, parts.netloc, parts.path or "/", query, ""))


class _PendingRequests:
    """``ref -> (request type, topic)``: FIFO per ref, bounded, oldest evicted first."""

    __slots__ = ("_by_ref", "_entries", "_limit", "_seq")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seq = 0
        # Insertion-ordered: the first entry is the oldest.
        self._entries: dict[int, tuple[str | None, str, str]] = {}
        self._by_ref: dict[str | None, deque[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, ref: str | None, kind: str, topic: str) -> None:
        if len(self._entries) >= self._limit:
            oldest = next(iter(self._entries))
            old_ref = self._entries.pop(oldest)[0]
            # Per-ref order follows global order, so the oldest is its ref's first entry.
            queue = self._by_ref[old_ref]
            queue.popleft()
            if not queue:
                del self._by_ref[old_ref]
        self._seq += 1
        self._entries[self._seq] = (ref, kind, topic)
        self._by_ref.setdefault(ref, deque()).append(self._seq)

    def pop(self, ref: str | None) -> tuple[str, str] | None:
        queue = self._by_ref.get(ref)
        if queue is None:
            return None
        seq = queue.popleft()
        if not queue:
            del self._by_ref[ref]
        _, kind, topic = self._entries.pop(seq)
        return kind, topic


def _topic(channel: str) -> str:
    return _PREFIX + channel


def _channel(topic: str) -> str:
    return topic[len(_PREFIX) :] if topic.startswith(_PREFIX) else topic


def _client_channel(msg: Message) -> str:
    if not msg.topic.startswith(_PREFIX):
        raise LocalProtocolError(
            f"cannot send {msg.event!r} on {msg.topic!r} over seed-002: its channels are "
            f"the Phoenix topics {_PREFIX}<channel>"
        )
    return msg.topic[len(_PREFIX) :]


def _field_str(obj: Mapping[str, Any], key: str, kind: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        shown = "missing" if value is None else type(value).__name__
        raise RemoteProtocolError(f"seed-002 {kind!r} frame needs a string {key!r}, got {shown}")
    return value


def _optional_str(obj: Mapping[str, Any], key: str, kind: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise RemoteProtocolError(
        f"seed-002 {kind!r} frame: {key!r} must be a string or null, got {type(value).__name__}"
    )


def _reason(response: Any) -> str:
    if isinstance(response, Mapping):
        reason = response.get("reason")
        if isinstance(reason, str):
            return reason
        if response:
            try:
                return _dumps(response)
            except LocalProtocolError:
                pass
    return "request failed"


def _check_join_config(msg: Message) -> None:
    """Refuse a join whose options seed-002 cannot honour (silently dropping them would lie)."""
    payload = msg.payload if isinstance(msg.payload, Mapping) else {}
    config = payload.get("config")
    if not isinstance(config, Mapping):
        return
    problems: list[str] = []
    presence = config.get("presence")
    if isinstance(presence, Mapping) and presence.get("enabled"):
        problems.append("presence")
    if config.get("postgres_changes"):
        problems.append("postgres_changes")
    if config.get("private"):
        problems.append("private channels")
    broadcast = config.get("broadcast")
    if isinstance(broadcast, Mapping):
        if broadcast.get("self"):
            problems.append("broadcast self-delivery")
        if broadcast.get("replay"):
            problems.append("broadcast replay")
    if problems:
        raise LocalProtocolError(
            f"cannot join {msg.topic!r} over seed-002: {', '.join(problems)} "
            f"{'is' if len(problems) == 1 else 'are'} not part of the seed-002 protocol; "
            "use RealtimeConfig(vsn='2.0.0') for them"
        )


def _broadcast_body(msg: Message) -> tuple[str, Any, Any]:
    """(event, payload, meta) of a broadcast message, refusing what JSON cannot carry."""
    body = msg.payload
    if not isinstance(body, Mapping) or not isinstance(body.get("event"), str):
        raise LocalProtocolError(
            f"broadcast on {msg.topic!r} needs a payload {{'event': str, 'payload': ...}} "
            "to travel as a seed-002 channel_message"
        )
    inner = body.get("payload")
    if isinstance(inner, bytes | bytearray | memoryview):
        raise LocalProtocolError(
            f"cannot send a binary payload on {msg.topic!r} over seed-002: the protocol carries "
            "only JSON text frames; use RealtimeConfig(vsn='2.0.0') for binary broadcasts"
        )
    return body["event"], inner, body.get("meta")


class Seed002Serializer(Serializer):
    """The seed-002 JSON protocol (see the module docstring), for one connection and role.

    Args:
        role: ``"client"`` or ``"server"``.
        max_pending: requests remembered while waiting for their replies.
    """

    vsn = SEED002_VSN

    def __init__(self, role: Role, *, max_pending: int = MAX_PENDING_REQUESTS) -> None:
        super().__init__(role)
        self._pending = _PendingRequests(max_pending)

    @property
    def pending_requests(self) -> int:
        """Requests remembered for typing their replies (bounded by ``max_pending``)."""
        return len(self._pending)

    # -- encode ----------------------------------------------------------------------------

    def encode(self, msg: Message) -> str:
        if self.role == "client":
            return self._encode_client(msg)
        return self._encode_server(msg)

    def _encode_client(self, msg: Message) -> str:
        event = msg.event
        remember: tuple[str, str] | None = None
        obj: dict[str, Any]
        if msg.topic == "phoenix" and event == "heartbeat":
            obj = {"type": "ping", "ref": msg.ref}
            remember = ("ping", "phoenix")
        elif event == "access_token":
            token = msg.payload.get("access_token") if isinstance(msg.payload, Mapping) else None
            if not isinstance(token, str):
                raise LocalProtocolError("an access_token push needs a string 'access_token'")
            obj = {"type": "auth", "token": token}
        elif event == "phx_join":
            channel = _client_channel(msg)
            _check_join_config(msg)
            obj = {"type": "subscribe", "channel": channel, "ref": msg.ref}
            remember = ("subscribe", msg.topic)
        elif event == "phx_leave":
            obj = {"type": "unsubscribe", "channel": _client_channel(msg), "ref": msg.ref}
            remember = ("unsubscribe", msg.topic)
        elif event == "broadcast":
            channel = _client_channel(msg)
            user_event, payload, _ = _broadcast_body(msg)
            obj = {
                "type": "channel_message",
                "channel": channel,
                "event": user_event,
                "payload": payload,
                "ref": msg.ref,
            }
            remember = ("channel_message", msg.topic)
        elif event == "presence":
            raise LocalProtocolError(
                f"cannot track presence on {msg.topic!r}: presence is not part of the seed-002 "
                "protocol; use RealtimeConfig(vsn='2.0.0')"
            )
        else:
            raise LocalProtocolError(
                f"cannot send {event!r} on {msg.topic!r} over seed-002: the protocol has only "
                "subscribe, unsubscribe, channel_message, ping and auth"
            )
        frame = _dumps(obj)  # before remembering: a refused message leaves no trace
        if remember is not None and msg.ref is not None:
            self._pending.add(msg.ref, *remember)
        return frame

    def _encode_server(self, msg: Message) -> str:
        event = msg.event
        obj: dict[str, Any]
        if event == "phx_reply":
            obj = self._encode_reply(msg)
        elif event == "auth_success" and msg.topic == "phoenix":
            connection_id = msg.payload.get("connectionId") if isinstance(msg.payload, Mapping) else None
            if not isinstance(connection_id, str):
                raise LocalProtocolError("auth_success needs a string 'connectionId'")
            obj = {"type": "auth_success", "connectionId": connection_id}
        elif event == "broadcast":
            user_event, payload, meta = _broadcast_body(msg)
            obj = {
                "type": "channel_message",
                "channel": _channel(msg.topic),
                "event": user_event,
                "payload": payload,
            }
            if isinstance(meta, Mapping) and meta:
                obj["meta"] = meta
        else:
            # The extension: what seed-002 has no word for (system, phx_close, presence...).
            obj = {
                "type": event,
                "channel": None if msg.topic == "phoenix" else _channel(msg.topic),
                "payload": msg.payload,
            }
            if msg.join_ref is not None:
                obj["ref"] = msg.join_ref
        return _dumps(obj)

    def _encode_reply(self, msg: Message) -> dict[str, Any]:
        payload = msg.payload
        if not isinstance(payload, Mapping) or "status" not in payload:
            raise LocalProtocolError(f"phx_reply on {msg.topic!r} needs a payload with a 'status'")
        ok = payload["status"] == "ok"
        entry = self._pending.pop(msg.ref)
        kind = entry[0] if entry is not None else ("ping" if msg.topic == "phoenix" else None)
        channel = None if msg.topic == "phoenix" else _channel(msg.topic)
        if not ok:
            return {
                "type": "error",
                "ref": msg.ref,
                "channel": channel,
                "message": _reason(payload.get("response")),
            }
        if kind == "ping":
            return {"type": "pong", "ref": msg.ref}
        if kind == "subscribe":
            return {"type": "subscribed", "channel": channel, "ref": msg.ref}
        if kind == "unsubscribe":
            return {"type": "unsubscribed", "channel": channel, "ref": msg.ref}
        return {"type": "ack", "ref": msg.ref}

    # -- decode ----------------------------------------------------------------------------

    def decode(self, data: str | bytes) -> Message:
        if not isinstance(data, str):
            raise RemoteProtocolError("binary frame on a seed-002 connection (only JSON text frames)")
        obj = _loads(data)
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"seed-002 frame must be a JSON object, got {type(obj).__name__}")
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise RemoteProtocolError("seed-002 frame needs a string 'type'")
        if self.role == "server":
            return self._decode_server(obj, kind)
        return self._decode_client(obj, kind)

    def _decode_server(self, obj: dict[str, Any], kind: str) -> Message:
        if kind == "auth":
            token = _field_str(obj, "token", kind)
            return Message(topic="phoenix", event="access_token", payload={"access_token": token})
        ref = _check_ref(obj.get("ref"), "ref")
        if kind == "ping":
            msg = Message(ref=ref, topic="phoenix", event="heartbeat", payload={})
        elif kind == "subscribe":
            topic = _topic(_field_str(obj, "channel", kind))
            msg = Message(join_ref=ref, ref=ref, topic=topic, event="phx_join", payload=_join_payload())
        elif kind == "unsubscribe":
            topic = _topic(_field_str(obj, "channel", kind))
            msg = Message(ref=ref, topic=topic, event="phx_leave", payload={})
        elif kind == "channel_message":
            topic = _topic(_field_str(obj, "channel", kind))
            user_event = _field_str(obj, "event", kind)
            msg = Message(
                ref=ref,
                topic=topic,
                event="broadcast",
                payload={"type": "broadcast", "event": user_event, "payload": obj.get("payload")},
            )
        else:
            raise RemoteProtocolError(
                f"unknown seed-002 message type {kind[:40]!r} from a client (expected subscribe, "
                "unsubscribe, channel_message, ping or auth)"
            )
        self._pending.add(ref, kind, msg.topic)
        return msg

    def _decode_client(self, obj: dict[str, Any], kind: str) -> Message:
        if kind == "channel_message":
            topic = _topic(_field_str(obj, "channel", kind))
            body: dict[str, Any] = {
                "type": "broadcast",
                "event": _field_str(obj, "event", kind),
                "payload": obj.get("payload"),
            }
            meta = obj.get("meta")
            if meta is not None:
                if not isinstance(meta, dict):
                    raise RemoteProtocolError("seed-002 channel_message: 'meta' must be an object")
                body["meta"] = meta
            return Message(topic=topic, event="broadcast", payload=body)
        if kind == "auth_success":
            connection_id = _field_str(obj, "connectionId", kind)
            return Message(topic="phoenix", event="auth_success", payload={"connectionId": connection_id})
        if kind in ("pong", "subscribed", "unsubscribed", "ack", "error"):
            return self._decode_reply(obj, kind)
        # An extension frame: system, phx_close, presence_state, ...
        channel = _optional_str(obj, "channel", kind)
        if "channel" not in obj:
            raise RemoteProtocolError(
                f"unknown seed-002 message type {kind[:40]!r} (extension frames carry a 'channel')"
            )
        ref = _check_ref(obj.get("ref"), "ref")
        return Message(
            join_ref=ref,
            topic="phoenix" if channel is None else _topic(channel),
            event=kind,
            payload=obj.get("payload", {}),
        )

    def _decode_reply(self, obj: dict[str, Any], kind: str) -> Message:
        ref = _check_ref(obj.get("ref"), "ref")
        if kind == "pong":
            self._pending.pop(ref)
            return Message(ref=ref, topic="phoenix", event="phx_reply", payload=_ok())
        if kind in ("subscribed", "unsubscribed"):
            topic = _topic(_field_str(obj, "channel", kind))
            self._pending.pop(ref)
            join_ref = ref if kind == "subscribed" else None
            return Message(join_ref=join_ref, ref=ref, topic=topic, event="phx_reply", payload=_ok())
        if kind == "ack":
            entry = self._pending.pop(ref)
            topic = entry[1] if entry is not None else ""
            return Message(ref=ref, topic=topic, event="phx_reply", payload=_ok())
        # error
        channel = _optional_str(obj, "channel", kind)
        message = _optional_str(obj, "message", kind) or ""
        if ref is None:
            # Not an answer to anything: a notice about a channel or the connection.
            topic = "phoenix" if channel is None else _topic(channel)
            return Message(topic=topic, event="error", payload={"message": message})
        entry = self._pending.pop(ref)
        if channel is not None:
            topic = _topic(channel)
        elif entry is not None:
            topic = entry[1]
        else:
            topic = ""
        return Message(
            ref=ref,
            topic=topic,
            event="phx_reply",
            payload={"status": "error", "response": {"reason": message}},
        )


def _ok() -> dict[str, Any]:
    return {"status": "ok", "response": {}}


def _join_payload() -> dict[str, Any]:
    """What a seed-002 subscribe means as a Phoenix join (a fresh dict each time)."""
    return {
        "config": {
            "broadcast": {"ack": True, "self": False},
            "presence": {"enabled": False},
            "postgres_changes": [],
            "private": False,
        }
    }
