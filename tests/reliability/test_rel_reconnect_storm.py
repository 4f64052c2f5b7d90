"""A reconnect storm: 50 clients behind the fault proxy lose their connections at once.

With full-jitter backoff each client waits a uniform draw from ``[0, base)`` before its
first reconnect attempt, so the crowd comes back spread over the window instead of in
lock-step. Each client gets its own seeded ``random.Random``, so the draws are known in
advance: the test asserts that each client waited at least its own draw (the jitter really
is applied, per client) and that the crowd's reconnects cover the window. It asserts the
spread, never a wall-clock duration. Real sockets, no mock clock, under ``fail_after``.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from trio_realtime import (
    BackoffPolicy,
    ChannelErrored,
    ConnectionState,
    RealtimeConfig,
    Rejoined,
    open_realtime,
)
from trio_realtime.server import serve_realtime
from trio_realtime.testing import FaultProxy, open_fault_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_realtime import ClientStatistics
    from trio_realtime.server import RealtimeServer

GUARD = 20
CLIENTS = 50
#: The backoff window: the first reconnect waits uniform [0, WINDOW).
WINDOW = 0.5
SEEDS = range(CLIENTS)


@asynccontextmanager
async def server_behind_proxy() -> AsyncIterator[tuple[RealtimeServer, FaultProxy]]:
    async with trio.open_nursery() as nursery:
        server: RealtimeServer = await nursery.start(serve_realtime, "127.0.0.1", 0)
        async with open_fault_proxy("127.0.0.1", server.port) as proxy:
            yield server, proxy
        nursery.cancel_scope.cancel()


def first_draw(seed: int) -> float:
    """The delay client ``seed`` waits before its first reconnect (its RNG's first use)."""
    return BackoffPolicy(base=WINDOW, cap=WINDOW).delay(0, random.Random(seed))


def most_within(delays: list[float], width: float) -> int:
    """The largest number of ``delays`` that fall within any interval of ``width`` seconds."""
    ordered = sorted(delays)
    best = start = 0
    for end, value in enumerate(ordered):
        while value - ordered[start] > width:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_reconnect_storm_is_spread_over_the_backoff_window() -> None:
    delays: dict[int, float] = {}  # seed -> seconds from the cut to its reconnection
    stats: dict[int, ClientStatistics] = {}
    all_back = trio.Event()
    finish = trio.Event()
    cut_at: list[float] = []

    with trio.fail_after(GUARD):
        async with server_behind_proxy() as (server, proxy), trio.open_nursery() as nursery:
            url = proxy.url_for(server.url)

            async def client(seed: int, *, task_status: trio.TaskStatus[None]) -> None:
                config = RealtimeConfig(
                    rng=random.Random(seed), reconnect_backoff=BackoffPolicy(base=WINDOW, cap=WINDOW)
                )
                async with (
                    open_realtime(url, api_key="k", config=config) as c,
                    c.watch_state() as states,
                    c.channel("storm") as sub,
                ):
                    assert await states.receive() is ConnectionState.CONNECTED
                    task_status.started()
                    assert await states.receive() is ConnectionState.RECONNECTING
                    assert await states.receive() is ConnectionState.CONNECTED
                    delays[seed] = trio.current_time() - cut_at[0]
                    assert isinstance(await sub.receive(), ChannelErrored)
                    assert await sub.receive() == Rejoined(topic="realtime:storm", recovered=False)
                    stats[seed] = c.statistics()
                    if len(stats) == CLIENTS:
                        all_back.set()
                    await finish.wait()

            for seed in SEEDS:
                await nursery.start(client, seed)
            assert proxy.statistics().active_connections == CLIENTS

            cut_at.append(trio.current_time())
            await proxy.cut()
            await all_back.wait()
            finish.set()

    # Every client lost its connection once and came back on its first attempt.
    assert all(s.connection_attempts == 2 and s.reconnects == 1 for s in stats.values())
    proxy_stats = proxy.statistics()
    assert (proxy_stats.connections_accepted, proxy_stats.connections_cut) == (2 * CLIENTS, CLIENTS)

    # Each client waited at least its own jittered draw (reconnecting takes a little more).
    draws = {seed: first_draw(seed) for seed in SEEDS}
    assert all(delays[seed] >= draws[seed] for seed in SEEDS), {
        seed: (round(delays[seed], 3), round(draws[seed], 3)) for seed in SEEDS if delays[seed] < draws[seed]
    }
    # The seeds' draws do cover the window (a check of the test's own premise) ...
    assert max(draws.values()) - min(draws.values()) > 0.9 * WINDOW
    # ... and so do the reconnects: spread over at least half of it, never bunched up. In
    # lock-step (no jitter) all 50 would land within a few milliseconds of one another.
    observed = list(delays.values())
    assert max(observed) - min(observed) >= WINDOW / 2, sorted(observed)
    assert most_within(observed, WINDOW / 10) <= CLIENTS // 2, sorted(observed)
    bins = {min(int(d / (WINDOW / 5)), 4) for d in observed}
    assert len(bins) >= 4, sorted(observed)  # at least 4 of the window's 5 fifths are used
