"""The ScriptedServer itself: the public test helper in trio_realtime.testing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import URL, open_client
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

from trio_realtime import (
    Broadcast,
    ChannelErrored,
    HandshakeFailed,
    JoinTimedOut,
    RealtimeConfig,
    Rejoined,
    ServerEvent,
    SubscriptionClosed,
    open_realtime,
)
from trio_realtime.protocol import ChannelConfig, Message, PostgresChanges, serializer_for
from trio_realtime.testing import MemoryTransport, RecordedFrame, ScriptedServer, open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock


async def _client_end(server: ScriptedServer, vsn: str = "2.0.0") -> MemoryTransport:
    return await server.transport_factory(f"ws://test/realtime/v1/websocket?apikey=k&vsn={vsn}")


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_raw_exchange_uses_official_reply_shapes(vsn: str, autojump_clock: MockClock) -> None:
    """Drive the server with raw frames, as any Phoenix client would."""
    ser = serializer_for(vsn, "client")
    with trio.fail_after(10):
        async with open_scripted_server(vsn) as server:
            transport = await _client_end(server, vsn)
            binding = {"event": "INSERT", "schema": "public", "table": "todos"}
            config = ChannelConfig(postgres_changes=(PostgresChanges(event="INSERT", table="todos"),))
            for message in (
                Message(topic="phoenix", event="heartbeat", ref="1"),
                Message(
                    join_ref="2",
                    ref="2",
                    topic="realtime:r",
                    event="phx_join",
                    payload=config.join_payload("tok"),
                ),
                Message(join_ref="2", ref="3", topic="realtime:r", event="phx_leave"),
                Message(
                    join_ref="9",
                    ref="4",
                    topic="realtime:nope",
                    event="broadcast",
                    payload={"type": "broadcast", "event": "e", "payload": {}},
                ),
            ):
                await transport.send_message(ser.encode(message))
            received: list[Message] = []
            while len(received) < 5:
                received += [ser.decode(data) for data in await transport.receive_messages()]
            hb, join, leave, close, unmatched = received
            assert (hb.topic, hb.event, hb.ref, hb.payload) == (
                "phoenix",
                "phx_reply",
                "1",
                {"status": "ok", "response": {}},
            )
            assert join.event == "phx_reply"
            assert join.ref == "2"
            [echoed] = join.payload["response"]["postgres_changes"]
            assert join.payload["status"] == "ok"
            assert {k: v for k, v in echoed.items() if k != "id"} == binding
            assert isinstance(echoed["id"], int)
            assert (leave.ref, leave.payload) == ("3", {"status": "ok", "response": {}})
            assert (close.event, close.ref, close.payload) == ("phx_close", "2", {})
            assert close.join_ref == (None if vsn == "1.0.0" else "2")
            assert unmatched.payload == {"status": "error", "response": {"reason": "unmatched topic"}}
            assert [f.message.event for f in server.frames] == [
                "heartbeat",
                "phx_join",
                "phx_leave",
                "broadcast",
            ]
            assert all(isinstance(f, RecordedFrame) and f.connection == 0 for f in server.frames)
            assert server.heartbeat_times == [0.0]
            await transport.aclose()


async def test_duplicate_join_closes_the_old_join(autojump_clock: MockClock) -> None:
    ser = serializer_for("2.0.0", "client")
    with trio.fail_after(10):
        async with open_scripted_server() as server:
            transport = await _client_end(server)
            for ref in ("1", "2"):
                await transport.send_message(
                    ser.encode(Message(join_ref=ref, ref=ref, topic="realtime:r", event="phx_join"))
                )
            received: list[Message] = []
            while len(received) < 3:
                received += [ser.decode(data) for data in await transport.receive_messages()]
            assert [(m.event, m.ref) for m in received] == [
                ("phx_reply", "1"),
                ("phx_reply", "2"),
                ("phx_close", "1"),
            ]
            assert server.join_ref("r") == "2"
            await transport.aclose()


async def test_refusals_and_version_mismatch(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server("2.0.0") as server:
            with pytest.raises(
                HandshakeFailed, match=r"HTTP 403: this ScriptedServer speaks vsn 2\.0\.0"
            ) as exc:
                await _client_end(server, "1.0.0")
            assert exc.value.status == 403
            server.refuse_connections(2, status=429, body='{"error":"Too many connected users"}')
            for _ in range(2):
                with pytest.raises(HandshakeFailed) as exc:
                    await _client_end(server)
                assert (exc.value.status, exc.value.body) == (429, '{"error":"Too many connected users"}')
            transport = await _client_end(server)
            assert len(server.connect_times) == len(server.connect_urls) == 4
            assert len(server.refused_times) == 3
            assert server.open_connections == 1
            await transport.aclose()
            await wait_all_tasks_blocked()
            assert server.open_connections == 0
            assert server.disconnect_times == [0.0]


async def test_not_running(autojump_clock: MockClock) -> None:
    server = ScriptedServer()
    assert repr(server) == "<ScriptedServer vsn=2.0.0 0 connections (0 open), 0 frames received>"
    with trio.fail_after(10):
        with pytest.raises(HandshakeFailed, match=r"not running"):
            await _client_end(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            with pytest.raises(RuntimeError, match=r"^a ScriptedServer can be served only once$"):
                await server.serve()
            nursery.cancel_scope.cancel()
        # Stopped: new attempts fail loudly instead of hanging.
        with pytest.raises(HandshakeFailed, match=r"stopped serving"):
            await _client_end(server)


async def test_factory_is_a_checkpoint(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server:
            with assert_checkpoints():
                transport = await _client_end(server)
            await transport.aclose()


async def test_invalid_frame_closes_connection(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server:
            transport = await _client_end(server)
            await transport.send_message("this is not json")
            await wait_all_tasks_blocked()
            assert len(server.protocol_errors) == 1
            assert server.open_connections == 0
            with pytest.raises(Exception, match=r"code 1007"):
                await transport.receive_messages()


async def test_join_reply_delay_and_join_timeout(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server, open_client(server, join_timeout=5.0) as client:
            server.join_reply_delay = 3.0
            async with client.channel("slow"):
                assert trio.current_time() == 3.0
            server.join_reply_delay = 6.0
            with pytest.raises(JoinTimedOut):
                async with client.channel("slower"):
                    pass  # pragma: no cover
            assert trio.current_time() == 3.0 + 5.0
            # The late reply to the abandoned join (due at 14) is never sent.
            await trio.sleep_until(20.0)
            await wait_all_tasks_blocked()
            assert server.joined_topics() == set()
            assert client.statistics().channels == 0


async def test_push_and_broadcast_reach_joined_connections(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as first,
            open_client(server) as second,
            first.channel("room") as a,
            second.channel("room") as b,
            second.channel("elsewhere") as c,
        ):
            change = {"anything": [1, 2]}
            await server.push("room", "custom_event", change)
            await server.broadcast("room", "blob", b"\x01\x02")
            for sub in (a, b):
                assert await sub.receive() == ServerEvent(
                    topic="realtime:room", event="custom_event", payload=change
                )
                assert await sub.receive() == Broadcast(
                    topic="realtime:room", event="blob", payload=b"\x01\x02"
                )
            # Broadcasts between clients: "self" is off, so only the other one gets it.
            await a.send_broadcast("hi", {"from": "a"})
            assert await b.receive() == Broadcast(topic="realtime:room", event="hi", payload={"from": "a"})
            await wait_all_tasks_blocked()
            for sub in (a, c):
                with pytest.raises(trio.WouldBlock):
                    sub.receive_nowait()
            assert server.joined_topics(0) == {"realtime:room"}
            assert server.joined_topics(1) == {"realtime:room", "realtime:elsewhere"}


async def test_drop_and_close_one_connection(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as first,
            open_client(server) as second,
            first.channel("room") as a,
            second.channel("room") as b,
        ):
            server.drop_connection(0)
            assert isinstance(await a.receive(), ChannelErrored)
            assert isinstance(await a.receive(), Rejoined)
            await server.error_channel("room")
            for sub in (a, b):
                assert isinstance(await sub.receive(), ChannelErrored)
                assert isinstance(await sub.receive(), Rejoined)
            await server.close_channel("room")
            for sub in (a, b):
                await sub.receive()  # the system message
                with pytest.raises(SubscriptionClosed, match=r"Token has expired"):
                    await sub.receive()
            with pytest.raises(LookupError, match=r"no connection 7"):
                server.drop_connection(7)


async def test_wait_frame_counts_frames_already_received(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server, open_client(server, heartbeat_interval=1.0):
            await trio.sleep(2.5)
            frame = await server.wait_frame("heartbeat", topic="phoenix")
            assert frame.time == 1.0
            frame = await server.wait_frame("heartbeat", count=4)
            assert frame.time == trio.current_time() == 4.0
            assert [m.event for m in server.messages(topic="phoenix")] == ["heartbeat"] * 4


async def test_docstring_example(autojump_clock: MockClock) -> None:
    """The example in ScriptedServer's docstring works as written."""
    from trio_realtime import BackoffPolicy

    config = RealtimeConfig(reconnect_backoff=BackoffPolicy(base=1, jitter=False))
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_realtime(URL, config=config, transport_factory=server.transport_factory) as client,
            client.channel("room") as sub,
        ):
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            assert isinstance(await sub.receive(), Rejoined)
            assert server.connect_times == [0, 1]
            assert [t for _, t in server.join_times] == [0, 1]
