"""A subscriber that does not keep up must never slow down the reader, heartbeats or others."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import Broadcast, ConnectionState, Dropped, SubscriptionClosed
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock


def _numbers(events: list[object]) -> list[object]:
    return [e.payload["n"] if isinstance(e, Broadcast) else e for e in events]


async def test_overflow_drop_counts_and_reports(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("slow", buffer=2, overflow="drop") as slow,
            client.channel("fast") as fast,
        ):
            for n in range(10):
                await server.broadcast("slow", "tick", {"n": n})
                await server.broadcast("fast", "tick", {"n": n})
            # Nobody reads "slow" for 75 s: heartbeats still go out and come back on time.
            await server.wait_frame("heartbeat", count=3)
            await wait_all_tasks_blocked()
            assert server.heartbeat_times == [25.0, 50.0, 75.0]
            stats = client.statistics()
            assert stats.state is ConnectionState.CONNECTED
            assert stats.connection_losses == 0
            assert stats.last_heartbeat_rtt == 0.0
            assert stats.dropped_events == 8
            assert stats.queued_events == 2 + 10
            assert slow.statistics().dropped == 8
            assert slow.statistics().queued == 2
            # The other channel got everything.
            assert _numbers([await fast.receive() for _ in range(10)]) == list(range(10))

            assert _numbers([await slow.receive(), await slow.receive()]) == [0, 1]
            with pytest.raises(trio.WouldBlock):
                slow.receive_nowait()
            # The next event is preceded by a Dropped marker counting what was lost.
            await server.broadcast("slow", "tick", {"n": 10})
            assert await slow.receive() == Dropped(topic="realtime:slow", count=8)
            assert _numbers([await slow.receive()]) == [10]
            assert slow.statistics().dropped == 8


async def test_overflow_close_ends_subscription_after_queued_events(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("slow", buffer=2, overflow="close") as slow,
            client.channel("fast") as fast,
        ):
            for n in range(5):
                await server.broadcast("slow", "tick", {"n": n})
            await server.broadcast("fast", "tick", {"n": 0})
            assert _numbers([await fast.receive()]) == [0]
            assert _numbers([await slow.receive(), await slow.receive()]) == [0, 1]
            with pytest.raises(SubscriptionClosed, match=r"overflow") as exc_info:
                await slow.receive()
            assert exc_info.value.reason.startswith("overflow: ")
            assert "queue of 2 events" in exc_info.value.reason
            # The client and the other channel are unaffected.
            await server.broadcast("fast", "tick", {"n": 1})
            assert _numbers([await fast.receive()]) == [1]
            assert client.state is ConnectionState.CONNECTED
