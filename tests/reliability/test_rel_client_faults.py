"""Our client against our server through the fault proxy: real loopback sockets, real faults.

The client under test (``a``) reaches the server through the proxy; a second client (``b``),
connected directly, sends and watches. No mock clock here (real I/O): every test runs under
an absolute ``fail_after``, ordering comes from events and the proxy's statistics, and the
only timing asserts are bounds that cannot flake (a detection within a generous multiple of
its budget, a delay of at least the injected latency).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ConnectionState,
    Dropped,
    RealtimeConfig,
    RealtimeEvent,
    Rejoined,
    Subscription,
    open_realtime,
)
from trio_realtime.server import serve_realtime
from trio_realtime.testing import FaultProxy, open_fault_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from trio_realtime.server import RealtimeServer
    from trio_realtime.testing._proxy import Direction

GUARD = 10
ACK = BroadcastConfig(ack=True)


def fast(**kw: object) -> RealtimeConfig:
    """Quick reconnects, so fault tests take milliseconds, not seconds."""
    return RealtimeConfig(reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2), **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def server_behind_proxy() -> AsyncIterator[tuple[RealtimeServer, FaultProxy]]:
    async with trio.open_nursery() as nursery:
        server: RealtimeServer = await nursery.start(serve_realtime, "127.0.0.1", 0)
        async with open_fault_proxy("127.0.0.1", server.port) as proxy:
            yield server, proxy
        nursery.cancel_scope.cancel()


async def next_matching(sub: Subscription, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
    async for event in sub:
        if predicate(event):
            return event
    raise AssertionError("subscription ended before the expected event")


async def next_broadcast(sub: Subscription, event: str) -> Broadcast:
    got = await next_matching(sub, lambda e: isinstance(e, Broadcast) and e.event == event)
    assert isinstance(got, Broadcast)
    return got


async def test_cut_errors_the_channel_then_it_rejoins_and_works() -> None:
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("room", broadcast=ACK) as sa,
            b.channel("room", broadcast=ACK) as sb,
        ):
            await sb.send_broadcast("before", {"n": 1})
            assert (await next_broadcast(sa, "before")).payload == {"n": 1}

            await proxy.cut()
            errored = await sa.receive()
            assert isinstance(errored, ChannelErrored)
            assert await sa.receive() == Rejoined(topic="realtime:room", recovered=False)

            await sb.send_broadcast("after", {"n": 2})
            assert (await next_broadcast(sa, "after")).payload == {"n": 2}
            await sa.send_broadcast("reply", {"n": 3})  # acked: went through the new connection
            assert (await next_broadcast(sb, "reply")).payload == {"n": 3}

            stats = a.statistics()
            assert (stats.connection_losses, stats.reconnects) == (1, 1)
            proxy_stats = proxy.statistics()
            assert (proxy_stats.connections_accepted, proxy_stats.connections_cut) == (2, 1)


async def test_refused_reconnects_fail_until_allowed() -> None:
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            a.channel("room") as sa,
        ):
            proxy.refuse_new_connections(True)
            await proxy.cut()
            assert isinstance(await sa.receive(), ChannelErrored)
            await proxy.wait_statistics(lambda s: s.connections_refused >= 3)
            assert a.state is ConnectionState.RECONNECTING
            assert a.statistics().connections == 1  # no refused attempt became a connection

            proxy.refuse_new_connections(False)
            assert await sa.receive() == Rejoined(topic="realtime:room", recovered=False)
            stats = a.statistics()
            refused = proxy.statistics().connections_refused
            # Every attempt reached the proxy: the first connection, each refused one, the last.
            assert stats.connection_attempts == 1 + refused + 1
            assert proxy.statistics().connections_accepted == stats.connection_attempts
            assert (stats.connections, stats.connection_losses) == (2, 1)


@pytest.mark.parametrize("direction", ["server_to_client", "client_to_server", "both"])
async def test_half_open_link_is_detected_within_heartbeat_budget_and_repaired(direction: Direction) -> None:
    """A stalled direction: nothing errors and nothing closes, only the heartbeat can notice.

    The exact detection time (heartbeat sent at ``t``, declared dead at ``t + timeout``) is
    asserted under the MockClock in tests/client/test_client_heartbeat.py; on real sockets we
    assert a bound: detection within ``interval + timeout`` of the stall (the worst case: the
    stall begins just after a heartbeat was answered), with 3x slack for a loaded machine.
    """
    interval = timeout = 0.2
    budget = interval + timeout
    config = fast(heartbeat_interval=interval, heartbeat_timeout=timeout)
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=config) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("room") as sa,
            b.channel("room", broadcast=ACK) as sb,
        ):
            stalled_at = trio.current_time()
            proxy.stall(direction)  # this connection only: new ones work
            errored = await next_matching(sa, lambda e: isinstance(e, ChannelErrored))
            detected_after = trio.current_time() - stalled_at
            assert isinstance(errored, ChannelErrored)
            assert errored.reason.startswith("heartbeat timeout"), errored.reason
            assert detected_after < 3 * budget, f"half-open link detected after {detected_after:.3f} s"

            # Repaired by the client alone, on a new connection (the old one stays stalled).
            assert await sa.receive() == Rejoined(topic="realtime:room", recovered=False)
            await sb.send_broadcast("flowing", {"again": True})
            assert (await next_broadcast(sa, "flowing")).payload == {"again": True}
            assert a.statistics().connection_losses == 1
            assert proxy.statistics().connections_accepted == 2


async def test_slow_subscriber_delays_neither_heartbeats_nor_other_channels() -> None:
    interval = 0.2
    config = fast(heartbeat_interval=interval)
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=config) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("slow", buffer=4, overflow="drop") as slow,  # never read during the flood
            a.channel("fast", buffer=10_000) as fast_sub,
            b.channel("slow", broadcast=ACK) as to_slow,
            b.channel("fast", broadcast=ACK) as to_fast,
            trio.open_nursery() as nursery,
        ):
            received: list[int] = []
            done = trio.Event()

            async def read_fast() -> None:
                async for event in fast_sub:
                    if isinstance(event, Broadcast):
                        received.append(event.payload["i"])
                        if event.event == "end":
                            done.set()
                            return

            nursery.start_soon(read_fast)
            # Flood both channels until five more heartbeats went out (about 1 s): each one
            # must come back within its timeout meanwhile, or the connection is declared dead.
            heartbeats_before = a.statistics().heartbeats_sent
            sent = 0
            while a.statistics().heartbeats_sent < heartbeats_before + 5:
                await to_slow.send_broadcast("msg", {"i": sent})
                await to_fast.send_broadcast("msg", {"i": sent})
                sent += 1
            await to_fast.send_broadcast("end", {"i": sent})
            await done.wait()

            stats = a.statistics()
            assert stats.connection_losses == 0  # every heartbeat was answered in time
            assert stats.last_heartbeat_rtt is not None
            assert stats.last_heartbeat_rtt < interval
            assert received == list(range(sent + 1))  # the other channel got everything, in order
            assert sent > 4
            assert slow.statistics().dropped == sent - 4
            assert stats.dropped_events == sent - 4

            # The slow subscriber reads again: its queue, then the gap is announced.
            for i in range(4):
                event = await slow.receive()
                assert isinstance(event, Broadcast)
                assert event.payload == {"i": i}
            await to_slow.send_broadcast("late", {})
            assert await slow.receive() == Dropped(topic="realtime:slow", count=sent - 4)
            assert (await next_broadcast(slow, "late")).payload == {}


async def test_latency_delays_delivery_and_keeps_order() -> None:
    latency = 0.1
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("lat", broadcast=ACK) as sa,
            b.channel("lat", broadcast=ACK) as sb,
        ):
            proxy.set_latency(latency, direction="server_to_client")
            started = trio.current_time()
            for k in range(20):
                await sb.send_broadcast("n", {"k": k})
            got = [(await next_broadcast(sa, "n")).payload["k"] for _ in range(20)]
            assert got == list(range(20))
            assert trio.current_time() - started >= latency

            # Both ways: an acked send waits for the push to go out and the ack to come back.
            proxy.set_latency(latency / 2, direction="both")
            started = trio.current_time()
            await sa.send_broadcast("acked", {})
            assert trio.current_time() - started >= latency
            await next_broadcast(sb, "acked")
            assert a.statistics().connection_losses == 0


async def test_bandwidth_throttles_delivery_and_data_arrives_intact() -> None:
    rate = 100_000  # bytes per second
    blobs = [chr(ord("a") + i) * 4000 for i in range(10)]
    payloads = [{"i": i, "blob": blob} for i, blob in enumerate(blobs)]
    at_least = sum(map(len, blobs)) / rate  # 0.4 s for the payloads alone
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("bw") as sa,
            b.channel("bw", broadcast=ACK) as sb,
        ):
            proxy.set_bandwidth(rate, direction="server_to_client")
            started = trio.current_time()
            for payload in payloads:
                await sb.send_broadcast("blob", payload)
            got = [(await next_broadcast(sa, "blob")).payload for _ in payloads]
            assert got == payloads
            assert trio.current_time() - started >= at_least
            assert a.statistics().connection_losses == 0
