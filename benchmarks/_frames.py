"""Deterministic payloads and pre-encoded server frames, shared by the blaster and the workers.

Payload ``size`` is the length in bytes of the user payload's JSON (``{"i": n, "data": "..."}``),
which is what "100 B" and "10 KB" mean in the tables. Frames are encoded with the library's own
server-side serializers (the same frames the reference server sends, and which the interop tests
check against the official clients):

* vsn 1.0.0: a text frame ``{"topic", "event": "broadcast", "payload": {...}, "ref": null}``;
* vsn 2.0.0: a binary *user broadcast* frame (kind 4, JSON encoding), what the server fans out
  for a broadcast sent by a vsn 2.0.0 client such as realtime-js.
"""

from __future__ import annotations

import json
import random
import string
import struct
from typing import Any, Final

from trio_realtime.protocol import Message, serializer_for

#: The channel every throughput reader joins (the wire topic is ``realtime:bench``).
TOPIC_NAME: Final = "bench"
TOPIC: Final = "realtime:" + TOPIC_NAME
#: The user event name of every broadcast.
EVENT: Final = "bench"
#: Seed of every payload generator.
SEED: Final = 20240606
_ALPHABET: Final = string.ascii_letters + string.digits


def payload(size: int, index: int, rng: random.Random) -> dict[str, Any]:
    """A JSON object whose compact encoding is exactly ``size`` bytes (at least ~20)."""
    head = {"i": index, "data": ""}
    overhead = len(json.dumps(head, separators=(",", ":")))
    filler = "".join(rng.choices(_ALPHABET, k=max(0, size - overhead)))
    return {"i": index, "data": filler}


def payloads(size: int, count: int, seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed + size)
    return [payload(size, i, rng) for i in range(count)]


def broadcast_frame(vsn: str, body: dict[str, Any], topic: str = TOPIC) -> str | bytes:
    """The WebSocket message (text or binary) the server sends for one broadcast."""
    msg = Message(
        topic=topic,
        event="broadcast",
        payload={"type": "broadcast", "event": EVENT, "payload": body},
        user_broadcast=vsn.startswith("2"),
    )
    return serializer_for(vsn, "server").encode(msg)


def reply_frame(vsn: str, topic: str, ref: str | None, join_ref: str | None, response: Any) -> str:
    """A ``phx_reply`` with status ok."""
    msg = Message(
        join_ref=join_ref,
        ref=ref,
        topic=topic,
        event="phx_reply",
        payload={"status": "ok", "response": response},
    )
    frame = serializer_for(vsn, "server").encode(msg)
    assert isinstance(frame, str)
    return frame


def ws_frame(data: str | bytes) -> bytes:
    """One unmasked (server-to-client) WebSocket data frame, FIN set."""
    if isinstance(data, str):
        opcode, raw = 0x1, data.encode("utf-8")
    else:
        opcode, raw = 0x2, data
    n = len(raw)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + raw


def blast_buffer(vsn: str, size: int, count: int) -> tuple[bytes, int]:
    """``count`` distinct framed broadcasts, concatenated: ``(bytes, count)``."""
    frames = [ws_frame(broadcast_frame(vsn, body)) for body in payloads(size, count)]
    return b"".join(frames), count


def client_join_frame(vsn: str, topic: str = TOPIC, ref: str = "1", *, self_: bool = False) -> str:
    """The ``phx_join`` a bare reader sends (the same payload shape our client sends)."""
    payload = {
        "config": {
            "broadcast": {"ack": False, "self": self_},
            "presence": {"key": "", "enabled": False},
            "postgres_changes": [],
            "private": False,
        }
    }
    msg = Message(join_ref=ref, ref=ref, topic=topic, event="phx_join", payload=payload)
    frame = serializer_for(vsn, "client").encode(msg)
    assert isinstance(frame, str)
    return frame


def client_broadcast_push(topic: str, join_ref: str, ref: str | None, body: Any) -> str:
    """A vsn 1.0.0 broadcast push from a bare client (text)."""
    return json.dumps(
        {
            "topic": topic,
            "event": "broadcast",
            "payload": {"type": "broadcast", "event": EVENT, "payload": body},
            "ref": ref,
            "join_ref": join_ref,
        },
        separators=(",", ":"),
    )
