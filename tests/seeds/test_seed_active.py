"""Seed 000: active-group switching over one persistent channel (SPEC rows A1-A6).

Most tests feed the router from a memory channel standing in for the subscription (any
``trio.abc.ReceiveChannel`` of events works) and reach quiescence with
``wait_all_tasks_blocked``; interleavings are forced with events and a synchronous hook, never
with sleeps. The last test runs the whole thing on real loopback sockets against the reference
server. Every test runs under an absolute ``fail_after`` guard.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from trio.testing import assert_no_checkpoints, wait_all_tasks_blocked

from trio_realtime import (
    Broadcast,
    BroadcastConfig,
    ChannelState,
    LocalProtocolError,
    PostgresChange,
    PresenceSync,
    RealtimeEvent,
    Rejoined,
    SubscriptionClosed,
    open_realtime,
)
from trio_realtime._active import (
    ActiveRouter,
    ActiveView,
    BackgroundEvent,
    SqliteInbox,
    group_by_field,
    open_active_router,
    open_sqlite_inbox,
)
from trio_realtime.server import serve_realtime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

GUARD = 5
group_of = group_by_field("group_id")


def msg(group: str, text: str) -> Broadcast:
    return Broadcast(topic="realtime:chat", event="message", payload={"group_id": group, "text": text})


def texts(events: list[RealtimeEvent]) -> list[str]:
    return [e.payload["text"] for e in events if isinstance(e, Broadcast)]


def drain_background(router: ActiveRouter) -> list[BackgroundEvent]:
    items = []
    while True:
        try:
            items.append(router.background.receive_nowait())
        except trio.WouldBlock:
            return items


@asynccontextmanager
async def fake_router(
    *, inbox: SqliteInbox | None = None, **kw: int
) -> AsyncIterator[tuple[trio.MemorySendChannel[RealtimeEvent], ActiveRouter]]:
    """A router over a memory channel standing in for the subscription."""
    send, receive = trio.open_memory_channel[RealtimeEvent](100)
    async with open_active_router(receive, group_of=group_of, inbox=inbox, **kw) as router:
        yield send, router


class HookedSub(trio.abc.ReceiveChannel[RealtimeEvent]):
    """A fake subscription that runs ``before_receive`` synchronously at the top of the next
    ``receive``: in the router task, right after it routed the previous event, with no
    checkpoint in between (so no other task has run yet)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[RealtimeEvent]) -> None:
        self._receive = receive
        self.before_receive: Callable[[], object] | None = None

    async def receive(self) -> RealtimeEvent:
        hook, self.before_receive = self.before_receive, None
        if hook is not None:
            hook()
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()


# -- A1 + A3: one channel, a local switch, active vs background ---------------------------------


async def test_switch_is_local_and_routes_active_vs_background() -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (send, router):
            async with router.view("g1") as view:
                assert (router.active, view.group, view.stale) == ("g1", "g1", False)
                for event in [msg("g1", "a"), msg("g2", "b"), msg("g1", "c"), msg("g3", "d")]:
                    send.send_nowait(event)
                assert texts([await view.receive(), await view.receive()]) == ["a", "c"]
                await wait_all_tasks_blocked()
                background = drain_background(router)
                assert [(b.group, b.unread) for b in background] == [("g2", 1), ("g3", 1)]
                assert texts([b.event for b in background]) == ["b", "d"]
                assert router.unread_counts() == {"g2": 1, "g3": 1}
                with assert_no_checkpoints():  # synchronous, O(1): no I/O can happen here
                    generation = router.switch_active("g2")
            assert view.stale
            assert router.active == "g2"
            assert router.generation == generation == view.generation + 1
            async with router.view("g2") as view2:
                assert view2.generation == generation  # bound to the switch's activation
                send.send_nowait(msg("g1", "e"))
                send.send_nowait(msg("g2", "f"))
                assert texts([await view2.receive()]) == ["f"]
            assert router.unread_counts() == {"g1": 1, "g2": 1, "g3": 1}
            stats = router.statistics()
            assert (stats.routed_active, stats.routed_background, stats.rerouted_stale) == (3, 3, 0)


