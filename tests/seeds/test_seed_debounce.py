"""Debounced broadcasts (SPEC M7): exact virtual times under the mock clock, one real-socket run.

The mock-clock tests drive the client against the in-memory ScriptedServer, which records the
virtual time each frame arrives; the frames' times are the sends' times (no latency in memory).
"""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    LocalProtocolError,
    RealtimeConfig,
    SubscriptionClosed,
    open_realtime,
)
from trio_realtime._debounce import DebouncedSender, open_debounced_sender
from trio_realtime.server import RealtimeServer, serve_realtime
from trio_realtime.testing import ScriptedServer, open_scripted_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio.testing import MockClock

    from trio_realtime import Subscription

URL = "ws://test/realtime/v1"
GUARD = 60  # virtual seconds under the mock clock; real seconds on sockets (never reached)


@asynccontextmanager
async def scripted(
    *, ack: bool = False, config: RealtimeConfig | None = None
) -> AsyncIterator[tuple[ScriptedServer, Subscription]]:
    async with (
        open_scripted_server() as server,
        open_realtime(URL, api_key="k", config=config, transport_factory=server.transport_factory) as client,
        client.channel("doc", broadcast=BroadcastConfig(ack=ack)) as sub,
    ):
        yield server, sub


async def sent_frames(server: ScriptedServer, count: int) -> list[tuple[float, Any]]:
    """(time, value) of the first ``count`` cursor broadcasts the server received."""
    await server.wait_frame("broadcast", topic="doc", count=count)
    return [
        (frame.time, frame.message.payload["payload"]["v"])
        for frame in server.frames
        if frame.message.event == "broadcast" and frame.message.payload.get("event") == "cursor"
    ]


async def test_burst_goes_out_first_at_once_then_last_value_after_interval(autojump_clock: MockClock) -> None:
    """Sends at t=0, 0.1, 0.2, 0.3 with interval 1: frames at 0 (value of t=0) and 1 (of t=0.3)."""
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                for i in range(4):
                    await trio.sleep_until(t0 + i / 10)
                    cursor.send({"v": i})
            assert trio.current_time() == t0 + 1  # the flush waited for the rate
            assert await sent_frames(server, 2) == [(t0, 0), (t0 + 1, 3)]
            stats = cursor.statistics()
            assert (stats.sent, stats.coalesced, stats.dropped, stats.failed, stats.pending) == (
                2,
                2,
                0,
                0,
                False,
            )


async def test_rate_is_never_exceeded_and_last_value_wins(autojump_clock: MockClock) -> None:
    """13 sends over 3 s with interval 1: exactly one frame per second, each the latest value."""
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                cursor.send({"v": -1})
                for k in range(12):  # at 0.125, 0.375, ..., 2.875 (exact binary fractions)
                    await trio.sleep_until(t0 + 0.125 + 0.25 * k)
                    cursor.send({"v": k})
            frames = await sent_frames(server, 4)
            assert frames == [(t0, -1), (t0 + 1, 3), (t0 + 2, 7), (t0 + 3, 11)]
            assert (cursor.statistics().sent, cursor.statistics().coalesced) == (4, 9)


