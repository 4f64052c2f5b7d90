"""Replay end to end: our client, our server, the fault proxy (SPEC X1, C8; PROTOCOL.md §4.7, §3.9).

The subscriber (``a``) reaches the server through the fault proxy; the publisher (``b``)
connects directly and sends acked broadcasts, so "acked" means "stored". Each test checks the
``Rejoined.recovered`` flag against ground truth (the publisher's sequence numbers): True
exactly when nothing was missed, False when the server could not prove it (replay limit
reached, messages evicted from its bounded memory).

Real sockets, no mock clock: everything runs under ``fail_after``; ordering comes from the
publisher's acks, the proxy's statistics and the subscriber's events. The token test waits
for real token expiries (a second each).
"""

from __future__ import annotations

import functools
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import jwt
import trio

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    RealtimeConfig,
    RealtimeEvent,
    Rejoined,
    ReplayConfig,
    open_realtime,
)
from trio_realtime.protocol import Message
from trio_realtime.server import ServerConfig, serve_realtime
from trio_realtime.testing import FaultProxy, open_fault_proxy, open_scripted_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio.testing import MockClock

    from trio_realtime import Subscription
    from trio_realtime.server import RealtimeServer

GUARD = 15
SECRET = "reliability-replay-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
ACK = BroadcastConfig(ack=True)


def fast(**kw: Any) -> RealtimeConfig:
    backoff = BackoffPolicy(base=0.05, cap=0.2)
    return RealtimeConfig(reconnect_backoff=backoff, rejoin_backoff=backoff, **kw)


def replay(limit: int = 25) -> BroadcastConfig:
    return BroadcastConfig(replay=ReplayConfig(limit=limit))


@asynccontextmanager
async def server_behind_proxy(**kw: Any) -> AsyncIterator[tuple[RealtimeServer, FaultProxy]]:
    config = kw.pop("config", ServerConfig())
    async with trio.open_nursery() as nursery:
        server: RealtimeServer = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, config=config, **kw))
        async with open_fault_proxy("127.0.0.1", server.port) as proxy:
            yield server, proxy
        nursery.cancel_scope.cancel()


async def events_until(sub: Subscription, stop: type[RealtimeEvent]) -> list[RealtimeEvent]:
    """Every event up to and including the first of type ``stop``."""
    out: list[RealtimeEvent] = []
    async for event in sub:
        out.append(event)
        if isinstance(event, stop):
            return out
    raise AssertionError("subscription ended")


def numbers(events: list[RealtimeEvent]) -> list[int]:
    return [e.payload["n"] for e in events if isinstance(e, Broadcast)]


async def broadcasts(sub: Subscription, count: int) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        event = await sub.receive()
        if isinstance(event, Broadcast):
            out.append(event.payload["n"])
    return out


async def test_outage_within_the_limit_is_recovered() -> None:
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("room", private=True, broadcast=replay()) as sa,
            b.channel("room", private=True, broadcast=ACK) as sb,
        ):
            for n in range(3):
                await sb.send_broadcast("m", {"n": n})
            assert await broadcasts(sa, 3) == [0, 1, 2]
            proxy.refuse_new_connections(True)
            await proxy.cut()
            assert isinstance(await sa.receive(), ChannelErrored)
            for n in range(3, 10):  # missed while the subscriber is away
                await sb.send_broadcast("m", {"n": n})
            proxy.refuse_new_connections(False)
            first = await events_until(sa, Rejoined)
            assert first == [Rejoined(topic="realtime:room", recovered=True)]
            assert await broadcasts(sa, 7) == list(range(3, 10))  # replayed, in order, once
            await sb.send_broadcast("m", {"n": 10})
            assert await broadcasts(sa, 1) == [10]
            assert server.statistics().replayed_messages >= 7


async def test_outage_beyond_the_limit_is_not_recovered() -> None:
    """More missed than the replay limit: the newest ones come back, and the flag says False."""
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy() as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("room", private=True, broadcast=replay(limit=4)) as sa,
            b.channel("room", private=True, broadcast=ACK) as sb,
        ):
            await sb.send_broadcast("m", {"n": 0})
            assert await broadcasts(sa, 1) == [0]
            proxy.refuse_new_connections(True)
            await proxy.cut()
            assert isinstance(await sa.receive(), ChannelErrored)
            for n in range(1, 11):
                await sb.send_broadcast("m", {"n": n})
            proxy.refuse_new_connections(False)
            assert await events_until(sa, Rejoined) == [Rejoined(topic="realtime:room", recovered=False)]
            # the newest 4 of the 11 stored since the last delivery: 1 to 6 are lost, and said so
            assert await broadcasts(sa, 4) == [7, 8, 9, 10]


async def test_eviction_makes_a_rejoin_unrecovered() -> None:
    """The server kept only the last 5 messages: a longer outage cannot be proven complete."""
    config = ServerConfig(replay_memory_per_topic=5)
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy(config=config) as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("room", private=True, broadcast=replay(limit=25)) as sa,
            b.channel("room", private=True, broadcast=ACK) as sb,
        ):
            await sb.send_broadcast("m", {"n": 0})
            assert await broadcasts(sa, 1) == [0]
            proxy.refuse_new_connections(True)
            await proxy.cut()
            assert isinstance(await sa.receive(), ChannelErrored)
            for n in range(1, 9):
                await sb.send_broadcast("m", {"n": n})
            proxy.refuse_new_connections(False)
            assert await events_until(sa, Rejoined) == [Rejoined(topic="realtime:room", recovered=False)]
            assert await broadcasts(sa, 5) == [4, 5, 6, 7, 8]


