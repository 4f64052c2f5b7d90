"""Lazy connection and visibility pause on real loopback sockets (their exact timing is
asserted under the mock clock in tests/client/test_client_shared.py)."""

from __future__ import annotations

import trio
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ConnectionState,
    PresenceConfig,
    PresenceSync,
    RealtimeConfig,
    Rejoined,
    open_realtime,
)

GUARD = 10


async def _wait_state(states: trio.MemoryReceiveChannel[ConnectionState], wanted: ConnectionState) -> None:
    async for state in states:
        if state is wanted:
            return


async def test_lazy_client_connects_on_demand_and_closes_when_idle(server) -> None:
    config = RealtimeConfig(connect="lazy", idle_disconnect_delay=0.05)
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=config) as client,
            client.watch_state() as states,
        ):
            assert client.state is ConnectionState.IDLE
            assert server.statistics().connections == 0
            async with client.channel("lazy") as sub:
                assert server.statistics().connections == 1
                assert sub.topic == "realtime:lazy"
            await _wait_state(states, ConnectionState.CONNECTED)  # (the stream starts at IDLE)
            await _wait_state(states, ConnectionState.IDLE)
            # The socket is gone on the server side too, and it reopens on demand.
            async with client.channel("again", broadcast=BroadcastConfig(ack=True, receive_own=True)) as sub:
                await sub.send_broadcast("ping", {"n": 1})
                event = await sub.receive()
                assert isinstance(event, Broadcast)
            assert client.statistics().connections == 2
            assert client.statistics().connection_losses == 0


async def test_hidden_app_pauses_and_resumes_with_buffered_sends(server) -> None:
    config = RealtimeConfig(reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2))
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=config) as hidden,
            open_realtime(server.url, api_key="k", config=config) as watcher,
            hidden.channel(
                "room", presence=PresenceConfig(key="h"), broadcast=BroadcastConfig(ack=True)
            ) as h,
            watcher.channel("room", presence=PresenceConfig(key="w")) as w,
            hidden.watch_state() as states,
        ):
            await h.track({"here": True})
            async for event in w:
                if isinstance(event, PresenceSync) and "h" in event.state:
                    break
            hidden.set_visible(False)
            await _wait_state(states, ConnectionState.PAUSED)
            async for event in h:
                if isinstance(event, ChannelErrored):
                    assert event.reason.startswith("paused")
                    break
            async for event in w:  # the watcher sees the hidden client's presence leave
                if isinstance(event, PresenceSync) and "h" not in event.state:
                    break
            async with trio.open_nursery() as nursery:
                nursery.start_soon(h.send_broadcast, "while-hidden", {"n": 1})
                await wait_all_tasks_blocked()  # the send is buffered: there is no socket
                assert h.statistics().pending_pushes == 1
                hidden.set_visible(True)
            got = None
            async for event in w:
                if isinstance(event, Broadcast) and event.event == "while-hidden":
                    got = event
                    break
            assert got is not None
            assert got.payload == {"n": 1}
            assert any(isinstance(e, Rejoined) for e in _drain(h))
            assert hidden.statistics().connection_losses == 0


def _drain(sub) -> list[object]:
    out = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except trio.WouldBlock:
            return out