async def test_switching_to_the_active_group_is_a_no_op() -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (_, router):
            generation = router.switch_active("g1")
            assert router.switch_active("g1") == generation
            assert router.switch_active(None) == generation + 1
            assert router.active is None
            assert router.switch_active(None) == generation + 1


async def test_events_between_switch_and_view_wait_for_the_view() -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (send, router):
            router.switch_active("g1")
            send.send_nowait(msg("g1", "early"))
            send.send_nowait(msg("g2", "other"))
            await wait_all_tasks_blocked()
            assert router.statistics().active_queued == 1
            async with router.view("g1") as view:
                assert texts([view.receive_nowait()]) == ["early"]
            assert router.unread_counts() == {"g2": 1}


# -- A2: the token guard, made structural ---------------------------------------------------------


async def test_stale_view_unread_queue_goes_to_background(nursery: trio.Nursery) -> None:
    """Events routed to a view that has not read them when the switch happens are taken back
    (unread, stored); the stale view returns none of them, and its block is cancelled."""
    with trio.fail_after(GUARD):
        async with open_sqlite_inbox(":memory:") as inbox, fake_router(inbox=inbox) as (send, router):
            bound = trio.Event()
            block_done = trio.Event()
            views: list[ActiveView] = []
            reached_after_wait: list[bool] = []

            async def screen() -> None:
                async with router.view("g1") as view:
                    views.append(view)
                    bound.set()
                    await trio.sleep_forever()  # a screen busy elsewhere, not reading
                    reached_after_wait.append(True)
                block_done.set()  # the block exited quietly: the cancellation stayed inside it

            nursery.start_soon(screen)
            await bound.wait()
            send.send_nowait(msg("g1", "one"))
            send.send_nowait(msg("g1", "two"))
            await wait_all_tasks_blocked()
            assert router.statistics().active_queued == 2
            with assert_no_checkpoints():
                router.switch_active("g2")
                with pytest.raises(trio.EndOfChannel):
                    views[0].receive_nowait()  # nothing left for the stale view, even before it runs
            await block_done.wait()
            assert reached_after_wait == []
            assert texts([b.event for b in drain_background(router)]) == ["one", "two"]
            assert router.unread("g1") == 2
            assert router.statistics().rerouted_stale == 2
            assert texts([s.event for s in await inbox.fetch("g1")]) == ["one", "two"]


async def test_event_in_flight_to_a_stale_view_is_never_returned(nursery: trio.Nursery) -> None:
    """Regression guard for the bad ordering: the view's task is blocked in ``receive``, the
    router hands it an event (the task is rescheduled with it but has not run), then the switch
    runs. A memory channel would still return that event to the stale view; the view's
    generation check must reroute it to the background instead."""
    with trio.fail_after(GUARD):
        send, receive = trio.open_memory_channel[RealtimeEvent](10)
        sub = HookedSub(receive)
        async with open_active_router(sub, group_of=group_of) as router:
            got: list[RealtimeEvent] = []
            loop_ended = trio.Event()

            async def screen() -> None:
                async with router.view("g1") as view:
                    async for event in view:
                        got.append(event)
                    loop_ended.set()  # EndOfChannel ended the loop (sync code after it still runs)

            nursery.start_soon(screen)
            await wait_all_tasks_blocked()  # the screen waits in view.receive(), the router in sub
            # Runs in the router task after it routed the event below, before the screen runs:
            sub.before_receive = lambda: router.switch_active("g2")
            send.send_nowait(msg("g1", "in flight"))
            await loop_ended.wait()
            assert got == []
            stats = router.statistics()
            assert (stats.routed_active, stats.rerouted_stale) == (1, 1)  # handed over, then taken back
            assert [(b.group, b.unread) for b in drain_background(router)] == [("g1", 1)]
            assert router.active == "g2"