def user_token(lifetime: float) -> str:
    return jwt.encode({"role": "authenticated", "sub": "u1", "exp": time.time() + lifetime}, SECRET,
                      algorithm="HS256")


def service_key() -> str:
    return jwt.encode({"role": "service_role", "exp": time.time() + 3600}, SECRET, algorithm="HS256")


async def test_expired_token_refreshes_and_rejoins_without_loss() -> None:
    """Short-lived user tokens: the server closes the channel at each expiry ("Token has
    expired N seconds ago"), the client fetches a fresh token from its callable and rejoins,
    and replay fills the gap, so the subscriber sees every message once, in order."""
    lifetime = 1.0
    fetched: list[float] = []

    async def access_token() -> str:
        fetched.append(trio.current_time())
        return user_token(lifetime)

    anon = jwt.encode({"role": "anon", "exp": time.time() + 3600}, SECRET, algorithm="HS256")
    with trio.fail_after(GUARD):
        async with (
            server_behind_proxy(jwt_secret=SECRET) as (server, proxy),
            open_realtime(proxy.url_for(server.url), api_key=anon, access_token=access_token,
                          config=fast()) as a,
            open_realtime(server.url, api_key=service_key(), config=fast()) as b,
            a.channel("room", private=True, broadcast=replay(limit=100)) as sa,
            b.channel("room", private=True, broadcast=ACK) as sb,
            trio.open_nursery() as nursery,
        ):
            seen: list[RealtimeEvent] = []
            expiries = trio.Event()
            finished = trio.Event()

            async def watch() -> None:
                closes = 0
                async for event in sa:
                    seen.append(event)
                    if isinstance(event, ChannelErrored) and "Token has expired" in event.reason:
                        closes += 1
                    if isinstance(event, Rejoined) and closes >= 2:
                        expiries.set()
                    if isinstance(event, Broadcast) and event.payload.get("last"):
                        finished.set()

            nursery.start_soon(watch)
            sent = 0
            while not expiries.is_set():  # publish across two expiries (about 2 s)
                await sb.send_broadcast("m", {"n": sent})
                sent += 1
                with trio.move_on_after(0.01):  # pacing only: ~100 messages per second
                    await expiries.wait()
            await sb.send_broadcast("m", {"n": sent, "last": True})
            await finished.wait()
            nursery.cancel_scope.cancel()

    assert numbers(seen) == list(range(sent + 1))  # nothing lost, nothing twice
    errors = [e for e in seen if isinstance(e, ChannelErrored)]
    rejoins = [e for e in seen if isinstance(e, Rejoined)]
    assert len(errors) >= 2
    assert all(e.reason.startswith("Token has expired ") for e in errors), errors
    assert len(rejoins) == len(errors)
    assert all(r.recovered for r in rejoins)
    assert len(fetched) >= 1 + len(errors)  # one fresh token per (re)join
    assert proxy.statistics().connections_cut == 0  # the socket itself never dropped


async def test_rejoin_resumes_at_the_last_inserted_at(autojump_clock: MockClock) -> None:
    """With ``meta.inserted_at`` (the reference server's stamp) a rejoin asks for exactly the
    messages from the last one delivered, whatever the client's clock or delivery lag; without
    it (the official server) it falls back to its delivery time minus ``replay_margin``.

    (A scripted server on the memory transport under the mock clock, so the replay ``since``
    values are exact.)
    """
    wall = [5_000.0]

    def stored(n: int, meta: dict[str, Any]) -> Message:
        return Message(topic="realtime:room", event="broadcast",
                       payload={"type": "broadcast", "event": "m", "payload": {"n": n}, "meta": meta})

    config = fast(wall_clock=lambda: wall[0], replay_margin=2.0, vsn="2.0.0")
    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_realtime("ws://realtime.test/realtime/v1", api_key="k", config=config,
                          transport_factory=server.transport_factory) as client,
            client.channel("room", private=True, broadcast=replay()) as sub,
        ):
            def last_replay() -> Any:
                return server.messages("phx_join")[-1].payload["config"]["broadcast"]["replay"]

            await server.send(stored(1, {"id": "a"}))
            assert await broadcasts(sub, 1) == [1]
            wall[0] = 6_000.0
            server.drop_connection()
            await events_until(sub, Rejoined)
            # no stamp seen yet: the delivery time (5000 s) minus the 2 s margin
            assert last_replay() == {"since": 4_998_000, "limit": 25}
            await server.send(stored(2, {"id": "b", "inserted_at": 1_234_567}))
            assert await broadcasts(sub, 1) == [2]
            wall[0] = 9_000.0  # far later, and a slow reader: no matter
            server.drop_connection()
            await events_until(sub, Rejoined)
            assert last_replay() == {"since": 1_234_567, "limit": 25}
