"""Presence: track/untrack, state and diff events, and re-tracking after a reconnect."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    ChannelErrored,
    LocalProtocolError,
    PresenceConfig,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    PushRejected,
    Rejoined,
)
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

    from trio_realtime import RealtimeEvent, Subscription

ALICE = PresenceConfig(key="alice")


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_track_and_untrack(vsn: str, autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server(vsn) as server,
            open_client(server) as client,
            client.channel("room", presence=ALICE) as sub,
        ):
            assert server.messages("phx_join")[0].payload["config"]["presence"] == {
                "key": "alice",
                "enabled": True,
            }
            # presence_state right after the join.
            assert await sub.receive() == PresenceSync(topic="realtime:room", state={})

            await sub.track({"status": "online"})
            [track] = server.messages("presence")
            assert track.payload == {"type": "presence", "event": "track", "payload": {"status": "online"}}
            join = await sub.receive()
            assert isinstance(join, PresenceJoin)
            assert join.key == "alice"
            assert join.current == ()
            [meta] = join.new
            assert meta["status"] == "online"
            assert "presence_ref" in meta
            assert "phx_ref" not in meta
            sync = await sub.receive()
            assert isinstance(sync, PresenceSync)
            assert sync.state == {"alice": (meta,)}
            assert sub.presence() == {"alice": (meta,)}

            await sub.untrack()
            assert server.messages("presence")[-1].payload == {"type": "presence", "event": "untrack"}
            leave = await sub.receive()
            assert isinstance(leave, PresenceLeave)
            assert leave.key == "alice"
            assert leave.left == (meta,)
            assert await sub.receive() == PresenceSync(topic="realtime:room", state={})
            assert sub.presence() == {}


async def test_presence_of_another_client(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as first,
            open_client(server) as second,
            first.channel("room", presence=ALICE) as alice,
        ):
            await alice.track({"name": "Alice"})
            async with second.channel("room", presence=PresenceConfig(key="bob")) as bob:
                # Bob's presence_state already holds Alice.
                join = await bob.receive()
                assert isinstance(join, PresenceJoin)
                assert join.key == "alice"
                sync = await bob.receive()
                assert isinstance(sync, PresenceSync)
                assert [m["name"] for m in sync.state["alice"]] == ["Alice"]
            # Alice saw her own join, then nothing from Bob (he never tracked).
            await wait_all_tasks_blocked()
            assert [type(e) for e in _drain(alice)] == [PresenceSync, PresenceJoin, PresenceSync]


def _drain(sub: Subscription) -> list[RealtimeEvent]:
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except trio.WouldBlock:
            return events


async def test_retracks_after_reconnect(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", presence=ALICE) as sub,
        ):
            await sub.track({"status": "online"})
            await wait_all_tasks_blocked()
            _drain(sub)

            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            assert isinstance(await sub.receive(), Rejoined)
            await wait_all_tasks_blocked()
            # On the new connection the client tracked its meta again, by itself.
            new = [f.message for f in server.frames if f.connection == 1]
            assert [m.event for m in new] == ["phx_join", "presence"]
            assert new[1].payload == {"type": "presence", "event": "track", "payload": {"status": "online"}}
            assert [m["status"] for m in sub.presence()["alice"]] == ["online"]
            assert trio.current_time() == 1.0


async def test_untracked_meta_is_not_retracked(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", presence=ALICE) as sub,
        ):
            await sub.track({"status": "online"})
            await sub.untrack()
            server.drop_connection()
            await server.wait_frame("phx_join", count=2)
            await wait_all_tasks_blocked()
            assert trio.current_time() == 1.0
            new = [f.message for f in server.frames if f.connection == 1]
            assert [m.event for m in new] == ["phx_join"]


async def test_track_rejected(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", presence=ALICE) as sub,
        ):
            server.reply_to("presence", "error", {})
            with pytest.raises(PushRejected):
                await sub.track({"status": "online"})
            with pytest.raises(LocalProtocolError, match=r"^presence meta must be a dict, got list$"):
                await sub.track(["not", "a", "dict"])  # type: ignore[arg-type]
