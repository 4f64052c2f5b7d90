"""Lifetimes: state changes, cancellation mid-operation (httpcore test_cancellations style),
closing with channels still open, and the resource errors Trio users expect."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ConnectionState,
    Rejoined,
    SubscriptionClosed,
)
from trio_realtime.testing import ScriptedServer, open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

    from trio_realtime import RealtimeClient

S = ConnectionState


async def _watch(
    client: RealtimeClient, states: list[ConnectionState], *, task_status: trio.TaskStatus[None]
) -> None:
    async with client.watch_state() as changes:
        task_status.started()
        async for state in changes:
            states.append(state)
            if state is S.CLOSED:
                return


async def test_watch_state_through_reconnect_and_close(autojump_clock: MockClock) -> None:
    states: list[ConnectionState] = []
    with trio.fail_after(10):
        async with open_scripted_server() as server, trio.open_nursery() as nursery:
            async with open_client(server) as client, client.channel("room") as sub:
                await nursery.start(_watch, client, states)
                server.refuse_connections(1)
                server.drop_connection()
                assert isinstance(await sub.receive(), ChannelErrored)
                assert isinstance(await sub.receive(), Rejoined)
                assert client.state is S.CONNECTED
            assert client.state is S.CLOSED  # type: ignore[comparison-overlap]  # mypy narrows too far
        assert states == [S.CONNECTED, S.RECONNECTING, S.CONNECTED, S.CLOSED]


async def test_watch_state_when_reconnect_gives_up(autojump_clock: MockClock) -> None:
    states: list[ConnectionState] = []
    backoff = BackoffPolicy(base=1.0, jitter=False, max_attempts=1)
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server, reconnect_backoff=backoff) as client,
        ):
            async with client.watch_state() as changes:
                server.refuse_connections(None)
                server.drop_connection()
                async for state in changes:
                    states.append(state)
                    if state is S.CLOSED:
                        break
            assert trio.current_time() == 1.0
    assert states == [S.CONNECTED, S.RECONNECTING, S.CLOSED]


# -- cancellation -----------------------------------------------------------------------------


async def _assert_nothing_pending(client: RealtimeClient, server: ScriptedServer) -> None:
    await wait_all_tasks_blocked()
    stats = client.statistics()
    assert stats.channels == 0
    assert stats.pending_pushes == 0
    assert client._waiters == {}
    assert client._conn.pending_refs == 0
    assert client._conn.channels == {}
    assert server.joined_topics() == set()


async def test_cancel_mid_join(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server, open_client(server) as client:
            server.hold_replies("phx_join")
            entered = False
            with trio.move_on_after(3.0) as scope:
                async with client.channel("room"):
                    entered = True  # pragma: no cover
            assert scope.cancelled_caught
            assert not entered
            # The server may have applied the join: it was left, within the cancelled scope's exit.
            assert trio.current_time() == 3.0
            assert [m.event for m in server.messages(topic="room")] == ["phx_join", "phx_leave"]
            await _assert_nothing_pending(client, server)
            # The topic can be joined again.
            server.release_replies("phx_join")
            async with client.channel("room") as sub:
                assert sub.topic == "realtime:room"


async def test_cancel_mid_leave_is_bounded_by_leave_timeout(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server, open_client(server, leave_timeout=5.0) as client:
            with trio.move_on_after(1.0) as scope:
                async with client.channel("room"):
                    server.hold_replies("phx_leave")
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            # Cancelled at 1; the shielded leave waited its full leave_timeout for the reply.
            assert trio.current_time() == 6.0
            assert [m.event for m in server.messages(topic="room")] == ["phx_join", "phx_leave"]
            await _assert_nothing_pending(client, server)


async def test_leave_without_reply_exits_at_leave_timeout(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server, open_client(server, leave_timeout=2.5) as client:
            async with client.channel("room"):
                server.hold_replies("phx_leave")
            assert trio.current_time() == 2.5
            await _assert_nothing_pending(client, server)


async def test_cancel_mid_reconnect(autojump_clock: MockClock) -> None:
    backoff = BackoffPolicy(base=10.0, jitter=False)
    with trio.fail_after(100):
        async with open_scripted_server() as server:
            with trio.move_on_after(4.0) as scope:
                async with open_client(server, reconnect_backoff=backoff) as client:
                    server.drop_connection()
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            assert trio.current_time() == 4.0
            assert client.state is S.CLOSED
            assert server.connect_times == [0.0]
            await wait_all_tasks_blocked()
            assert server.open_connections == 0


async def test_cancel_while_refused_reconnects(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server:
            with trio.move_on_after(5.0) as scope:
                async with open_client(server) as client, client.channel("room") as sub:
                    server.refuse_connections(None)
                    server.drop_connection()
                    assert isinstance(await sub.receive(), ChannelErrored)
                    await sub.send_broadcast("buffered", {})  # waits for a rejoin that never comes
            assert scope.cancelled_caught
            assert trio.current_time() == 5.0
            assert server.connect_times == [0.0, 1.0, 3.0]
            assert client.state is S.CLOSED


async def test_exit_with_channels_open_leaves_nothing_running(autojump_clock: MockClock) -> None:
    """Subscriptions held by tasks outside the client's block end when the client closes:
    their receivers get SubscriptionClosed instead of waiting forever."""
    reasons: list[str] = []
    received: list[object] = []

    async def consume(client: RealtimeClient, name: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with client.channel(name, broadcast=BroadcastConfig(receive_own=True)) as sub:
            task_status.started()
            try:
                async for event in sub:
                    received.append(event)
            except SubscriptionClosed as exc:
                reasons.append(exc.reason)

    with trio.fail_after(10):
        async with open_scripted_server() as server:
            async with trio.open_nursery() as nursery:
                async with open_client(server) as client:
                    await nursery.start(consume, client, "a")
                    await nursery.start(consume, client, "b")
                    await server.broadcast("a", "hello", {})
                    await wait_all_tasks_blocked()
                    assert len(received) == 1
            # The nursery exited: nothing was left running.
            assert trio.current_time() == 0.0
            assert client.state is S.CLOSED
            assert reasons == ["the realtime client was closed", "the realtime client was closed"]
            assert client.statistics().channels == 0
            assert len(received) == 1  # no ChannelErrored: the subscription just ended
            await wait_all_tasks_blocked()
            assert server.open_connections == 0


async def test_exit_on_error_inside_channels(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server, trio.open_nursery():
            with pytest.raises(KeyError):
                async with open_client(server) as client, client.channel("a"), client.channel("b"):
                    raise KeyError("app bug")
            assert client.state is S.CLOSED
            assert sorted(m.topic for m in server.messages("phx_leave")) == ["realtime:a", "realtime:b"]
            assert trio.current_time() == 0.0


# -- resource errors -------------------------------------------------------------------------


async def test_two_receivers_is_busy(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            got: list[object] = []

            async def receive_one() -> None:
                got.append(await sub.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_one)
                await wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await sub.receive()
                await server.broadcast("room", "x", {})
            assert len(got) == 1
            assert isinstance(got[0], Broadcast)


async def test_use_after_block_is_closed(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server:
            async with open_client(server) as client:
                async with client.channel("room") as sub:
                    pass
                with pytest.raises(trio.ClosedResourceError):
                    await sub.receive()
                with pytest.raises(trio.ClosedResourceError):
                    sub.receive_nowait()
                with pytest.raises(
                    trio.ClosedResourceError,
                    match=r"^subscription to 'realtime:room' was used after its `async with` block exited$",
                ):
                    await sub.send_broadcast("x", {})
                with pytest.raises(trio.ClosedResourceError):
                    await sub.track({"a": 1})
            with pytest.raises(trio.ClosedResourceError, match=r"^the realtime client is closed$"):
                async with client.channel("again"):
                    pass  # pragma: no cover
            with pytest.raises(trio.ClosedResourceError):
                await client.wait_connected()


async def test_aclose_stops_receiving_but_stays_joined(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            await sub.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await sub.receive()
            await server.broadcast("room", "ignored", {})
            await wait_all_tasks_blocked()
            assert server.joined_topics() == {"realtime:room"}
            assert client.state is S.CONNECTED


async def test_async_for_ends_with_subscription_closed(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            await server.broadcast("room", "one", {})
            await server.close_channel("room", system_message=None)
            events = []

            async def collect() -> None:
                async for event in sub:
                    events.append(event)

            with pytest.raises(SubscriptionClosed):
                await collect()
            assert [e.event for e in events if isinstance(e, Broadcast)] == ["one"]
