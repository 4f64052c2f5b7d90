"""Heartbeats: exact send times, and a missed reply declaring the connection dead."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from trio_realtime import ChannelErrored, ConnectionState, Rejoined
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

from _client_helpers import open_client


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_heartbeats_at_default_interval(vsn: str, autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server(vsn) as server, open_client(server) as client:
            await server.wait_frame("heartbeat", count=3)
            assert server.heartbeat_times == [25.0, 50.0, 75.0]
            assert trio.current_time() == 75.0
            await wait_all_tasks_blocked()
            stats = client.statistics()
            assert stats.heartbeats_sent == 3
            assert stats.last_heartbeat_rtt == 0.0
            assert stats.connection_losses == 0
            assert client.state is ConnectionState.CONNECTED


async def test_heartbeats_at_configured_interval(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server, open_client(server, heartbeat_interval=5.0):
            await server.wait_frame("heartbeat", count=4)
            assert server.heartbeat_times == [5.0, 10.0, 15.0, 20.0]


async def test_missed_heartbeat_reply_kills_connection_and_rejoins_with_fresh_token(
    autojump_clock: MockClock,
) -> None:
    tokens: list[str] = []

    async def access_token() -> str:
        tokens.append(f"user-token-{len(tokens) + 1}")
        await trio.lowlevel.checkpoint()
        return tokens[-1]

    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server, access_token=access_token, heartbeat_timeout=10.0) as client,
            client.channel("room") as sub,
        ):
            server.answer_heartbeats = False
            errored = await sub.receive()
            # The heartbeat went out at 25 and was due back by 25 + 10.
            assert trio.current_time() == 35.0
            assert isinstance(errored, ChannelErrored)
            assert errored.reason.startswith("heartbeat timeout")
            server.answer_heartbeats = True

            assert await sub.receive() == Rejoined(topic="realtime:room", recovered=False)
            # Reconnected after the first backoff delay (1 s, no jitter) and rejoined at once.
            assert trio.current_time() == 36.0
            assert server.connect_times == [0.0, 36.0]
            assert server.join_times == [("realtime:room", 0.0), ("realtime:room", 36.0)]
            assert server.disconnect_times == [35.0]
            joins = server.messages("phx_join")
            assert [m.payload["access_token"] for m in joins] == ["user-token-1", "user-token-2"]
            assert tokens == ["user-token-1", "user-token-2"]

            # The new connection's heartbeats count from its own start.
            await server.wait_frame("heartbeat", count=2)
            assert server.heartbeat_times == [25.0, 61.0]
            stats = client.statistics()
            assert stats.connection_losses == 1
            assert stats.reconnects == 1
            assert stats.joined_channels == 1


async def test_default_heartbeat_timeout_is_one_interval(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            server.answer_heartbeats = False
            assert isinstance(await sub.receive(), ChannelErrored)
            assert trio.current_time() == 50.0
            assert server.heartbeat_times == [25.0]
