"""The in-memory Transport pair from trio_realtime.testing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

from trio_realtime._errors import ConnectionLost
from trio_realtime.testing import MemoryTransport, memory_transport_pair

if TYPE_CHECKING:
    from trio_realtime._transport import Transport


async def test_messages_arrive_in_order_and_in_one_batch() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        checked: Transport = client  # MemoryTransport satisfies the protocol
        assert checked.subprotocol is None
        messages: list[str | bytes] = ["one", b"two", "three"]
        for message in messages:
            await client.send_message(message)
        assert await server.receive_messages() == ["one", b"two", "three"]
        await server.send_message("four")
        await server.send_message(b"five")
        assert await client.receive_messages() == ["four", b"five"]


async def test_receive_returns_only_what_is_queued() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        await client.send_message("a")
        await client.send_message("b")
        assert await server.receive_messages() == ["a", "b"]
        await client.send_message("c")
        assert await server.receive_messages() == ["c"]


async def test_receive_waits_for_a_message() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        batches: list[list[str | bytes]] = []

        async def reader() -> None:
            batches.append(await server.receive_messages())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await wait_all_tasks_blocked()
            assert batches == []
            await client.send_message("wake up")
        assert batches == [["wake up"]]


async def test_send_and_receive_are_checkpoints() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        with assert_checkpoints():
            await client.send_message("x")
        with assert_checkpoints():
            await server.receive_messages()
        with assert_checkpoints():
            await client.aclose()
        with assert_checkpoints():
            await client.aclose()


async def test_send_blocks_when_the_peer_queue_is_full() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair(capacity=2)
        await client.send_message("1")
        await client.send_message("2")
        sent = trio.Event()

        async def third() -> None:
            await client.send_message("3")
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await wait_all_tasks_blocked()
            assert not sent.is_set()
            # Receiving unblocks the sender, whose message trio moves straight into the queue.
            assert await server.receive_messages() == ["1", "2", "3"]
            await sent.wait()


async def test_aclose_delivers_queued_messages_then_reports_code_and_reason() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        await server.send_message("first")
        await server.send_message("second")
        await server.aclose(1012, "service restart")
        assert await client.receive_messages() == ["first", "second"]
        with pytest.raises(ConnectionLost) as exc_info:
            await client.receive_messages()
        assert exc_info.value.reason == "server closed the connection (code 1012: service restart)"
        with pytest.raises(ConnectionLost, match=r"^server closed the connection \(code 1012"):
            await client.send_message("too late")


async def test_client_aclose_is_seen_by_the_server_end() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        await client.aclose()
        with pytest.raises(ConnectionLost, match=r"^client closed the connection \(code 1000\)$"):
            await server.receive_messages()


async def test_aclose_is_idempotent_and_closes_this_end() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        await server.send_message("never read")
        await client.aclose(4000, "bye")
        await client.aclose(1000, "again")
        with pytest.raises(ConnectionLost, match=r"^the connection was closed locally$"):
            await client.receive_messages()
        with pytest.raises(ConnectionLost, match=r"^the connection was closed locally$"):
            await client.send_message("x")
        with pytest.raises(ConnectionLost, match=r"^client closed the connection \(code 4000: bye\)$"):
            await server.receive_messages()


async def test_aclose_wakes_a_blocked_receiver_on_the_other_end() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        lost: list[str] = []

        async def reader() -> None:
            try:
                await client.receive_messages()
            except ConnectionLost as exc:
                lost.append(exc.reason)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await wait_all_tasks_blocked()
            await server.aclose(1001, "going away")
        assert lost == ["server closed the connection (code 1001: going away)"]


async def test_abort_drops_queued_messages_and_fails_both_ends() -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()
        await server.send_message("lost in flight")
        await client.send_message("also lost")
        server.abort("connection reset by test")
        for end in (client, server):
            with pytest.raises(ConnectionLost, match=r"^connection reset by test$"):
                await end.receive_messages()
            with pytest.raises(ConnectionLost, match=r"^connection reset by test$"):
                await end.send_message("x")
        # Closing an aborted transport is still fine.
        await client.aclose()
        await server.aclose()


async def test_abort_wakes_blocked_receivers_and_senders() -> None:
    with trio.fail_after(10):
        client, _server = memory_transport_pair(capacity=1)
        await client.send_message("fills the queue")
        reasons: list[str] = []

        async def receive(end: MemoryTransport) -> None:
            try:
                await end.receive_messages()
            except ConnectionLost as exc:
                reasons.append(exc.reason)

        async def send(end: MemoryTransport) -> None:
            try:
                await end.send_message("blocked")
            except ConnectionLost as exc:
                reasons.append(exc.reason)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, client)
            nursery.start_soon(send, client)
            await wait_all_tasks_blocked()
            client.abort("network down")
        assert reasons == ["network down", "network down"]


async def test_concurrent_receive_is_busy() -> None:
    with trio.fail_after(10):
        _client, server = memory_transport_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_messages)
            await wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_messages()
            nursery.cancel_scope.cancel()


async def test_works_under_the_autojump_clock(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        client, server = memory_transport_pair()

        async def late_sender() -> None:
            await trio.sleep(5)
            await server.send_message("hello at t=5")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_sender)
            assert await client.receive_messages() == ["hello at t=5"]
            assert trio.current_time() == 5


def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        MemoryTransport()  # type: ignore[call-arg]
