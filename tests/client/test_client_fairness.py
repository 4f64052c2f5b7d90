"""The reader lets consumers drain before reading again (no drops for a consumer that keeps up),
and receive_batch takes everything queued in one checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from _client_helpers import URL, make_config, open_client
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

from trio_realtime import Broadcast, ConnectionLost, Dropped, open_realtime
from trio_realtime.protocol import Message, serializer_for
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

    from trio_realtime.testing import ScriptedServer


async def _blast(server: ScriptedServer, n: int) -> None:
    for i in range(n):
        await server.send(
            Message(
                topic="realtime:room",
                event="broadcast",
                payload={"type": "broadcast", "event": "tick", "payload": {"i": i}},
            )
        )


class BurstTransport:
    """A server that answers the join, then hands the reader ``burst`` broadcasts per read,
    as one large socket read of small messages does."""

    subprotocol = None

    def __init__(self, total: int, burst: int) -> None:
        self._client = serializer_for("2.0.0", "server")
        self._pending: list[str | bytes] = []
        self._next = 0
        self._total = total
        self._burst = burst
        self._joined = False
        self._closed = trio.Event()
        self._wakeup = trio.Event()

    async def send_message(self, data: str | bytes) -> None:
        msg = self._client.decode(data)
        if msg.event in ("phx_join", "heartbeat", "phx_leave"):
            self._joined = self._joined or msg.event == "phx_join"
            reply = {"status": "ok", "response": {"postgres_changes": []}}
            self._pending.append(
                self._client.encode(
                    Message(
                        join_ref=msg.join_ref, ref=msg.ref, topic=msg.topic, event="phx_reply", payload=reply
                    )
                )
            )
        await trio.lowlevel.checkpoint()

    async def receive_messages(self) -> list[str | bytes]:
        await trio.lowlevel.checkpoint()
        while not self._pending and not (self._joined and self._next < self._total):
            if self._closed.is_set():
                raise ConnectionLost("closed")
            self._wakeup = trio.Event()
            with trio.move_on_after(1):
                await self._wakeup.wait()
        batch, self._pending = self._pending, []
        if self._joined:
            end = min(self._total, self._next + self._burst)
            for i in range(self._next, end):
                body = {"type": "broadcast", "event": "tick", "payload": {"i": i}}
                batch.append(
                    self._client.encode(Message(topic="realtime:room", event="broadcast", payload=body))
                )
            self._next = end
        return batch

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self._closed.set()
        self._wakeup.set()
        await trio.lowlevel.checkpoint()


async def test_async_for_consumer_keeps_up_with_large_reads(autojump_clock: MockClock) -> None:
    """Regression: the reader queued a whole read's events (hundreds) per scheduling round
    while an ``async for`` consumer took one per round, so the queue overflowed and ~99% of
    a fast stream was dropped. Now the reader lets the consumer drain between reads."""
    total, burst = 5000, 400
    transport = BurstTransport(total, burst)

    async def factory(url: str) -> BurstTransport:
        return transport

    with trio.fail_after(60):
        async with (
            open_realtime(URL, api_key="k", config=make_config(), transport_factory=factory) as client,
            client.channel("room") as sub,
        ):
            seen: list[int] = []
            async for event in sub:
                assert not isinstance(event, Dropped)
                assert isinstance(event, Broadcast)
                seen.append(event.payload["i"])
                if len(seen) == total:
                    break
            assert seen == list(range(total))
            assert sub.statistics().dropped == 0


async def test_a_consumer_that_stops_reading_does_not_hold_the_reader(autojump_clock: MockClock) -> None:
    with trio.fail_after(60):
        async with (
            open_scripted_server() as server,
            open_client(server, subscription_buffer=100) as client,
            client.channel("room") as stuck,
            client.channel("other") as other,
        ):
            await _blast(server, 300)  # fills `stuck` past the drain threshold; nobody reads it
            await server.broadcast("other", "hello", {})
            with trio.move_on_after(1):  # bounded: the reader waits at most 50 ms per read for it
                assert isinstance(await other.receive(), Broadcast)
            assert trio.current_time() < 1
            assert stuck.statistics().dropped == 200


async def test_receive_batch_takes_everything_queued(autojump_clock: MockClock) -> None:
    with trio.fail_after(60):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room") as sub,
        ):
            await _blast(server, 50)
            await wait_all_tasks_blocked()
            with assert_checkpoints():
                batch = await sub.receive_batch()
            assert [e.payload["i"] for e in batch] == list(range(50))  # type: ignore[union-attr]
            await _blast(server, 30)
            await wait_all_tasks_blocked()
            assert len(await sub.receive_batch(max_events=10)) == 10
            assert sub.statistics().queued == 20
