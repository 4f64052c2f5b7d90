"""Rate limits and size limits with the official errors (PROTOCOL.md §4.5, §7.1, §3.3).

The rate counter's arithmetic is tested sans-IO with explicit ``now`` values. On real sockets
the counters run on Trio's clock with a short tick, and the tests drive traffic until the
limit triggers (bounded by ``fail_after``): they assert what the server does once it has
triggered, never how many milliseconds that took.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import pytest
import trio
from _server_helpers import attempt_upgrade, kind3
from trio_websocket import ConnectionClosed

from trio_realtime.server import ServerConfig, serve_realtime
from trio_realtime.server._limits import RateCounter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from _server_helpers import Frame, RawClient
    from conftest import Connect

    from trio_realtime.server import RealtimeServer

    Start = Callable[..., Awaitable[RealtimeServer]]

TOO_MANY_MESSAGES = {"extension": "system", "status": "error", "message": "Too many messages per second"}
#: Counters that trigger on any traffic in a tick and stay triggered ~1 s after it stops.
FAST = {"rate_counter_tick": 0.1, "rate_counter_ticks": 12}


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    async def start(**config: Any) -> RealtimeServer:
        server: RealtimeServer = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, config=ServerConfig(**config)))
        return server

    return start


def bcast(event: str, payload: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": payload}


# -- the rate counter, sans-IO -------------------------------------------------------------------


def test_rate_counter_averages_closed_ticks() -> None:
    counter = RateCounter(limit=2, tick=5.0, ticks=3)
    counter.add(0.0, 9)  # the first call starts the first tick
    assert not counter.triggered(4.99)  # nothing is decided before a tick closes
    assert counter.average(5.0) == pytest.approx(9 / 1 / 5)  # one tick of 9 events: 1.8/s
    assert not counter.triggered(5.0)
    counter.add(5.0, 21)
    assert counter.triggered(10.0)  # (9 + 21) / 2 ticks / 5 s = 3.0/s >= 2
    assert counter.average(10.0) == pytest.approx(3.0)
    # quiet ticks dilute the average; the oldest tick drops out after `ticks` ticks
    assert counter.average(15.0) == pytest.approx(30 / 3 / 5)
    assert counter.triggered(15.0)  # 2.0 >= 2: still triggered
    assert counter.average(20.0) == pytest.approx(21 / 3 / 5)
    assert not counter.triggered(20.0)  # 1.4 < 2: released


def test_rate_counter_counts_idle_ticks_as_zero() -> None:
    counter = RateCounter(limit=1, tick=1.0, ticks=12)
    counter.add(0.0, 12)
    assert counter.triggered(1.0)  # 12 events in one tick: 12/s
    # a long silence: every elapsed tick counts, bounded by the window
    assert counter.average(100.0) == 0.0
    assert not counter.triggered(100.0)


def test_rate_counter_boundary_is_inclusive() -> None:
    counter = RateCounter(limit=1, tick=1.0, ticks=1)
    counter.add(0.5)
    assert counter.triggered(1.5)  # exactly 1.0/s: ">= limit" triggers, as officially


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": 1, "tick": 0}, {"limit": 1, "ticks": 0}])
def test_rate_counter_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid rate counter"):
        RateCounter(**bad)  # type: ignore[arg-type]


# -- configuration ---------------------------------------------------------------------------------


def test_limit_defaults_and_validation() -> None:
    config = ServerConfig()
    assert (config.max_events_per_second, config.max_joins_per_second) == (None, None)
    assert (config.max_channels_per_client, config.max_payload_bytes) == (100, 3_000_500)
    assert (config.rate_counter_tick, config.rate_counter_ticks) == (5.0, 12)
    assert (config.replay_max_limit, config.replay_memory_per_topic) == (25, 1000)
    custom = ServerConfig(max_events_per_second=100, replay_database_per_topic=None)
    assert (custom.max_events_per_second, custom.replay_database_per_topic) == (100, None)
    for field in ("max_events_per_second", "max_joins_per_second", "replay_max_limit",
                  "replay_memory_per_topic", "replay_database_per_topic", "rate_counter_ticks"):
        with pytest.raises(ValueError, match=rf"^ServerConfig\.{field} must be an int >= 1, got 0$"):
            ServerConfig(**{field: 0})
    with pytest.raises(ValueError, match="rate_counter_tick"):
        ServerConfig(rate_counter_tick=0)


# -- events per second ---------------------------------------------------------------------------


async def _send_until_limited(sender: RawClient, topic: str) -> list[Frame]:
    """Acked broadcasts until one is answered by the shutdown instead of an ack."""
    while True:
        await sender.push(topic, "broadcast", bcast("e", {}), join_ref="1")
        frames = await sender.sync()
        if [f.event for f in frames] != ["phx_reply"]:
            return frames


@pytest.mark.parametrize("private", [False, True])
async def test_events_limit_closes_sender_and_receivers(start: Start, connect: Connect, vsn: str,
                                                        private: bool) -> None:
    with trio.fail_after(20):
        server = await start(max_events_per_second=1, **FAST)
        async with connect(server, vsn) as sender, connect(server, vsn) as receiver, \
                connect(server, vsn) as elsewhere:
            await sender.join("realtime:busy", {"private": private, "broadcast": {"ack": True}})
            await receiver.join("realtime:busy", {"private": private})
            await elsewhere.join("realtime:quiet", {"private": private})
            frames = await _send_until_limited(sender, "realtime:busy")
            # the limited push: no ack, no delivery; the sender's channel closes
            assert [f.event for f in frames] == ["system", "phx_close"]
            assert frames[0].payload == {**TOO_MANY_MESSAGES, "channel": "busy"}
            assert frames[1].ref == "1"
            # the receiver got the earlier messages, then its own shutdown
            got = await receiver.sync()
            assert [f.event for f in got[-2:]] == ["system", "phx_close"]
            assert got[-2].payload == {**TOO_MANY_MESSAGES, "channel": "busy"}
            assert {f.event for f in got[:-2]} <= {"broadcast"}
            # channels that receive nothing are left alone; the socket stays up
            assert await elsewhere.sync() == []
            stats = server.statistics()
            assert (stats.channels, stats.rate_limited) == (1, 2)
            if private:
                assert stats.stored_messages == len(got) - 2  # the limited one was not stored


async def test_unknown_events_count_toward_the_limit(start: Start, connect: Connect) -> None:
    with trio.fail_after(20):
        server = await start(max_events_per_second=1, **FAST)
        async with connect(server, "2.0.0") as client:
            await client.join("realtime:r", {"broadcast": {"ack": True}})
            # only unknown events until the limit triggers: then the first broadcast is refused
            while True:
                await client.push("realtime:r", "whatever", {}, join_ref="1")
                await client.sync()
                await client.push("realtime:r", "broadcast", bcast("e", {}), join_ref="1")
                frames = await client.sync()
                if [f.event for f in frames] == ["system", "phx_close"]:
                    break
                assert [f.reply for f in frames] == [("ok", {})]
            assert server.statistics().rate_limited == 1


# -- joins per second ------------------------------------------------------------------------------


async def test_joins_limit_refuses_and_disconnects(start: Start, connect: Connect, vsn: str) -> None:
    with trio.fail_after(20):
        server = await start(max_joins_per_second=1, max_channels_per_client=100_000, **FAST)
        async with connect(server, vsn) as client:
            for n in range(10_000):
                reply = await client.join(f"realtime:j{n}")
                if reply.reply[0] == "error":
                    break
            reason = "ClientJoinRateLimitReached: Too many joins per second"
            assert reply.reply == ("error", {"reason": reason})
            # then the socket is closed with 1001 (going away), as the official transport does
            with pytest.raises(ConnectionClosed):
                await client.recv()
            assert client.ws.closed is not None
            assert client.ws.closed.code == 1001
        # while the limit is triggered, upgrades are refused with 429
        refusal = await attempt_upgrade(server.port, "/realtime/v1/websocket?vsn=1.0.0&apikey=k")
        assert refusal is not None
        assert (refusal.status, json.loads(refusal.body)) == (429, {"error": "Too many joins per second"})
        assert server.statistics().rate_limited >= 2


async def test_limits_are_off_by_default(start: Start, connect: Connect) -> None:
    """Hundreds of joins and broadcasts in a second are fine on a default server."""
    with trio.fail_after(20):
        server = await start(rate_counter_tick=0.01)
        async with connect(server, "2.0.0") as client:
            for n in range(50):
                assert (await client.join(f"realtime:j{n}", {"broadcast": {"ack": True}})).reply[0] == "ok"
            for n in range(500):
                topic, join_ref = f"realtime:j{n % 50}", str(n % 50 + 1)
                await client.push(topic, "broadcast", bcast("e", {}), join_ref=join_ref)
            frames = await client.sync()
            assert [f.reply for f in frames] == [("ok", {})] * 500
            assert server.statistics().rate_limited == 0


# -- channels per connection and payload size ----------------------------------------------------------


async def test_channels_per_connection(start: Start, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        server = await start(max_channels_per_client=2)
        async with connect(server, vsn) as client, connect(server, vsn) as other:
            assert (await client.join("realtime:a")).reply[0] == "ok"
            assert (await client.join("realtime:b", {"private": True})).reply[0] == "ok"
            reply = await client.join("realtime:c")
            assert reply.reply == ("error", {"reason": "ChannelRateLimitReached: Too many channels"})
            # a rejoin of a joined topic replaces it: not one more channel
            assert (await client.join("realtime:a")).reply[0] == "ok"
            assert [(f.event, f.ref) for f in await client.sync()] == [("phx_close", "1")]
            # the limit is per connection
            assert (await other.join("realtime:c")).reply[0] == "ok"
            # after a leave there is room again
            ref = await client.push("realtime:b", "phx_leave", {}, join_ref="2")
            assert ref is not None
            await client.reply_to(ref)
            await client.expect("phx_close")
            assert (await client.join("realtime:c")).reply[0] == "ok"


@pytest.mark.parametrize("ack", [True, False])
async def test_payload_size_limit_on_private_channels(start: Start, connect: Connect, ack: bool) -> None:
    with trio.fail_after(10):
        server = await start(max_payload_bytes=200)
        async with connect(server, "2.0.0") as sender, connect(server, "1.0.0") as other:
            await sender.join("realtime:big", {"private": True, "broadcast": {"ack": ack}})
            await other.join("realtime:big", {"private": True})
            await sender.push("realtime:big", "broadcast", bcast("e", {"pad": "x" * 300}), join_ref="1")
            await sender.send_raw(kind3("1", "9", "realtime:big", "e", b"\x00" * 300, encoding=0))
            frames = await sender.sync()
            refused = ("error", {"reason": "Payload size exceeded"})
            assert [f.reply for f in frames] == ([refused, refused] if ack else [])
            assert await other.sync() == []
            assert server.statistics().stored_messages == 0
            # just under the limit is fine
            await sender.push("realtime:big", "broadcast", bcast("e", {"pad": "x" * 100}), join_ref="1")
            await sender.sync()
            assert len(await other.sync()) == 1
