"""Helpers for the reference server tests: raw frames, tokens and a raw client.

The raw client speaks frames, not the library's client API, so these tests pin the wire
format itself. ``RawClient.sync()`` is the ordering barrier used instead of sleeps: it sends a
heartbeat and collects every frame that arrives before the heartbeat's reply. The server
handles one socket's frames in order and queues all fan-out synchronously, so once a peer's
own ``sync()`` has returned, anything that peer caused has been queued to everyone, and a
subsequent ``sync()`` on another socket returns exactly what reached that socket.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import attrs
import jwt
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

SECRET = "reference-server-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789"


def make_token(
    secret: str = SECRET, *, exp_in: float | None = 3600, role: str | None = "authenticated",
    algorithm: str = "HS256", **claims: Any,
) -> str:
    """A signed JWT; ``exp_in=None`` / ``role=None`` leave the claim out."""
    body: dict[str, Any] = dict(claims)
    if exp_in is not None:
        body["exp"] = time.time() + exp_in
    if role is not None:
        body["role"] = role
    return jwt.encode(body, secret, algorithm=algorithm)


def kind3(join_ref: str, ref: str, topic: str, event: str, data: bytes, *, encoding: int = 1,
          meta: bytes = b"") -> bytes:
    """A client user-broadcast push (binary kind 3, PROTOCOL.md §2.4)."""
    jr, rf, tp, ev = (s.encode() for s in (join_ref, ref, topic, event))
    header = bytes((3, len(jr), len(rf), len(tp), len(ev), len(meta), encoding))
    return header + jr + rf + tp + ev + meta + data


@attrs.frozen
class Frame:
    """One server frame, normalised. ``join_ref`` is ``"<absent>"`` for V1 (never sent there)."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any
    raw: str | bytes

    @property
    def reply(self) -> tuple[str, Any]:
        assert self.event == "phx_reply", self
        return self.payload["status"], self.payload["response"]


ABSENT = "<absent>"


def parse_frame(raw: str | bytes, vsn: str) -> Frame:
    if isinstance(raw, bytes):
        assert vsn == "2.0.0", "binary frame on a V1 socket"
        assert raw[0] == 4, f"unexpected binary kind {raw[0]}"
        tl, el, ml, enc = raw[1:5]
        pos = 5
        topic = raw[pos:pos + tl].decode()
        pos += tl
        event = raw[pos:pos + el].decode()
        pos += el
        meta = raw[pos:pos + ml]
        pos += ml
        data: Any = raw[pos:] if enc == 0 else json.loads(raw[pos:])
        payload = {"type": "broadcast", "event": event, "payload": data}
        if meta:
            payload["meta"] = json.loads(meta)
        return Frame(None, None, topic, "broadcast", payload, raw)
    obj = json.loads(raw)
    if vsn == "1.0.0":
        assert isinstance(obj, dict), obj
        assert set(obj) == {"topic", "event", "payload", "ref"}, obj
        return Frame(ABSENT, obj["ref"], obj["topic"], obj["event"], obj["payload"], raw)
    assert isinstance(obj, list), obj
    assert len(obj) == 5, obj
    return Frame(obj[0], obj[1], obj[2], obj[3], obj[4], raw)


class RawClient:
    """Speaks raw Phoenix frames (V1 objects or V2 arrays) over a trio-websocket connection."""

    def __init__(self, ws: WebSocketConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self._ref = 0

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def push(self, topic: str, event: str, payload: Any, *, join_ref: str | None = None,
                   ref: str | None = "auto") -> str | None:
        if ref == "auto":
            ref = self.next_ref()
        if self.vsn == "1.0.0":
            text = json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref,
                               "join_ref": join_ref})
        else:
            text = json.dumps([join_ref, ref, topic, event, payload])
        await self.ws.send_message(text)
        return ref

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def recv(self) -> Frame:
        return parse_frame(await self.ws.get_message(), self.vsn)

    async def expect(self, event: str, topic: str | None = None) -> Frame:
        frame = await self.recv()
        assert frame.event == event, frame
        if topic is not None:
            assert frame.topic == topic, frame
        return frame

    async def reply_to(self, ref: str | None) -> Frame:
        frame = await self.expect("phx_reply")
        assert frame.ref == ref, frame
        return frame

    async def join(self, topic: str, config: dict[str, Any] | None = None, **extra: Any) -> Frame:
        """Join and return the reply frame (the join_ref is the join's ref)."""
        ref = self.next_ref()
        payload = {"config": config if config is not None else {}, **extra}
        await self.push(topic, "phx_join", payload, join_ref=ref, ref=ref)
        return await self.reply_to(ref)

    async def sync(self) -> list[Frame]:
        """Heartbeat round trip; returns the frames that arrived before its reply."""
        ref = await self.push("phoenix", "heartbeat", {})
        frames: list[Frame] = []
        while True:
            frame = await self.recv()
            if frame.topic == "phoenix" and frame.event == "phx_reply" and frame.ref == ref:
                return frames
            frames.append(frame)


@attrs.frozen
class Refusal:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def attempt_upgrade(port: int, target: str, headers: list[tuple[bytes, bytes]] | None = None
                          ) -> Refusal | None:
    """Try an upgrade with a bare wsproto client; the refusal, or None if it was accepted.

    (trio-websocket's client leaks its socket when an upgrade is refused, which
    ``filterwarnings = error`` turns into a failure, so refusals are checked this way.)
    """
    ws = WSConnection(ConnectionType.CLIENT)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target=target,
                                              extra_headers=headers or [])))
        status, got_headers, body = 0, {}, b""
        while True:
            data = await stream.receive_some()
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return None
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    got_headers = {k.lower(): v for k, v in event.headers}
                    if not event.has_body:
                        return Refusal(status, got_headers, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        return Refusal(status, got_headers, body)
            if not data:
                raise AssertionError("connection closed before the upgrade was answered")