async def test_first_send_after_a_quiet_period_goes_out_at_once(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                cursor.send({"v": 0})
                await trio.sleep_until(t0 + 5)
                cursor.send({"v": 1})  # quiet since t0 + 1: immediate
                await trio.sleep_until(t0 + 5.5)
                cursor.send({"v": 2})  # within the window opened at t0 + 5
            assert await sent_frames(server, 3) == [(t0, 0), (t0 + 5, 1), (t0 + 6, 2)]


async def test_leading_value_is_not_coalesced_by_a_send_before_the_sender_runs(
    autojump_clock: MockClock,
) -> None:
    """Two sends with no checkpoint between them: the first still leads, the second trails."""
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                cursor.send({"v": "a"})
                cursor.send({"v": "b"})
            assert await sent_frames(server, 2) == [(t0, "a"), (t0 + 1, "b")]
            assert cursor.statistics().coalesced == 0


async def test_flush_on_exit_sends_pending_value_when_rate_allows(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=1, on_exit="flush") as cursor:
                cursor.send({"v": 0})
                await trio.sleep_until(t0 + 0.5)
                cursor.send({"v": 1})
            assert trio.current_time() == t0 + 1
            assert await sent_frames(server, 2) == [(t0, 0), (t0 + 1, 1)]
            assert cursor.statistics().dropped == 0


async def test_drop_on_exit_discards_pending_value_and_exits_at_once(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=1, on_exit="drop") as cursor:
                cursor.send({"v": 0})
                await trio.sleep_until(t0 + 0.5)
                cursor.send({"v": 1})
            assert trio.current_time() == t0 + 0.5
            await trio.sleep(5)  # nothing more may arrive later, either
            assert await sent_frames(server, 1) == [(t0, 0)]
            stats = cursor.statistics()
            assert (stats.sent, stats.dropped, stats.pending) == (1, 1, False)


async def test_exit_with_nothing_pending_does_not_wait_for_the_window(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            async with open_debounced_sender(sub, "cursor", interval=10) as cursor:
                cursor.send({"v": 0})
            assert trio.current_time() == t0
            assert await sent_frames(server, 1) == [(t0, 0)]


async def test_exception_in_block_drops_pending_and_propagates_unchanged(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            with pytest.raises(KeyError, match="boom"):  # noqa: PT012 - the block is the subject
                async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                    cursor.send({"v": 0})
                    await trio.sleep_until(t0 + 0.5)
                    cursor.send({"v": 1})
                    raise KeyError("boom")
            assert trio.current_time() == t0 + 0.5
            assert await sent_frames(server, 1) == [(t0, 0)]
            assert cursor.statistics().dropped == 1


async def test_cancellation_drops_pending_and_leaves_no_task(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            with trio.move_on_after(0.5):
                async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                    cursor.send({"v": 0})
                    await trio.sleep(0.25)
                    cursor.send({"v": 1})
                    await trio.sleep_forever()
            assert trio.current_time() == t0 + 0.5
            await trio.sleep(5)
            assert await sent_frames(server, 1) == [(t0, 0)]
            assert cursor.statistics().dropped == 1


async def test_flush_cut_short_by_cancellation_counts_the_pending_value_as_dropped(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            with trio.move_on_at(t0 + 0.75):
                async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                    cursor.send({"v": 0})
                    await trio.sleep_until(t0 + 0.5)
                    cursor.send({"v": 1})
                # the clean exit at t0 + 0.5 waits to flush at t0 + 1, but is cancelled first
            assert trio.current_time() == t0 + 0.75
            await trio.sleep(5)
            assert await sent_frames(server, 1) == [(t0, 0)]
            stats = cursor.statistics()
            assert (stats.sent, stats.dropped, stats.pending) == (1, 1, False)


async def test_send_after_exit_raises_closed_resource_error(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (_, sub):
            async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                assert isinstance(cursor, DebouncedSender)
            with pytest.raises(trio.ClosedResourceError, match=r"^debounced sender for 'cursor' is closed"):
                cursor.send({"v": 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval": 0}, r"^interval must be a positive number of seconds, got 0$"),
        ({"interval": float("inf")}, r"^interval must be a positive number of seconds, got inf$"),
        ({"interval": 1, "on_exit": "later"}, r"^on_exit must be 'flush' or 'drop', got 'later'$"),
    ],
)
async def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with trio.fail_after(GUARD), pytest.raises(LocalProtocolError, match=match):
        async with open_debounced_sender(None, "cursor", **kwargs):  # type: ignore[arg-type]
            pass


async def test_channel_closed_by_server_ends_the_block_with_subscription_closed(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(GUARD):
        async with scripted() as (server, sub):
            t0 = trio.current_time()
            with pytest.raises(SubscriptionClosed):  # noqa: PT012 - the block is the subject
                async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                    cursor.send({"v": 0})
                    await server.wait_frame("broadcast", topic="doc")  # v0 went out before the close
                    await server.close_channel("doc")
                    cursor.send({"v": 1})  # goes out at t0 + 1 and fails: the channel is gone
                    await trio.sleep_forever()
            assert trio.current_time() == t0 + 1


async def test_connection_lost_mid_send_is_counted_and_sending_continues(autojump_clock: MockClock) -> None:
    """An acked send cut off by a dropped connection is counted as failed; the next goes out."""
    config = RealtimeConfig(reconnect_backoff=BackoffPolicy(base=1, jitter=False))
    with trio.fail_after(GUARD):
        async with scripted(ack=True, config=config) as (server, sub):
            t0 = trio.current_time()
            server.hold_replies("broadcast")
            async with open_debounced_sender(sub, "cursor", interval=1) as cursor:
                cursor.send({"v": 0})
                await server.wait_frame("broadcast", topic="doc")
                server.release_replies("broadcast")  # (held replies die with the connection)
                server.hold_replies("broadcast")
                server.drop_connection()
                await trio.sleep_until(t0 + 0.5)
                server.release_replies("broadcast")
                cursor.send({"v": 1})
            frames = await sent_frames(server, 2)
            assert [value for _, value in frames] == [0, 1]
            stats = cursor.statistics()
            assert (stats.failed, stats.sent) == (1, 1)


# -- real sockets ---------------------------------------------------------------------------------


async def test_debounced_sender_over_real_sockets(nursery: trio.Nursery) -> None:
    """A burst through the reference server: the receiver sees the first and the last value."""
    with trio.fail_after(10):
        server: RealtimeServer = await nursery.start(functools.partial(serve_realtime, "127.0.0.1", 0))
        async with (
            open_realtime(server.url, api_key="k") as alice,
            open_realtime(server.url, api_key="k") as bob,
            alice.channel("doc", broadcast=BroadcastConfig(ack=True)) as doc_a,
            bob.channel("doc") as doc_b,
        ):
            async with open_debounced_sender(doc_a, "cursor", interval=0.05) as cursor:
                for i in range(50):
                    cursor.send({"v": i})
            seen = []
            async for event in doc_b:
                if isinstance(event, Broadcast) and event.event == "cursor":
                    seen.append(event.payload["v"])
                    if event.payload["v"] == 49:
                        break
            assert seen == [0, 49]
            assert (cursor.statistics().sent, cursor.statistics().coalesced) == (2, 48)
