"""Channel lifecycle on the wire: heartbeat, join, leave, errors, limits (PROTOCOL.md §1.4-§3)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio
from _server_helpers import ABSENT, kind3
from trio_websocket import ConnectionClosed

from trio_realtime.server._join import binding_id

if TYPE_CHECKING:
    from conftest import Connect, StartServer

    from trio_realtime.server import RealtimeServer


async def test_heartbeat_reply_exact_frames(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as v1:
            await v1.send_raw('{"topic":"phoenix","event":"heartbeat","payload":{},'
                              '"ref":"1","join_ref":null}')
            assert json.loads(await v1.ws.get_message()) == {
                "topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}},
                "ref": "1",
            }
        async with connect(server, "2.0.0") as v2:
            await v2.send_raw('[null,"1","phoenix","heartbeat",{}]')
            expected = '[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]'
            assert await v2.ws.get_message() == expected


async def test_other_phoenix_events_are_ignored(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            await client.push("phoenix", "something", {})
            assert await client.sync() == []


async def test_join_reply_shape(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    bindings = [
        {"event": "insert", "schema": "public", "table": "todos", "filter": "id=eq.1"},
        {"event": "*", "schema": "public"},
        {"event": "DELETE", "schema": "public", "table": "todos"},
    ]
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            reply = await client.join("realtime:room", {"postgres_changes": bindings})
            assert reply.topic == "realtime:room"
            assert reply.join_ref == (ABSENT if vsn == "1.0.0" else "1")
            status, response = reply.reply
            assert status == "ok"
            echoed = response["postgres_changes"]
            assert [b["event"] for b in echoed] == ["INSERT", "*", "DELETE"]
            for original, echo in zip(bindings, echoed, strict=True):
                assert {k: v for k, v in echo.items() if k not in ("id", "event")} == {
                    k: v for k, v in original.items() if k != "event"
                }
                assert isinstance(echo["id"], int)
                assert echo["id"] > 0
            assert len({b["id"] for b in echoed}) == 3
            # deterministic: the same bindings on another socket get the same ids
            async with connect(server, "1.0.0") as other:
                again = await other.join("realtime:elsewhere", {"postgres_changes": bindings})
                assert again.reply[1]["postgres_changes"] == echoed
            assert echoed[0]["id"] == binding_id({**bindings[0], "event": "INSERT"})
            assert server.statistics().channels == 1


async def test_join_reply_always_has_postgres_changes(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as client:
            await client.send_raw('["1","1","realtime:t","phx_join",{"config":{"broadcast":{"ack":false,'
                                  '"self":false},"presence":{"key":"","enabled":false},'
                                  '"postgres_changes":[],"private":false}}]')
            assert await client.ws.get_message() == (
                '["1","1","realtime:t","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]'
            )
            # a legacy join (no config) and an unparseable config still join
            assert (await client.join("realtime:legacy", None)).reply[0] == "ok"
            ref = await client.push("realtime:odd", "phx_join", {"config": {"broadcast": {"ack": "maybe"}}},
                                    join_ref="9")
            assert (await client.reply_to(ref)).reply == ("ok", {"postgres_changes": []})


async def test_topic_name_required(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            reply = await client.join("realtime:")
            assert reply.reply == ("error", {"reason": "TopicNameRequired: You must provide a topic name"})
            assert await client.sync() == []
            assert server.statistics().channels == 0


async def test_unmatched_topic(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            ref = await client.push("realtime:never-joined", "broadcast", {"event": "x", "payload": {}},
                                    join_ref="5")
            reply = await client.reply_to(ref)
            assert reply.reply == ("error", {"reason": "unmatched topic"})
            assert reply.join_ref == (ABSENT if vsn == "1.0.0" else None)
            # phx_leave of a topic that is not joined is fine
            ref = await client.push("realtime:never-joined", "phx_leave", {}, join_ref="5")
            leave = await client.reply_to(ref)
            assert leave.reply == ("ok", {})
            assert leave.join_ref == (ABSENT if vsn == "1.0.0" else "5")
            # only realtime:* topics are routed at all
            ref = await client.push("room:1", "phx_join", {"config": {}}, join_ref="6")
            assert (await client.reply_to(ref)).reply == ("error", {"reason": "unmatched topic"})
            assert await client.sync() == []


async def test_leave_replies_then_closes(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            await client.join("realtime:room")
            ref = await client.push("realtime:room", "phx_leave", {}, join_ref="1")
            leave = await client.reply_to(ref)
            assert leave.reply == ("ok", {})
            close = await client.expect("phx_close", "realtime:room")
            assert close.payload == {}
            assert close.ref == "1"
            if vsn == "2.0.0":
                assert json.loads(close.raw) == ["1", "1", "realtime:room", "phx_close", {}]
            else:
                assert json.loads(close.raw) == {"topic": "realtime:room", "event": "phx_close",
                                                 "payload": {}, "ref": "1"}
            # the topic is no longer joined
            ref = await client.push("realtime:room", "broadcast", {"event": "e", "payload": {}}, join_ref="1")
            assert (await client.reply_to(ref)).reply == ("error", {"reason": "unmatched topic"})
            assert server.statistics().channels == 0


async def test_duplicate_join_closes_old_join_ref(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            first = await client.join("realtime:room")
            assert first.ref == "1"
            second = await client.join("realtime:room")
            assert second.ref == "2"
            assert second.reply[0] == "ok"
            close = await client.expect("phx_close", "realtime:room")
            assert close.ref == "1"
            if vsn == "2.0.0":
                assert close.join_ref == "1"
            assert await client.sync() == []
            assert server.statistics().channels == 1
            # pushes with the old join_ref are stale and dropped; the new one works
            track = {"event": "track", "payload": {}}
            await client.push("realtime:room", "presence", track, join_ref="1")
            assert await client.sync() == []
            ref = await client.push("realtime:room", "presence", track, join_ref="2")
            assert (await client.reply_to(ref)).reply == ("ok", {})


async def test_duplicate_join_refused_still_closes_old(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server()
        async with connect(server, "2.0.0") as client:
            await client.join("realtime:room")
            bad = await client.join("realtime:room", {"broadcast": {"replay": {"since": 1}}})
            reason = "UnableToReplayMessages: Replay is not allowed for public channels"
            assert bad.reply == ("error", {"reason": reason})
            assert (await client.expect("phx_close")).ref == "1"
            assert server.statistics().channels == 0


async def test_max_channels_per_client(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(max_channels_per_client=2)
        async with connect(server, "1.0.0") as client:
            assert (await client.join("realtime:a")).reply[0] == "ok"
            assert (await client.join("realtime:b")).reply[0] == "ok"
            assert (await client.join("realtime:c")).reply == (
                "error", {"reason": "ChannelRateLimitReached: Too many channels"})
            # rejoining a joined topic replaces it, so it does not count twice
            assert (await client.join("realtime:a")).reply[0] == "ok"
            await client.expect("phx_close", "realtime:a")
            # a leave frees a slot
            ref = await client.push("realtime:b", "phx_leave", {})
            await client.reply_to(ref)
            await client.expect("phx_close", "realtime:b")
            assert (await client.join("realtime:c")).reply[0] == "ok"


async def test_join_error_backoff_delays_the_reply(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(join_error_backoff=0.2)
        async with connect(server, "1.0.0") as client:
            start = trio.current_time()
            assert (await client.join("realtime:")).reply[0] == "error"
            assert trio.current_time() - start >= 0.2
            assert (await client.join("realtime:ok")).reply[0] == "ok"


async def test_replay_rules(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as client:
            assert (await client.join("realtime:r1", {"private": True, "broadcast": {"replay": {"limit": 3}}})
                    ).reply == ("error", {"reason": "UnableToReplayMessages: Replay params are not valid"})
            ok = await client.join("realtime:r2", {"private": True, "broadcast": {"replay": {"since": 0}}})
            assert ok.reply[0] == "ok"


async def test_replication_ready_system_message(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as client:
            await client.join("realtime:rr", {"broadcast": {"replication_ready": True}})
            system = await client.expect("system", "realtime:rr")
            assert system.join_ref == "1"
            assert system.payload == {"extension": "system", "status": "ok",
                                      "message": "Replication connection established", "channel": "rr"}


async def test_unknown_event_on_joined_channel_is_ignored(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            await client.join("realtime:room")
            await client.push("realtime:room", "postgres_changes", {"x": 1}, join_ref="1")
            await client.push("realtime:room", "whatever", {}, join_ref="1")
            assert await client.sync() == []


@pytest.mark.parametrize(
    ("vsn", "frame"),
    [
        ("1.0.0", "not json"),
        ("1.0.0", ""),
        ("1.0.0", "[null,null,\"realtime:x\",\"phx_join\",{}]"),
        ("1.0.0", '{"topic":"realtime:x","event":"phx_join","payload":{}}'),  # no ref key
        ("1.0.0", '{"topic":1,"event":"phx_join","payload":{},"ref":null}'),
        ("1.0.0", '{"topic":"t","event":"e","payload":{"x":NaN},"ref":null}'),
        ("1.0.0", b"\x03binary on a text-only socket"),
        ("2.0.0", '{"topic":"realtime:x","event":"phx_join","payload":{},"ref":"1"}'),
        ("2.0.0", '["1","1","realtime:x","phx_join"]'),
        ("2.0.0", "[]"),
        ("2.0.0", b""),
        ("2.0.0", b"\x07\x00\x00"),  # unknown kind
        ("2.0.0", b"\x04\x01\x01\x00\x01tx{}"),  # a server kind from a client
        ("2.0.0", b"\x03\x01\x01"),  # truncated header
        ("2.0.0", kind3("1", "2", "realtime:x", "e", b"{}")[:-6]),  # truncated body
        ("2.0.0", kind3("1", "2", "realtime:x", "e", b"{}", encoding=9)),  # unknown encoding
        ("2.0.0", kind3("1", "2", "realtime:x", "e", b"{not json")),
    ],
)
async def test_malformed_frames_are_dropped(server: RealtimeServer, connect: Connect, vsn: str,
                                            frame: str | bytes) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            await client.send_raw(frame)
            await client.send_raw(frame)
            assert await client.sync() == []
            stats = server.statistics()
            assert stats.malformed_frames == 2
            assert stats.connections == 1


async def test_oversized_frame_closes_with_1009(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(max_frame_size=1000)
        async with connect(server, "1.0.0") as client:
            await client.push("phoenix", "heartbeat", {"pad": "x" * 900})  # fits
            await client.expect("phx_reply")
            await client.push("phoenix", "heartbeat", {"pad": "x" * 2000})
            with pytest.raises(ConnectionClosed) as info:
                await client.recv()
            assert info.value.reason is not None
            assert info.value.reason.code == 1009


async def test_idle_socket_is_closed_with_1000(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(idle_timeout=0.2)
        async with connect(server, "2.0.0") as client:
            await client.join("realtime:room")
            with pytest.raises(ConnectionClosed) as info:
                await client.recv()
            assert info.value.reason is not None
            assert info.value.reason.code == 1000


async def test_disconnect_all(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client, connect(server, "1.0.0") as idle:
            await client.join("realtime:a")
            await client.join("realtime:b")
            await idle.sync()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.disconnect_all)
                systems = [await client.expect("system"), await client.expect("system")]
                assert {s.topic for s in systems} == {"realtime:a", "realtime:b"}
                for s in systems:
                    assert s.payload == {"extension": "system", "status": "ok",
                                         "message": "Server requested disconnect"}
                for c in (client, idle):
                    with pytest.raises(ConnectionClosed) as info:
                        await c.recv()
                    assert info.value.reason is not None
                    assert info.value.reason.code == 1012
            assert server.statistics().connections == 0
            assert server.statistics().channels == 0
