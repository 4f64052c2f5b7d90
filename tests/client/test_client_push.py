"""Broadcast pushes: acks, rejections, timeouts, and buffering while not joined."""

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
    LocalProtocolError,
    PushRejected,
    PushTimedOut,
    Rejoined,
)
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

    from trio_realtime import Subscription

ACK = BroadcastConfig(ack=True)
ACK_OWN = BroadcastConfig(ack=True, receive_own=True)


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_broadcast_round_trip(vsn: str, autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server(vsn) as server,
            open_client(server) as client,
            client.channel("room", broadcast=ACK_OWN) as sub,
        ):
            await sub.send_broadcast("cursor", {"x": 1})
            assert await sub.receive() == Broadcast(topic="realtime:room", event="cursor", payload={"x": 1})
            [push] = server.messages("broadcast")
            assert push.payload == {"type": "broadcast", "event": "cursor", "payload": {"x": 1}}
            assert push.user_broadcast == (vsn == "2.0.0")


async def test_binary_broadcast_on_vsn_2(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server("2.0.0") as server,
            open_client(server) as client,
            client.channel("room", broadcast=ACK_OWN) as sub,
        ):
            await sub.send_broadcast("blob", b"\x00\x01\xff")
            assert await sub.receive() == Broadcast(
                topic="realtime:room", event="blob", payload=b"\x00\x01\xff"
            )


async def test_ack_waits_for_the_reply(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", broadcast=ACK) as sub,
        ):
            server.hold_replies("broadcast")
            done = trio.Event()

            async def send() -> None:
                await sub.send_broadcast("e", {})
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await server.wait_frame("broadcast")
                await wait_all_tasks_blocked()
                assert not done.is_set()
                await trio.sleep(2.0)
                assert not done.is_set()
                server.release_replies("broadcast")
            assert done.is_set()
            assert trio.current_time() == 2.0


