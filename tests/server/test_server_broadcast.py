"""Broadcast on the wire: self/ack, V1<->V2 conversion, binary, isolation, limits (PROTOCOL.md §4)."""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import pytest
import trio
from _server_helpers import kind3
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

if TYPE_CHECKING:
    from _server_helpers import RawClient
    from conftest import Connect, StartServer

    from trio_realtime.server import RealtimeServer


def _bcast(event: str, payload: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": payload}


@pytest.mark.parametrize("receive_own", [True, False])
async def test_self_flag(server: RealtimeServer, connect: Connect, vsn: str, receive_own: bool) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as sender, connect(server, vsn) as other:
            await sender.join("realtime:room", {"broadcast": {"self": receive_own}})
            await other.join("realtime:room")
            await sender.push("realtime:room", "broadcast", _bcast("msg", {"n": 1}), join_ref="1")
            own = await sender.sync()
            if receive_own:
                assert [(f.event, f.payload) for f in own] == [("broadcast", _bcast("msg", {"n": 1}))]
            else:
                assert own == []
            got = await other.sync()
            assert [(f.topic, f.event, f.payload, f.ref) for f in got] == [
                ("realtime:room", "broadcast", _bcast("msg", {"n": 1}), None)
            ]


@pytest.mark.parametrize("ack", [True, False, "true", "FALSE"])
async def test_ack_flag(server: RealtimeServer, connect: Connect, vsn: str, ack: bool | str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as sender:
            await sender.join("realtime:room", {"broadcast": {"ack": ack, "self": True}})
            ref = await sender.push("realtime:room", "broadcast", _bcast("msg", {}), join_ref="1")
            frames = await sender.sync()
            # the fan-out (self: true) is queued before the ack reply
            assert frames[0].event == "broadcast"
            if ack in (True, "true"):
                assert len(frames) == 2
                assert frames[1].ref == ref
                assert frames[1].reply == ("ok", {})
                if vsn == "2.0.0":
                    assert frames[1].join_ref == "1"
            else:
                assert len(frames) == 1


async def test_payload_is_relayed_verbatim_v1_to_v2(server: RealtimeServer, connect: Connect) -> None:
    payload = {"event": "my_event", "payload": {"hello": "world"}, "extra": [1, 2.5, None, "ü"]}
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as v1, connect(server, "2.0.0") as v2:
            await v1.join("realtime:any", {"broadcast": {"self": True}})
            await v2.join("realtime:any")
            await v1.push("realtime:any", "broadcast", payload, join_ref="1")
            [own] = await v1.sync()
            assert json.loads(own.raw) == {"topic": "realtime:any", "event": "broadcast", "payload": payload,
                                           "ref": None}
            [got] = await v2.sync()
            assert json.loads(got.raw) == [None, None, "realtime:any", "broadcast", payload]


async def test_v2_text_broadcast_to_v1(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as v2, connect(server, "1.0.0") as v1:
            await v2.join("realtime:any")
            await v1.join("realtime:any")
            await v2.send_raw('["1","9","realtime:any","broadcast",{"event":"TEST","payload":{"msg":1},'
                              '"type":"broadcast"}]')
            assert await v2.sync() == []
            [got] = await v1.sync()
            assert json.loads(got.raw) == {
                "topic": "realtime:any", "event": "broadcast", "ref": None,
                "payload": {"event": "TEST", "payload": {"msg": 1}, "type": "broadcast"},
            }


async def test_kind3_json_fans_out_as_kind4_and_v1_json(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with (
            connect(server, "2.0.0") as sender,
            connect(server, "2.0.0") as v2,
            connect(server, "1.0.0") as v1,
        ):
            await sender.join("realtime:topic", {"broadcast": {"ack": True}})
            await v2.join("realtime:topic")
            await v1.join("realtime:topic")
            # the client's metadata is dropped by the server, as the official one does
            await sender.send_raw(kind3("1", "2", "realtime:topic", "event123", b'{"data":"test"}',
                                        meta=b'{"k":"v"}'))
            [ack] = await sender.sync()
            assert ack.ref == "2"
            assert ack.reply == ("ok", {})
            [got] = await v2.sync()
            # PROTOCOL.md §2.4: <<4, 14, 8, meta_len, 1, "realtime:topic", "event123">> <> payload
            assert got.raw == bytes([4, 14, 8, 0, 1]) + b"realtime:topic" + b"event123" + b'{"data":"test"}'
            [v1_got] = await v1.sync()
            assert json.loads(v1_got.raw) == {
                "topic": "realtime:topic", "event": "broadcast", "ref": None,
                "payload": {"event": "event123", "payload": {"data": "test"}, "type": "broadcast"},
            }


async def test_kind3_binary_is_not_delivered_to_v1(server: RealtimeServer, connect: Connect) -> None:
    data = bytes(range(256))
    with trio.fail_after(10):
        async with (
            connect(server, "2.0.0") as sender,
            connect(server, "2.0.0") as v2,
            connect(server, "1.0.0") as v1,
        ):
            await sender.join("realtime:bin", {"broadcast": {"self": True}})
            await v2.join("realtime:bin")
            await v1.join("realtime:bin")
            await sender.send_raw(kind3("1", "", "realtime:bin", "blob", data, encoding=0))
            [own] = await sender.sync()
            assert own.raw == bytes([4, 12, 4, 0, 0]) + b"realtime:bin" + b"blob" + data
            [got] = await v2.sync()
            assert got.raw == own.raw
            assert got.payload == {"type": "broadcast", "event": "blob", "payload": data}
            assert await v1.sync() == []


async def test_v1_broadcast_with_event_is_text_for_v2(server: RealtimeServer, connect: Connect) -> None:
    """Only client kind-3 frames become kind 4; JSON broadcasts stay JSON for V2 subscribers."""
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as v1, connect(server, "2.0.0") as v2:
            await v1.join("realtime:x")
            await v2.join("realtime:x")
            await v1.push("realtime:x", "broadcast", _bcast("e", {"a": 1}), join_ref="1")
            await v1.sync()
            [got] = await v2.sync()
            assert isinstance(got.raw, str)


async def test_public_and_private_never_mix(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with (
            connect(server, "2.0.0") as public,
            connect(server, "2.0.0") as private,
            connect(server, "1.0.0") as colon,
            connect(server, "1.0.0") as private2,
        ):
            await public.join("realtime:room", {"private": False, "broadcast": {"self": True}})
            await private.join("realtime:room", {"private": True, "broadcast": {"self": True}})
            await private2.join("realtime:room", {"private": "true"})
            await colon.join("realtime:private:room")
            await public.push("realtime:room", "broadcast", _bcast("pub", {}), join_ref="1")
            await private.push("realtime:room", "broadcast", _bcast("priv", {}), join_ref="1")
            # each sync() is also the barrier proving the other side's push was processed
            assert [f.payload["event"] for f in await private.sync()] == ["priv"]
            assert [f.payload["event"] for f in await public.sync()] == ["pub"]
            assert [f.payload["event"] for f in await private2.sync()] == ["priv"]
            assert await colon.sync() == []


async def test_other_topics_are_not_delivered(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server) as a, connect(server) as b:
            await a.join("realtime:one")
            await b.join("realtime:two")
            await a.push("realtime:one", "broadcast", _bcast("e", {}), join_ref="1")
            await a.sync()
            assert await b.sync() == []


@pytest.mark.parametrize("ack", [True, False])
async def test_payload_size_limit(start_server: StartServer, connect: Connect, ack: bool) -> None:
    with trio.fail_after(10):
        server = await start_server(max_payload_bytes=200)
        async with connect(server, "2.0.0") as sender, connect(server, "1.0.0") as other:
            await sender.join("realtime:big", {"broadcast": {"ack": ack}})
            await other.join("realtime:big")
            big = _bcast("e", {"pad": "x" * 300})
            ref = await sender.push("realtime:big", "broadcast", big, join_ref="1")
            frames = await sender.sync()
            if ack:
                [reply] = frames
                assert reply.ref == ref
                assert reply.reply == ("error", {"reason": "Payload size exceeded"})
            else:
                assert frames == []
            assert await other.sync() == []
            # a binary payload counts by its bytes
            await sender.send_raw(kind3("1", "8", "realtime:big", "e", b"\x00" * 300, encoding=0))
            assert len(await sender.sync()) == (1 if ack else 0)
            assert await other.sync() == []


async def test_non_map_broadcast_payload_is_ignored(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as sender, connect(server, "1.0.0") as other:
            await sender.join("realtime:r", {"broadcast": {"ack": True, "self": True}})
            await other.join("realtime:r")
            await sender.push("realtime:r", "broadcast", ["not", "a", "map"], join_ref="1")
            assert await sender.sync() == []
            assert await other.sync() == []


async def _raw_slow_subscriber(port: int, topic: str) -> tuple[trio.SocketStream, WSConnection]:
    """A V1 client that joins ``topic`` and then stops reading, with a tiny receive buffer."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/socket/websocket?apikey=k&vsn=1.0.0")))
    join = {"topic": topic, "event": "phx_join", "payload": {"config": {}}, "ref": "1", "join_ref": "1"}
    joined = False
    while not joined:
        ws.receive_data(await stream.receive_some())
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                await stream.send_all(ws.send(TextMessage(data=json.dumps(join))))
            elif isinstance(event, TextMessage):
                assert json.loads(event.data)["payload"]["status"] == "ok"
                joined = True
    return stream, ws


async def _drain_until_closed(stream: trio.SocketStream, ws: WSConnection) -> tuple[int, int | None]:
    """Read everything; answer the close frame. Returns (broadcasts seen, close code)."""
    broadcasts, code = 0, None
    while True:
        data = await stream.receive_some()
        if not data:
            return broadcasts, code
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage) and event.message_finished:
                broadcasts += 1
            elif isinstance(event, CloseConnection):
                code = event.code
                await stream.send_all(ws.send(event.response()))


async def _receive_broadcasts(client: RawClient, n: int) -> None:
    for _ in range(n):
        frame = await client.recv()
        assert frame.event == "broadcast"


async def test_send_queue_overflow_closes_only_the_slow_socket(
    start_server: StartServer, connect: Connect
) -> None:
    """A subscriber that stops reading is cut off (1008); fan-out to the others never waits."""
    n, size = 80, 100_000  # 8 MB: more than the kernel buffers between server and slow reader
    with trio.fail_after(10):
        server = await start_server(send_queue_size=4)
        async with connect(server, "1.0.0") as sender, connect(server, "2.0.0") as fast:
            await sender.join("realtime:flood", {"broadcast": {"ack": True}})
            await fast.join("realtime:flood")
            stream, ws = await _raw_slow_subscriber(server.port, "realtime:flood")
            async with stream:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_receive_broadcasts, fast, n)
                    for i in range(n):
                        big = _bcast("e", {"i": i, "pad": "x" * size})
                        ref = await sender.push("realtime:flood", "broadcast", big, join_ref="1")
                        assert (await sender.reply_to(ref)).reply == ("ok", {})
                assert server.statistics().send_queue_overflows == 1
                # the slow socket, when it finally reads, finds part of the flood and then the close
                seen, code = await _drain_until_closed(stream, ws)
                assert 0 < seen < n
                assert code == 1008
            # everyone else is unaffected
            assert await fast.sync() == []
            assert await sender.sync() == []
            assert server.statistics().connections == 2
            assert server.statistics().channels == 2
