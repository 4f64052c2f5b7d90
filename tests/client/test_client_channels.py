"""Joining, leaving, and the server ending or crashing a channel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ChannelState,
    JoinRejected,
    JoinTimedOut,
    LocalProtocolError,
    PresenceConfig,
    PresenceSync,
    Rejoined,
    SubscriptionClosed,
    SystemMessage,
)
from trio_realtime.protocol import Message
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

VSNS = pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])


@VSNS
async def test_join_and_leave(vsn: str, autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server(vsn) as server, open_client(server) as client:
            async with client.channel("room", broadcast=BroadcastConfig(receive_own=True)) as sub:
                assert sub.topic == "realtime:room"
                assert sub.status is ChannelState.JOINED
                assert server.joined_topics() == {"realtime:room"}
                assert client.statistics().joined_channels == 1
                join = server.messages("phx_join")[0]
                assert join.payload["config"]["broadcast"] == {"ack": False, "self": True}
            assert server.joined_topics() == set()
            leave = server.messages("phx_leave")[0]
            assert leave.topic == "realtime:room"
            assert client.statistics().channels == 0


@VSNS
async def test_join_rejected_raises_join_rejected(vsn: str, autojump_clock: MockClock) -> None:
    reason = "Unauthorized: You do not have permissions to read from this Channel topic: room"
    with trio.fail_after(10):
        async with open_scripted_server(vsn) as server:
            server.reject_join("room", reason)
            with pytest.raises(JoinRejected) as exc_info:
                async with open_client(server) as client, client.channel("room"):
                    pytest.fail("the block must not be entered")
            assert type(exc_info.value) is JoinRejected
            assert exc_info.value.reason == reason
            assert exc_info.value.topic == "realtime:room"
            assert exc_info.value.response == {"reason": reason}
            assert str(exc_info.value) == f"server rejected the join of 'realtime:room': {reason}"
            # A refused join leaves nothing to leave.
            assert server.messages("phx_leave") == []


async def test_join_rejection_leaves_client_usable(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server, open_client(server) as client:
            server.reject_join("room", "ChannelRateLimitReached: Too many channels", times=1)
            with pytest.raises(JoinRejected, match=r"Too many channels$"):
                async with client.channel("room"):
                    pass  # pragma: no cover
            assert client.statistics().channels == 0
            async with client.channel("room") as sub:
                assert sub.status is ChannelState.JOINED


async def test_join_timed_out_at_join_timeout(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server, open_client(server, join_timeout=7.5) as client:
            server.hold_replies("phx_join")
            with pytest.raises(JoinTimedOut) as exc_info:
                async with client.channel("room"):
                    pytest.fail("the block must not be entered")
            assert trio.current_time() == 7.5
            assert type(exc_info.value) is JoinTimedOut
            assert exc_info.value.timeout == 7.5
            # The join may still be applied by the server: the client leaves to be sure.
            assert [m.event for m in server.messages(topic="room")] == ["phx_join", "phx_leave"]
            assert client.statistics().channels == 0


async def test_user_exception_propagates_unchanged(autojump_clock: MockClock) -> None:
    class AppError(Exception):
        pass

    error = AppError("boom")
    with trio.fail_after(10):
        async with open_scripted_server() as server:
            with pytest.raises(AppError) as exc_info:
                async with open_client(server) as client, client.channel("room"):
                    raise error
            assert exc_info.value is error
            # The channel was still left on the way out.
            assert [m.event for m in server.messages(topic="room")] == ["phx_join", "phx_leave"]


async def test_second_subscription_with_another_config_is_refused(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room"),
        ):
            with pytest.raises(LocalProtocolError, match=r"already subscribed on this client with another"):
                async with client.channel("realtime:room", presence=True):
                    pass  # pragma: no cover
            assert client.statistics().channels == 1
            assert client.statistics().subscriptions == 1


@VSNS
async def test_server_close_ends_subscription_after_system_message(
    vsn: str, autojump_clock: MockClock
) -> None:
    message = "Token has expired 12 seconds ago"
    with trio.fail_after(10):
        async with open_scripted_server(vsn) as server, open_client(server) as client:
            async with client.channel("room") as sub:
                await server.broadcast("room", "before", {"n": 1})
                await server.close_channel("room", system_message=message)
                assert await sub.receive() == Broadcast(
                    topic="realtime:room", event="before", payload={"n": 1}
                )
                assert await sub.receive() == SystemMessage(
                    topic="realtime:room", extension="system", status="error", message=message, channel="room"
                )
                with pytest.raises(SubscriptionClosed) as exc_info:
                    await sub.receive()
                assert exc_info.value.reason == message
                assert sub.status is ChannelState.CLOSED
                with pytest.raises(SubscriptionClosed):
                    await sub.send_broadcast("after", {})
                # It stays closed: no rejoin.
                await wait_all_tasks_blocked()
                assert len(server.join_times) == 1
            # Nothing to leave: the server already closed it.
            assert server.messages("phx_leave") == []


async def test_server_close_without_system_message(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            await server.close_channel("room", system_message=None)
            with pytest.raises(SubscriptionClosed, match=r"phx_close"):
                await sub.receive()


@VSNS
async def test_phx_error_then_rejoined(vsn: str, autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server(vsn) as server, open_client(server) as client:
            async with client.channel("room") as sub:
                await trio.sleep_until(3.0)
                await server.error_channel("room")
                errored = await sub.receive()
                assert isinstance(errored, ChannelErrored)
                assert "phx_error" in errored.reason
                assert await sub.receive() == Rejoined(topic="realtime:room", recovered=False)
                assert server.join_times == [("realtime:room", 0.0), ("realtime:room", 3.0)]
                assert sub.status is ChannelState.JOINED
                # Still one connection: only the channel was rejoined.
                assert server.connect_times == [0.0]
                await server.broadcast("room", "hello", {})
                assert isinstance(await sub.receive(), Broadcast)


async def test_rejoined_comes_before_the_new_joins_events(autojump_clock: MockClock) -> None:
    """Regression: the server pushes ``presence_state`` right after the join reply, in the same
    socket read. The reader used to deliver it before the rejoin task got to deliver
    ``Rejoined``, so events of the new join arrived while the subscriber still believed the
    channel was down."""
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", presence=PresenceConfig(key="me")) as sub,
        ):
            assert isinstance(await sub.receive(), PresenceSync)
            await server.error_channel("room")
            assert isinstance(await sub.receive(), ChannelErrored)
            assert isinstance(await sub.receive(), Rejoined)
            assert isinstance(await sub.receive(), PresenceSync)


@VSNS
async def test_stale_phx_close_does_not_end_new_join(vsn: str, autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server(vsn) as server, open_client(server) as client:
            async with client.channel("room") as sub:
                old_ref = server.join_ref("room")
                await server.error_channel("room")
                assert isinstance(await sub.receive(), ChannelErrored)
                assert isinstance(await sub.receive(), Rejoined)
                new_ref = server.join_ref("room")
                assert old_ref is not None
                assert new_ref not in (None, old_ref)
                # A late phx_close / phx_error for the first join (ref = its join_ref, as Phoenix
                # sends them) must be ignored.
                for name in ("phx_close", "phx_error"):
                    await server.send(
                        Message(join_ref=old_ref, ref=old_ref, topic="realtime:room", event=name)
                    )
                await server.broadcast("room", "still-here", {})
                event = await sub.receive()
                assert isinstance(event, Broadcast)
                assert event.event == "still-here"
                assert sub.status is ChannelState.JOINED


async def test_connection_lost_during_first_join_is_retried_silently(autojump_clock: MockClock) -> None:
    """Regression: a connection lost while the *first* join waited for its reply queued a
    ``ChannelErrored`` (with no ``Rejoined`` after it) in a subscription the user had not even
    received yet."""
    with trio.fail_after(10):
        async with open_scripted_server() as server, open_client(server) as client:
            server.hold_replies("phx_join")

            async def drop_during_join() -> None:
                await server.wait_frame("phx_join")
                server.drop_connection()
                server.release_replies("phx_join")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drop_during_join)
                async with client.channel("room") as sub:
                    assert trio.current_time() == 1.0
                    assert server.join_times == [("realtime:room", 0.0), ("realtime:room", 1.0)]
                    with pytest.raises(trio.WouldBlock):
                        sub.receive_nowait()
                    await server.broadcast("room", "first", {})
                    event = await sub.receive()
                    assert isinstance(event, Broadcast)
