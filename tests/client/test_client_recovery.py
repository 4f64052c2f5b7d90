"""Replay bookkeeping, the recovered flag and token refresh on the client side (SPEC X1, C8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
from _client_helpers import open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    Rejoined,
    ReplayConfig,
    SubscriptionClosed,
    SystemMessage,
)
from trio_realtime.protocol import Message
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

REPLAY = BroadcastConfig(replay=ReplayConfig(since=1_000, limit=25))


class FakeWallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(message_id: str, n: int, *, replayed: bool = False) -> Message:
    meta: dict[str, Any] = {"id": message_id}
    if replayed:
        meta["replayed"] = True
    return Message(
        topic="realtime:room",
        event="broadcast",
        payload={"type": "broadcast", "event": "m", "payload": {"n": n}, "meta": meta},
    )


def replay_param(join: Message) -> Any:
    return join.payload["config"]["broadcast"].get("replay")


async def test_replay_since_first_join_then_last_delivery(autojump_clock: MockClock) -> None:
    clock = FakeWallClock(2_000.0)
    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_client(server, wall_clock=clock, replay_margin=5.0) as client,
            client.channel("room", private=True, broadcast=REPLAY) as sub,
        ):
            [first] = server.messages("phx_join")
            assert replay_param(first) == {"since": 1_000, "limit": 25}
            clock.now = 2_100.0
            await server.send(stored("a", 1))
            assert (await sub.receive()).payload == {"n": 1}  # type: ignore[union-attr]
            clock.now = 3_000.0
            server.drop_connection()
            await sub.receive()  # ChannelErrored
            await sub.receive()  # Rejoined
            second = server.messages("phx_join")[-1]
            # Since the last delivery (t=2100 s) minus the 5 s margin, in milliseconds.
            assert replay_param(second) == {"since": 2_095_000, "limit": 25}


async def test_replayed_duplicates_are_dropped_by_id(autojump_clock: MockClock) -> None:
    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", private=True, broadcast=REPLAY) as sub,
        ):
            await server.send(stored("a", 1))
            await server.send(stored("a", 1, replayed=True))
            await server.send(stored("b", 2, replayed=True))
            await server.send(stored("b", 2))
            received = [await sub.receive(), await sub.receive()]
            assert [e.payload for e in received] == [{"n": 1}, {"n": 2}]  # type: ignore[union-attr]
            await wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()


async def test_without_replay_ids_are_not_deduplicated(autojump_clock: MockClock) -> None:
    """Dedupe is a replay feature: a public channel delivers what the server sends."""
    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            await server.send(stored("a", 1))
            await server.send(stored("a", 1))
            assert isinstance(await sub.receive(), Broadcast)
            assert isinstance(await sub.receive(), Broadcast)


async def test_rejoin_without_server_proof_is_not_recovered(autojump_clock: MockClock) -> None:
    """The scripted server, like the official one, says nothing about replay completeness."""
    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", private=True, broadcast=REPLAY) as sub,
        ):
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            assert await sub.receive() == Rejoined(topic="realtime:room", recovered=False)


async def test_expired_token_close_refreshes_and_rejoins(autojump_clock: MockClock) -> None:
    tokens = iter(["token-1", "token-2", "token-3"])

    async def fetch() -> str:
        return next(tokens)

    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_client(server, access_token=fetch) as client,
            client.channel("room") as sub,
        ):
            await server.close_channel("room", "Token has expired 3 seconds ago")
            system = await sub.receive()
            assert isinstance(system, SystemMessage)
            assert system.message == "Token has expired 3 seconds ago"
            errored = await sub.receive()
            assert errored == ChannelErrored(topic="realtime:room", reason="Token has expired 3 seconds ago")
            assert await sub.receive() == Rejoined(topic="realtime:room", recovered=False)
            joins = server.messages("phx_join")
            assert [j.payload["access_token"] for j in joins] == ["token-1", "token-2"]
            await server.broadcast("room", "still", {"here": True})
            assert isinstance(await sub.receive(), Broadcast)


async def test_expired_static_token_ends_the_subscription(autojump_clock: MockClock) -> None:
    with trio.fail_after(30):
        async with (
            open_scripted_server() as server,
            open_client(server, access_token="static-token") as client,
            client.channel("room") as sub,
        ):
            await server.close_channel("room", "Token has expired 3 seconds ago")
            assert isinstance(await sub.receive(), SystemMessage)
            with pytest.raises(SubscriptionClosed, match="Token has expired"):
                await sub.receive()


async def test_rejoin_gives_up_after_max_attempts(autojump_clock: MockClock) -> None:
    """SPEC M6: a per-channel rejoin policy with an attempt cap; the failure reaches the
    subscriber as events and then SubscriptionClosed, not as a callback."""
    from trio_realtime import BackoffPolicy

    policy = BackoffPolicy(base=1.0, factor=2.0, jitter=False, max_attempts=3)
    with trio.fail_after(60):
        async with (
            open_scripted_server() as server,
            open_client(server, rejoin_backoff=policy) as client,
            client.channel("room") as sub,
        ):
            server.reject_join(
                "room", "Unauthorized: You do not have permissions to read from this Channel topic: room"
            )
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            with pytest.raises(SubscriptionClosed, match=r"rejoin gave up after 3 attempts: Unauthorized"):
                await sub.receive()
            # Lost at 0, reconnected at 1 (backoff 1); rejoins at 1, 2 (+1), 4 (+2); then it gives up.
            assert [t for topic, t in server.join_times if topic == "realtime:room"] == [0.0, 1.0, 2.0, 4.0]
            assert client.statistics().channels == 0
