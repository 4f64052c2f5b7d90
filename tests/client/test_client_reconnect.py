"""Reconnecting: backoff schedule, jitter, giving up, and the first connection failing."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import URL, make_config, open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    BackoffPolicy,
    ChannelErrored,
    ConnectionState,
    HandshakeFailed,
    Rejoined,
    SubscriptionClosed,
    open_realtime,
)
from trio_realtime.testing import ScriptedServer, open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock


async def _lose_connection_at(server: ScriptedServer, t0: float) -> None:
    await trio.sleep_until(t0)
    server.drop_connection()


async def test_backoff_delays_double_after_each_refusal(autojump_clock: MockClock) -> None:
    backoff = BackoffPolicy(base=1.0, factor=2.0, cap=60.0, jitter=False)
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server, reconnect_backoff=backoff) as client,
            client.channel("room") as sub,
        ):
            server.refuse_connections(3, status=503, body="Realtime is restarting")
            await _lose_connection_at(server, 10.0)
            assert isinstance(await sub.receive(), ChannelErrored)
            assert await sub.receive() == Rejoined(topic="realtime:room", recovered=False)
            # Lost at 10: wait 1, refused; wait 2, refused; wait 4, refused; wait 8, accepted.
            assert server.connect_times == [0.0, 11.0, 13.0, 17.0, 25.0]
            assert server.refused_times == [11.0, 13.0, 17.0]
            assert server.join_times[-1] == ("realtime:room", 25.0)
            stats = client.statistics()
            assert stats.connection_attempts == 5
            assert stats.connections == 2
            assert stats.connection_losses == 1


async def test_backoff_is_capped(autojump_clock: MockClock) -> None:
    backoff = BackoffPolicy(base=1.0, factor=2.0, cap=3.0, jitter=False)
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server, reconnect_backoff=backoff) as client,
            client.channel("room") as sub,
        ):
            server.refuse_connections(4)
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            assert isinstance(await sub.receive(), Rejoined)
            # Delays 1, 2, then min(3, 4), min(3, 8), min(3, 16).
            assert server.connect_times == [0.0, 1.0, 3.0, 6.0, 9.0, 12.0]


JITTER = BackoffPolicy(base=1.0, factor=2.0, cap=5.0, jitter=True)
#: The ceilings of the waits after a loss with 4 refusals: 1, 2, 4, then capped at 5.
CEILINGS = [1.0, 2.0, 4.0, 5.0, 5.0]


async def _jittered_connect_times(seed: int) -> tuple[float, list[float]]:
    """Lose the connection, refuse 4 reconnects; return (time of loss, reconnect attempt times)."""
    async with (
        open_scripted_server() as server,
        open_client(server, reconnect_backoff=JITTER, rng=random.Random(seed)) as client,
        client.channel("room") as sub,
    ):
        start = trio.current_time()
        server.refuse_connections(4)
        server.drop_connection()
        assert isinstance(await sub.receive(), ChannelErrored)
        assert isinstance(await sub.receive(), Rejoined)
        return start, server.connect_times[1:]


def _expected_times(start: float, seed: int) -> list[float]:
    """Full jitter: each wait is ceiling * rng.random(), drawn in order from Random(seed)."""
    rng = random.Random(seed)
    times, t = [], start
    for ceiling in CEILINGS:
        delay = ceiling * rng.random()
        assert 0.0 <= delay < ceiling
        t += delay
        times.append(t)
    return times


async def test_jitter_is_bounded_and_reproducible(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        start1, first = await _jittered_connect_times(seed=1234)
        start2, second = await _jittered_connect_times(seed=1234)
        start3, other = await _jittered_connect_times(seed=99)
    assert first == _expected_times(start1, 1234)
    assert second == _expected_times(start2, 1234)
    assert other == _expected_times(start3, 99)
    delays = [b - a for a, b in zip([start1, *first], first, strict=False)]
    assert [b - a for a, b in zip([start2, *second], second, strict=False)] == pytest.approx(delays)
    assert [b - a for a, b in zip([start3, *other], other, strict=False)] != pytest.approx(delays)
    for delay, ceiling in zip(delays, CEILINGS, strict=True):
        assert 0.0 <= delay < ceiling


async def test_gives_up_after_max_attempts(autojump_clock: MockClock) -> None:
    backoff = BackoffPolicy(base=1.0, factor=2.0, cap=60.0, jitter=False, max_attempts=3)
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server, reconnect_backoff=backoff) as client,
            client.channel("room") as sub,
        ):
            server.refuse_connections(None)
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            with pytest.raises(SubscriptionClosed, match=r"reconnect gave up after 3 attempts") as exc_info:
                await sub.receive()
            assert exc_info.value.topic == "realtime:room"
            assert trio.current_time() == 7.0
            assert server.connect_times == [0.0, 1.0, 3.0, 7.0]
            await wait_all_tasks_blocked()
            assert client.state is ConnectionState.CLOSED
            with pytest.raises(trio.ClosedResourceError):
                await client.wait_connected()
            with pytest.raises(SubscriptionClosed):
                await sub.send_broadcast("late", {})


async def test_first_connection_refused_raises_handshake_failed(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server:
            server.refuse_connections(1, status=401, body='{"error":"API key is missing"}')
            entered = False
            with pytest.raises(HandshakeFailed) as exc_info:
                async with open_realtime(
                    URL, config=make_config(), transport_factory=server.transport_factory
                ):
                    entered = True
            assert not entered
            assert type(exc_info.value) is HandshakeFailed
            assert exc_info.value.status == 401
            assert exc_info.value.body == '{"error":"API key is missing"}'
            assert str(exc_info.value) == (
                'server refused the WebSocket upgrade with HTTP 401: {"error":"API key is missing"}'
            )
            # No retry: one attempt, and nothing is left running.
            assert server.connect_times == [0.0]
            assert trio.current_time() == 0.0


async def test_reconnect_after_graceful_server_close(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            await trio.sleep_until(5.0)
            await server.close_connection(1012, "Server requested disconnect")
            errored = await sub.receive()
            assert isinstance(errored, ChannelErrored)
            assert "1012" in errored.reason
            assert isinstance(await sub.receive(), Rejoined)
            assert server.connect_times == [0.0, 6.0]