async def test_without_ack_returns_once_sent(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            server.reply_to("broadcast", None)
            await sub.send_broadcast("e", {"n": 1})
            await server.wait_frame("broadcast")
            assert trio.current_time() == 0.0


async def test_push_rejected(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", broadcast=ACK) as sub,
        ):
            server.reply_to("broadcast", "error", {"reason": "payload_size_exceeded"})
            with pytest.raises(PushRejected) as exc_info:
                await sub.send_broadcast("big", {"blob": "x" * 100})
            assert type(exc_info.value) is PushRejected
            assert exc_info.value.topic == "realtime:room"
            assert exc_info.value.event == "broadcast"
            assert exc_info.value.response == {"reason": "payload_size_exceeded"}
            # The channel is still usable.
            server.reset_replies()
            await sub.send_broadcast("small", {})


async def test_push_timed_out_at_push_timeout(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with (
            open_scripted_server() as server,
            open_client(server, push_timeout=4.0) as client,
            client.channel("room", broadcast=ACK) as sub,
        ):
            await trio.sleep_until(1.0)
            server.reply_to("broadcast", None)
            with pytest.raises(PushTimedOut, match=r"within 4 s; it may or may not have been applied$"):
                await sub.send_broadcast("e", {})
            assert trio.current_time() == 5.0
            await wait_all_tasks_blocked()
            assert client._waiters == {}
            assert client._conn.pending_refs == 0


async def test_binary_payload_on_vsn_1_is_refused_locally(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server("1.0.0") as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            frames_before = len(server.frames)
            with pytest.raises(
                LocalProtocolError,
                match=(
                    r"^cannot send a binary payload on 'realtime:room': this client speaks vsn 1\.0\.0, "
                    r"which carries only JSON; use RealtimeConfig\(vsn='2\.0\.0'\)$"
                ),
            ):
                await sub.send_broadcast("blob", b"\x00")
            await wait_all_tasks_blocked()
            assert len(server.frames) == frames_before
            assert client.statistics().frames_sent == 1  # just the join


async def test_unserialisable_payload_is_refused_locally(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            with pytest.raises(LocalProtocolError, match=r"not JSON-serialisable"):
                await sub.send_broadcast("bad", {"when": object()})
            await wait_all_tasks_blocked()
            assert server.messages("broadcast") == []
            await sub.send_broadcast("good", {})
            frame = await server.wait_frame("broadcast")
            assert frame.message.payload["event"] == "good"


async def _send_in_background(
    nursery: trio.Nursery, sub: Subscription, event: str, done: list[str], **kwargs: Any
) -> None:
    """Start ``sub.send_broadcast(event)`` in a task, and wait until it is blocked."""

    async def send() -> None:
        await sub.send_broadcast(event, {"event": event})
        done.append(event)

    nursery.start_soon(send)
    await wait_all_tasks_blocked()


@pytest.mark.parametrize("ack", [False, True])
async def test_pushes_while_disconnected_are_sent_in_order_after_rejoin(
    ack: bool, autojump_clock: MockClock
) -> None:
    """Regression (ack=True): a buffered push looked its reply waiter up by ref only after it
    was woken; when the reader had already received the ack and unregistered the waiter, the
    push failed with a spurious ``ConnectionLost("connection lost before the reply")``."""
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", broadcast=BroadcastConfig(ack=ack, receive_own=True)) as sub,
        ):
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            done: list[str] = []
            async with trio.open_nursery() as nursery:
                for name in ("a", "b", "c"):
                    await _send_in_background(nursery, sub, name, done)
                # During the backoff: all three wait in the outbox, nothing was sent.
                assert trio.current_time() == 0.0
                assert client.statistics().pending_pushes == 3
                assert sub.statistics().pending_pushes == 3
                assert done == []
            assert trio.current_time() == 1.0
            assert done == ["a", "b", "c"]
            # On the new connection: the join, then the pushes in order, under the new join_ref.
            new_frames = [f.message for f in server.frames if f.connection == 1]
            assert [(m.event, m.payload.get("event")) for m in new_frames] == [
                ("phx_join", None),
                ("broadcast", "a"),
                ("broadcast", "b"),
                ("broadcast", "c"),
            ]
            join_ref = new_frames[0].join_ref
            assert all(m.join_ref == join_ref for m in new_frames)
            assert isinstance(await sub.receive(), Rejoined)
            echoed = [await sub.receive() for _ in range(3)]
            assert [e.event for e in echoed if isinstance(e, Broadcast)] == ["a", "b", "c"]


async def test_outbox_is_bounded(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server, max_pending_pushes=2) as client,
            client.channel("room") as sub,
        ):
            server.refuse_connections(1)
            server.drop_connection()
            assert isinstance(await sub.receive(), ChannelErrored)
            done: list[str] = []
            async with trio.open_nursery() as nursery:
                await _send_in_background(nursery, sub, "a", done)
                await _send_in_background(nursery, sub, "b", done)
                # The outbox is full: "c" waits for room, outside the outbox.
                await _send_in_background(nursery, sub, "c", done)
                assert sub.statistics().pending_pushes == 2
                assert trio.current_time() == 0.0
            # Reconnected at 1 (refused) then 3; everything went out in order.
            assert trio.current_time() == 3.0
            assert done == ["a", "b", "c"]
            assert [m.payload["event"] for m in server.messages("broadcast")] == ["a", "b", "c"]
            assert sub.statistics().pending_pushes == 0


async def test_buffered_push_fails_when_subscription_exits(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with open_scripted_server() as server, open_client(server) as client:
            errors: list[BaseException] = []

            async def send(sub: Subscription) -> None:
                try:
                    await sub.send_broadcast("late", {})
                except trio.ClosedResourceError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                async with client.channel("room") as sub:
                    server.refuse_connections(None)
                    server.drop_connection()
                    assert isinstance(await sub.receive(), ChannelErrored)
                    nursery.start_soon(send, sub)
                    await wait_all_tasks_blocked()
                    assert sub.statistics().pending_pushes == 1
            assert trio.current_time() == 0.0
            [error] = errors
            assert str(error) == "subscription to 'realtime:room' was closed"