async def test_handler_still_processing_is_cancelled_by_the_switch(nursery: trio.Nursery) -> None:
    """A stale handler is a no-op: a screen busy with one event when the switch happens is
    cancelled at its next checkpoint and never sees the next event, which stays unread."""
    with trio.fail_after(GUARD):
        async with fake_router() as (send, router):
            processing = trio.Event()
            done = trio.Event()
            handled: list[str] = []
            finished: list[str] = []

            async def screen() -> None:
                async with router.view("g1") as view:
                    async for event in view:
                        handled.extend(texts([event]))
                        processing.set()
                        await trio.sleep_forever()  # e.g. rendering, or a slow database write
                        finished.extend(texts([event]))
                done.set()

            nursery.start_soon(screen)
            await wait_all_tasks_blocked()
            send.send_nowait(msg("g1", "one"))
            send.send_nowait(msg("g1", "two"))
            await processing.wait()
            await wait_all_tasks_blocked()  # "two" is routed to the view's queue
            router.switch_active("g3")
            await done.wait()
            assert (handled, finished) == (["one"], [])
            assert router.unread_counts() == {"g1": 1}
            assert texts([b.event for b in drain_background(router)]) == ["two"]


async def test_only_one_view_per_activation_and_no_nesting(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (_, router):
            async with router.view("g1"):
                with pytest.raises(LocalProtocolError, match=r"^cannot open a view of 'g2' inside"):
                    async with router.view("g2"):
                        pass  # pragma: no cover
                assert router.active == "g1"  # the refused view switched nothing

                result: list[BaseException] = []

                async def second_screen() -> None:
                    try:
                        async with router.view("g1"):
                            pass  # pragma: no cover
                    except trio.BusyResourceError as exc:
                        result.append(exc)

                nursery.start_soon(second_screen)
                await wait_all_tasks_blocked()
                assert len(result) == 1
            # Another task opening a *different* group takes over: the UI switched.
            taken_over = trio.Event()

            async def holder() -> None:
                async with router.view("g1"):
                    await trio.sleep_forever()
                taken_over.set()

            nursery.start_soon(holder)
            await wait_all_tasks_blocked()
            async with router.view("g2") as view:
                await taken_over.wait()
                assert router.active == view.group == "g2"


# -- A3: background stream, overflow, channel-level events ----------------------------------------


async def test_background_stream_drops_and_counts_but_record_is_complete() -> None:
    with trio.fail_after(GUARD):
        async with (
            open_sqlite_inbox(":memory:") as inbox,
            fake_router(inbox=inbox, background_buffer=2) as (send, router),
        ):
            for i in range(5):
                send.send_nowait(msg("g2", str(i)))
            await wait_all_tasks_blocked()
            stats = router.statistics()
            assert (stats.background_queued, stats.background_dropped, stats.persisted) == (2, 3, 5)
            assert router.unread("g2") == 5
            assert [b.unread for b in drain_background(router)] == [1, 2]
            assert texts([s.event for s in await inbox.fetch("g2")]) == ["0", "1", "2", "3", "4"]


async def test_full_active_queue_spills_to_background_never_drops() -> None:
    with trio.fail_after(GUARD):
        async with fake_router(active_buffer=1) as (send, router):
            router.switch_active("g1")
            send.send_nowait(msg("g1", "fits"))
            send.send_nowait(msg("g1", "spills"))
            await wait_all_tasks_blocked()
            assert router.statistics().spilled == 1
            assert router.unread_counts() == {"g1": 1}
            assert texts([b.event for b in drain_background(router)]) == ["spills"]
            async with router.view("g1") as view:
                assert texts([view.receive_nowait()]) == ["fits"]


async def test_channel_level_events_reach_view_and_background_uncounted() -> None:
    with trio.fail_after(GUARD):
        async with open_sqlite_inbox(":memory:") as inbox, fake_router(inbox=inbox) as (send, router):
            async with router.view("g1") as view:
                rejoined = Rejoined(topic="realtime:chat", recovered=False)
                send.send_nowait(rejoined)
                assert await view.receive() == rejoined  # the screen learns it must refetch
                await wait_all_tasks_blocked()
                assert drain_background(router) == [BackgroundEvent(group=None, event=rejoined, unread=0)]
            assert router.unread_counts() == {}
            assert router.statistics().persisted == 0
            assert await inbox.unread_counts() == {}


# -- A4: the local inbox ----------------------------------------------------------------------------


async def test_inbox_round_trips_events_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    binary = Broadcast(topic="realtime:chat", event="file", payload=b"\x00\xff", meta={"id": "m1"})
    row = PostgresChange(
        topic="realtime:chat",
        type="INSERT",
        schema="public",
        table="messages",
        commit_timestamp="2024-01-01T00:00:00Z",
        columns=({"name": "group_id", "type": "text"},),
        record={"group_id": "g1", "body": "hi", "tags": ["a", "b"]},
        old_record={},
        bindings=(0,),
    )
    with trio.fail_after(GUARD):
        async with open_sqlite_inbox(path) as inbox:
            await inbox.add("g1", msg("g1", "hello"))
            inbox.add_nowait("g1", binary)
            inbox.add_nowait("g2", row)
            assert await inbox.unread_counts() == {"g1": 2, "g2": 1}
            await inbox.mark_read("g2")
            assert inbox.statistics().written == 3
        async with open_sqlite_inbox(path) as inbox:
            stored = await inbox.fetch("g1")
            assert [s.event for s in stored] == [msg("g1", "hello"), binary]
            assert [s.event for s in await inbox.fetch("g2")] == [row]
            assert [s.event for s in await inbox.fetch("g1", after=stored[0].id)] == [binary]
            assert len(await inbox.fetch("g1", limit=1)) == 1
            assert await inbox.unread_counts() == {"g1": 2}
        with pytest.raises(trio.ClosedResourceError):
            await inbox.fetch("g1")


async def test_inbox_add_nowait_is_bounded() -> None:
    with trio.fail_after(GUARD):
        async with open_sqlite_inbox(":memory:", max_pending=1) as inbox:
            inbox.add_nowait("g1", msg("g1", "a"))
            with pytest.raises(trio.WouldBlock):
                inbox.add_nowait("g1", msg("g1", "b"))
            await inbox.add("g1", msg("g1", "b"))  # waits for the writer, then writes
            assert texts([s.event for s in await inbox.fetch("g1")]) == ["a", "b"]


async def test_router_unread_counts_survive_restart_and_mark_read_persists(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    with trio.fail_after(GUARD):
        async with open_sqlite_inbox(path) as inbox, fake_router(inbox=inbox) as (send, router):
            for event in [msg("g1", "a"), msg("g2", "b"), msg("g2", "c")]:
                send.send_nowait(event)
            await wait_all_tasks_blocked()
        async with open_sqlite_inbox(path) as inbox, fake_router(inbox=inbox) as (send, router):
            assert router.unread_counts() == {"g1": 1, "g2": 2}  # seeded from the inbox
            router.mark_read("g2")
            assert router.unread_counts() == {"g1": 1}
            assert await inbox.unread_counts() == {"g1": 1}  # ordered after the writes before it
            assert texts([s.event for s in await inbox.fetch("g2")]) == ["b", "c"]  # kept


async def test_fetch_then_view_sees_every_event_once_in_order() -> None:
    """Open a group: fetch what was stored while it was in the background, then read the
    view. Every event is seen exactly once, in order, with no window in between."""
    with trio.fail_after(GUARD):
        async with open_sqlite_inbox(":memory:") as inbox, fake_router(inbox=inbox) as (send, router):
            for i in range(3):
                send.send_nowait(msg("g1", str(i)))
            await wait_all_tasks_blocked()
            async with router.view("g1") as view:
                send.send_nowait(msg("g1", "3"))  # routed to the view from now on
                stored = [s.event for s in await inbox.fetch("g1")]
                live = [await view.receive()]
                router.mark_read("g1")
            assert texts(stored + live) == ["0", "1", "2", "3"]
            assert router.unread_counts() == {}


# -- A5: lazy and full cleanup ------------------------------------------------------------------------


async def test_leaving_a_view_is_lazy_cleanup() -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (send, router):
            async with router.view("g1") as view:
                assert router.statistics().view_bound
            assert view.stale
            with pytest.raises(trio.ClosedResourceError):
                view.receive_nowait()
            stats = router.statistics()
            assert (stats.active, stats.view_bound) == (None, False)
            send.send_nowait(msg("g1", "while away"))  # the channel is still read
            await wait_all_tasks_blocked()
            assert router.unread_counts() == {"g1": 1}
            async with router.view("g1") as again:  # instant: nothing to join
                send.send_nowait(msg("g1", "back"))
                assert texts([await again.receive()]) == ["back"]


async def test_leaving_the_router_is_full_cleanup(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        send, receive = trio.open_memory_channel[RealtimeEvent](10)
        screen_done = trio.Event()
        feed_done = trio.Event()
        feed: list[BackgroundEvent] = []
        async with open_sqlite_inbox(":memory:") as inbox:
            async with open_active_router(receive, group_of=group_of, inbox=inbox) as router:
                bound = trio.Event()

                async def screen() -> None:  # lives in an outer nursery: outlives the router block
                    async with router.view("g1"):
                        bound.set()
                        await trio.sleep_forever()
                    screen_done.set()

                async def badges() -> None:
                    async for item in router.background:
                        feed.append(item)
                    feed_done.set()

                nursery.start_soon(screen)
                nursery.start_soon(badges)
                await bound.wait()
                send.send_nowait(msg("g1", "unread on exit"))
                await wait_all_tasks_blocked()
                assert router.statistics().active_queued == 1
            await screen_done.wait()
            await feed_done.wait()
            assert texts([b.event for b in feed]) == ["unread on exit"]
            assert texts([s.event for s in await inbox.fetch("g1")]) == ["unread on exit"]
            with pytest.raises(trio.ClosedResourceError):
                router.switch_active("g2")
            with pytest.raises(trio.ClosedResourceError):
                async with router.view("g2"):
                    pass  # pragma: no cover
            with pytest.raises(trio.ClosedResourceError):
                router.mark_read("g1")
            send.send_nowait(msg("g1", "nobody reads this"))
            await wait_all_tasks_blocked()
            assert receive.statistics().current_buffer_used == 1  # the router task is gone
            assert router.unread_counts() == {"g1": 1}  # still readable after the block


async def test_end_of_subscription_ends_the_streams() -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (send, router):
            async with router.view("g1") as view:
                send.send_nowait(msg("g1", "last"))
                send.send_nowait(msg("g2", "bg"))
                send.close()
                assert texts([e async for e in view]) == ["last"]  # queued events, then the end
            assert texts([b.event async for b in router.background]) == ["bg"]
            async with router.view("g2") as view2:  # switching stays a local operation
                with pytest.raises(trio.EndOfChannel):
                    await view2.receive()


async def test_subscription_error_propagates_unwrapped() -> None:
    class ClosingSub(trio.abc.ReceiveChannel[RealtimeEvent]):
        async def receive(self) -> RealtimeEvent:
            await trio.lowlevel.checkpoint()
            raise SubscriptionClosed("realtime:chat", "server shut down")

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()

    with trio.fail_after(GUARD), pytest.raises(SubscriptionClosed, match="server shut down"):
        async with open_active_router(ClosingSub(), group_of=group_of):
            await trio.sleep_forever()


# -- helpers, A6 logging, records ----------------------------------------------------------------------


def test_group_by_field() -> None:
    by_group = group_by_field("groupid")
    assert by_group(Broadcast(topic="t", event="m", payload={"groupid": 7})) == "7"
    assert by_group(Broadcast(topic="t", event="m", payload={"other": 1})) is None
    assert by_group(Broadcast(topic="t", event="m", payload=b"binary")) is None
    change = PostgresChange(
        topic="t",
        type="DELETE",
        schema="public",
        table="messages",
        commit_timestamp=None,
        columns=(),
        record={},
        old_record={"groupid": "g9", "id": 1},
    )
    assert by_group(change) == "g9"
    assert by_group(PresenceSync(topic="t", state={})) is None
    assert by_group.__name__ == "group_by_field('groupid')"


async def test_diagnostic_logging_under_one_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_realtime.active")
    with trio.fail_after(GUARD):
        async with fake_router() as (send, router):
            async with router.view("g1"):
                send.send_nowait(msg("g2", "x"))
                await wait_all_tasks_blocked()
                router.switch_active("g2")
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_realtime.active"]
    assert "switch: 'g1' -> 'g2' (generation 2)" in messages
    assert "background 'g2': event (unread 1)" in messages
    assert any(m.startswith("router closed") for m in messages)


async def test_statistics_is_a_frozen_record() -> None:
    with trio.fail_after(GUARD):
        async with fake_router() as (_, router):
            stats = router.statistics()
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                stats.generation = 5  # type: ignore[misc]


# -- end to end, real loopback sockets ------------------------------------------------------------------


async def test_end_to_end_switch_without_leave_or_join(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Two clients on the reference server: one broadcasts chat messages for g1/g2/g3 on one
    channel, the other routes them. Switching from g1 to g2 sends nothing and keeps the one
    server-side join; g1's later messages land in the background, the counters and the inbox."""
    with trio.fail_after(10):
        server = await nursery.start(serve_realtime, "127.0.0.1", 0)
        async with (
            open_realtime(server.url, api_key="k") as sender,
            open_realtime(server.url, api_key="k") as client,
            sender.channel("chat", broadcast=BroadcastConfig(ack=True)) as out,
            client.channel("chat") as sub,
            open_sqlite_inbox(tmp_path / "inbox.db") as inbox,
            open_active_router(sub, group_of=group_by_field("group_id"), inbox=inbox) as router,
        ):

            async def say(group: str, text: str) -> None:
                await out.send_broadcast("message", {"group_id": group, "text": text})

            async def background(n: int) -> list[BackgroundEvent]:
                return [await router.background.receive() for _ in range(n)]

            async with router.view("g1") as view:
                for group, text in [("g1", "a"), ("g2", "b"), ("g1", "c"), ("g3", "d")]:
                    await say(group, text)
                assert texts([await view.receive(), await view.receive()]) == ["a", "c"]
                assert [(b.group, b.unread) for b in await background(2)] == [("g2", 1), ("g3", 1)]
                client_before, server_before = client.statistics(), server.statistics()
                router.switch_active("g2")  # the block ends here: the view is stale
            assert view.stale
            async with router.view("g2") as view2:
                for group, text in [("g1", "e"), ("g2", "f"), ("g3", "g")]:
                    await say(group, text)
                assert texts([await view2.receive()]) == ["f"]
                assert [(b.group, b.unread) for b in await background(2)] == [("g1", 1), ("g3", 2)]
                client_after, server_after = client.statistics(), server.statistics()
                # No leave, no join, not a single frame from the routing client for the switch;
                # the server still holds exactly the two original joins.
                assert client_after.frames_sent == client_before.frames_sent
                assert client_after.connections == client_before.connections == 1
                assert server_after.channels == server_before.channels == 2
                assert sub.status is ChannelState.JOINED
            assert router.unread_counts() == {"g1": 1, "g2": 1, "g3": 2}
            assert texts([s.event for s in await inbox.fetch("g1")]) == ["e"]
            assert texts([s.event for s in await inbox.fetch("g2")]) == ["b"]
            assert texts([s.event for s in await inbox.fetch("g3")]) == ["d", "g"]
            # Lazy cleanup: the view is gone, the channel is not; g2 counts as unread again.
            await say("g2", "h")
            assert [(b.group, b.unread) for b in await background(1)] == [("g2", 2)]
            assert sub.status is ChannelState.JOINED
        # Full cleanup: leaving the blocks left the channels on the server.
        assert server.statistics().channels == 0
