"""Shared topics, lazy connection and visibility pause (SPEC L1, L2, L4, M1), in virtual time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from _client_helpers import open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ConnectionState,
    PresenceConfig,
    PresenceSync,
    Rejoined,
)
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock


async def test_subscribers_of_one_topic_share_one_join(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server, open_client(server) as client:
            async with client.channel("room") as first, client.channel("room") as second:
                assert [m.event for m in server.messages(topic="room")] == ["phx_join"]
                assert client.statistics().channels == 1
                assert client.statistics().subscriptions == 2
                assert first.statistics().subscribers == 2
                await server.broadcast("room", "hello", {"n": 1})
                for sub in (first, second):
                    assert await sub.receive() == Broadcast(
                        topic="realtime:room", event="hello", payload={"n": 1}
                    )
                async with client.channel("room") as third:
                    await server.broadcast("room", "again", {})
                    for sub in (first, second, third):
                        event = await sub.receive()
                        assert isinstance(event, Broadcast)
                        assert event.event == "again"
                # The third left; the join stays for the other two.
                await wait_all_tasks_blocked()
                assert [m.event for m in server.messages(topic="room")] == ["phx_join"]
            # The last one out leaves.
            assert [m.event for m in server.messages(topic="room")] == ["phx_join", "phx_leave"]
            assert client.statistics().channels == 0


async def test_a_slow_subscriber_does_not_hold_back_its_sibling(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server, subscription_buffer=2) as client,
            client.channel("room") as slow,
            client.channel("room") as fast,
        ):
            for n in range(5):
                await server.broadcast("room", "tick", {"n": n})
                assert await fast.receive() == Broadcast(
                    topic="realtime:room", event="tick", payload={"n": n}
                )
            assert slow.statistics().queued == 2
            assert slow.statistics().dropped == 3
            assert fast.statistics().dropped == 0


async def test_late_subscriber_gets_the_current_presence_state(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("lobby", presence=PresenceConfig(key="me")) as first,
        ):
            await first.track({"name": "me"})
            while "me" not in first.presence():
                await first.receive()
            async with client.channel("lobby", presence=PresenceConfig(key="me")) as late:
                event = await late.receive()
                assert isinstance(event, PresenceSync)
                assert set(event.state) == {"me"}


async def test_lazy_connects_on_first_channel_and_closes_after_idle_delay(autojump_clock: MockClock) -> None:
    with trio.fail_after(30):
        async with open_scripted_server() as server:
            async with open_client(server, connect="lazy", idle_disconnect_delay=1.0) as client:
                assert client.state is ConnectionState.IDLE
                await trio.sleep(5)
                assert server.connect_times == []
                async with client.channel("a"):
                    assert server.connect_times == [5.0]
                    await trio.sleep(2)
                # Left at t=7: the socket closes one idle delay later, at t=8.
                await wait_all_tasks_blocked()
                assert client.state is ConnectionState.CONNECTED
                await trio.sleep(1.5)
                assert client.state is ConnectionState.IDLE
                assert server.open_connections == 0
                # Entering again within the delay keeps the socket; after it, reopens on demand.
                async with client.channel("b"):
                    assert server.connect_times == [5.0, 8.5]
                async with client.channel("c"):  # re-entered at once: same connection
                    assert server.connect_times == [5.0, 8.5]
            assert client.statistics().connection_losses == 0


async def test_lazy_idle_close_is_cancelled_by_a_new_channel(autojump_clock: MockClock) -> None:
    with trio.fail_after(30):
        async with open_scripted_server() as server, open_client(server, connect="lazy") as client:
            async with client.channel("a"):
                pass
            await trio.sleep(0.5)
            async with client.channel("b"):
                await trio.sleep(3)
                assert server.connect_times == [0.0]
                assert client.state is ConnectionState.CONNECTED


async def test_hidden_closes_socket_buffers_sends_and_resumes(autojump_clock: MockClock) -> None:
    with trio.fail_after(200):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel(
                "room", broadcast=BroadcastConfig(receive_own=True), presence=PresenceConfig(key="me")
            ) as sub,
            client.watch_state() as states,
        ):
            assert await states.receive() is ConnectionState.CONNECTED
            await sub.track({"status": "here"})
            await trio.sleep(10)
            client.set_visible(False)
            assert await states.receive() is ConnectionState.PAUSED
            await wait_all_tasks_blocked()
            assert server.open_connections == 0
            errored = await sub.receive()
            while not isinstance(errored, ChannelErrored):
                errored = await sub.receive()
            assert errored.reason.startswith("paused")
            # Sends while hidden are buffered, in order.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sub.send_broadcast, "queued", {"n": 1})
                await wait_all_tasks_blocked()
                assert sub.statistics().pending_pushes == 1
                await trio.sleep(60)  # a minute hidden: no reconnect attempt meanwhile
                assert server.connect_times == [0.0]
                client.set_visible(True)
            assert server.connect_times == [0.0, 70.0]
            assert await states.receive() is ConnectionState.CONNECTING
            assert await states.receive() is ConnectionState.CONNECTED
            seen = []
            while not any(isinstance(e, Broadcast) and e.event == "queued" for e in seen):
                seen.append(await sub.receive())
            assert any(isinstance(e, Rejoined) and e.recovered is False for e in seen)
            # Presence was tracked again by the client itself after the resume.
            tracks = [m for m in server.messages("presence") if m.payload.get("event") == "track"]
            assert len(tracks) == 2
            assert client.statistics().connection_losses == 0


async def test_follow_visibility_from_an_async_source(autojump_clock: MockClock) -> None:
    with trio.fail_after(30):
        async with open_scripted_server() as server, open_client(server) as client:
            send, receive = trio.open_memory_channel[bool](4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.follow_visibility, receive)
                await send.send(False)
                await wait_all_tasks_blocked()
                assert client.state is ConnectionState.PAUSED
                await send.send(True)
                await send.aclose()
            await client.wait_connected()
            assert len(server.connect_times) == 2


async def test_cancelled_first_join_hands_over_to_the_next_subscriber(autojump_clock: MockClock) -> None:
    """Regression: the first subscriber is cancelled while its join is unanswered; a second
    subscriber waiting for that join must join by itself (it used to find the channel stuck
    in JOINING and fail with LocalProtocolError)."""
    with trio.fail_after(30):
        async with open_scripted_server() as server, open_client(server) as client:
            server.hold_replies("phx_join")
            entered = trio.Event()
            async with trio.open_nursery() as nursery:
                first_scope = trio.CancelScope()

                async def first() -> None:
                    with first_scope:
                        async with client.channel("room"):
                            pass  # pragma: no cover

                async def second() -> None:
                    async with client.channel("room"):
                        entered.set()

                nursery.start_soon(first)
                await wait_all_tasks_blocked()
                nursery.start_soon(second)
                await wait_all_tasks_blocked()
                first_scope.cancel()
                await wait_all_tasks_blocked()
                server.release_replies("phx_join")
            assert entered.is_set()
            assert [m.event for m in server.messages(topic="room")][-1] == "phx_leave"
