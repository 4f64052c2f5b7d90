"""The blocking facade (SPEC X2): synchronous tests against the reference server on loopback.

These are plain ``def`` tests (pytest-trio's trio_mode only affects async tests). The server
runs in its own thread with its own ``trio.run``. Every wait is bounded: receives take a
timeout, joins and pushes are bounded by the client's protocol timeouts, and a watchdog
(faulthandler) kills the run with every thread's traceback if a test still hangs.
"""

from __future__ import annotations

import faulthandler
import functools
import queue
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ConnectionState,
    HandshakeFailed,
    JoinRejected,
    PresenceConfig,
    PresenceLeave,
    PresenceSync,
    RealtimeConfig,
    RealtimeEvent,
)
from trio_realtime._blocking import BlockingSubscription, open_blocking_realtime
from trio_realtime.server import RealtimeServer, serve_realtime

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

WAIT = 5.0  # seconds any single receive may take
CONFIG = RealtimeConfig(
    join_timeout=5,
    push_timeout=5,
    leave_timeout=2,
    close_timeout=2,
    reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2),
)


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """If a test hangs, dump every thread's stack and exit instead of hanging CI."""
    faulthandler.dump_traceback_later(30, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def server() -> Iterator[RealtimeServer]:
    """The reference server in a thread of its own, on a free loopback port."""
    started: queue.SimpleQueue[tuple[RealtimeServer, trio.lowlevel.TrioToken, trio.CancelScope]] = (
        queue.SimpleQueue()
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            srv = await nursery.start(functools.partial(serve_realtime, "127.0.0.1", 0))
            started.put((srv, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(main,), name="test-server")
    thread.start()
    srv, token, scope = started.get(timeout=10)
    try:
        yield srv
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)
        assert not thread.is_alive()


def new_threads(before: set[threading.Thread]) -> set[str]:
    """Names of the threads alive now that were not alive ``before``.

    Compared as sets, not counts: an idle worker of some earlier test's thread cache may
    exit meanwhile, which must not look like (or hide) a leak.
    """
    return {t.name for t in threading.enumerate() if t not in before}


def receive_until(sub: BlockingSubscription, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
    while True:
        event = sub.receive(timeout=WAIT)
        if predicate(event):
            return event


def is_broadcast(name: str) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, Broadcast) and e.event == name


def test_broadcast_between_blocking_clients_and_no_thread_left(server: RealtimeServer) -> None:
    baseline = set(threading.enumerate())
    with (
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as bob,
    ):
        assert new_threads(baseline) == {"trio_realtime-blocking"}
        assert len(set(threading.enumerate()) - baseline) == 2
        assert alice.state.value == "connected"
        with (
            alice.channel("room", broadcast=BroadcastConfig(ack=True)) as room_a,
            bob.channel("room") as room_b,
        ):
            assert room_a.topic == "realtime:room"
            assert room_a.status.value == "joined"
            room_a.send_broadcast("greet", {"text": "hi"})
            event = receive_until(room_b, is_broadcast("greet"))
            assert isinstance(event, Broadcast)
            assert event.payload == {"text": "hi"}
            assert room_b.statistics().delivered >= 1
        assert alice.statistics().channels == 0
    assert new_threads(baseline) == set()


def test_iteration_yields_events_in_order(server: RealtimeServer) -> None:
    with (
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as bob,
        alice.channel("feed", broadcast=BroadcastConfig(ack=True)) as feed_a,
        bob.channel("feed") as feed_b,
    ):
        for i in range(5):
            feed_a.send_broadcast("n", {"i": i})
        seen = []
        for event in feed_b:
            if isinstance(event, Broadcast):
                seen.append(event.payload["i"])
                if len(seen) == 5:
                    break
        assert seen == [0, 1, 2, 3, 4]


def test_presence_track_untrack_and_leave_on_exit(server: RealtimeServer) -> None:
    with (
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as bob,
        bob.channel("lobby", presence=PresenceConfig(key="bob")) as lobby_b,
    ):
        with alice.channel("lobby", presence=PresenceConfig(key="alice")) as lobby_a:
            lobby_a.track({"name": "Alice"})
            receive_until(lobby_b, lambda e: isinstance(e, PresenceSync) and "alice" in e.state)
            assert [p["name"] for p in lobby_b.presence()["alice"]] == ["Alice"]
            lobby_a.untrack()
            receive_until(lobby_b, lambda e: isinstance(e, PresenceLeave) and e.key == "alice")
            lobby_a.track({"name": "Alice again"})
            receive_until(lobby_b, lambda e: isinstance(e, PresenceSync) and "alice" in e.state)
        # Leaving the channel's block left the channel on the server: alice is gone.
        receive_until(lobby_b, lambda e: isinstance(e, PresenceLeave) and e.key == "alice")
        assert "alice" not in lobby_b.presence()


def test_receive_timeout_raises_builtin_timeout_error_and_keeps_subscription(server: RealtimeServer) -> None:
    with (
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        alice.channel("quiet", broadcast=BroadcastConfig(ack=True, receive_own=True)) as quiet,
    ):
        with pytest.raises(TimeoutError, match=r"^no event on 'realtime:quiet' within 0.05 s$"):
            quiet.receive(timeout=0.05)
        with pytest.raises(trio.WouldBlock):
            quiet.receive_nowait()
        quiet.send_broadcast("echo", {"ok": True})
        assert receive_until(quiet, is_broadcast("echo")).payload == {"ok": True}  # type: ignore[union-attr]


def test_join_rejected_is_raised_in_caller_thread_with_its_type(server: RealtimeServer) -> None:
    baseline = set(threading.enumerate())
    with open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice:
        with pytest.raises(JoinRejected, match="TopicNameRequired") as info, alice.channel(""):
            pass  # pragma: no cover
        assert info.value.reason == "TopicNameRequired: You must provide a topic name"
        with alice.channel("still-usable") as ok:  # the client survives a refused join
            assert ok.status.value == "joined"
    assert new_threads(baseline) == set()


def test_handshake_failure_is_raised_and_thread_joined() -> None:
    with socket.socket() as unused:  # bound but not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        baseline = set(threading.enumerate())
        with (
            pytest.raises(HandshakeFailed),
            open_blocking_realtime(f"ws://127.0.0.1:{port}/realtime/v1", api_key="k", config=CONFIG),
        ):
            pass  # pragma: no cover
    assert new_threads(baseline) == set()


def test_exception_in_block_propagates_unchanged_after_clean_shutdown(server: RealtimeServer) -> None:
    baseline = set(threading.enumerate())
    with (
        pytest.raises(KeyError, match="mine"),
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        alice.channel("room"),
    ):
        raise KeyError("mine")
    assert new_threads(baseline) == set()


def test_use_after_exit_raises_closed_resource_error(server: RealtimeServer) -> None:
    with open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice:
        with alice.channel("room") as room:
            pass
        with pytest.raises(trio.ClosedResourceError):
            room.receive(timeout=WAIT)
        with pytest.raises(trio.ClosedResourceError):
            room.send_broadcast("late", {})
    assert alice.state is ConnectionState.CLOSED
    with pytest.raises(trio.ClosedResourceError, match=r"^the blocking realtime client is closed$"):
        alice.statistics()
    with pytest.raises(trio.ClosedResourceError), alice.channel("again"):
        pass  # pragma: no cover


def test_closing_client_wakes_receiver_in_another_thread(server: RealtimeServer) -> None:
    """A thread blocked in receive() is woken when the client's block exits.

    It sees the end of the channel (EndOfChannel, so a ``for`` loop just ends) if the receive
    was waiting when the channel closed, or ClosedResourceError if it came too late.
    """
    baseline = set(threading.enumerate())
    outcome: queue.SimpleQueue[BaseException | RealtimeEvent] = queue.SimpleQueue()
    receiving = threading.Event()

    def consume(sub: BlockingSubscription) -> None:
        receiving.set()
        try:
            outcome.put(sub.receive())
        except BaseException as exc:
            outcome.put(exc)

    with (
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        alice.channel("room") as room,
    ):
        consumer = threading.Thread(target=consume, args=(room,))
        consumer.start()
        assert receiving.wait(WAIT)
    result: Any = outcome.get(timeout=WAIT)
    consumer.join(WAIT)
    assert isinstance(result, trio.EndOfChannel | trio.ClosedResourceError)
    assert new_threads(baseline) == set()


def test_keyboard_interrupt_while_blocked_cancels_the_call(server: RealtimeServer) -> None:
    """Ctrl-C in the calling thread ends its blocked receive; the subscription stays usable."""
    with (
        open_blocking_realtime(server.url, api_key="k", config=CONFIG) as alice,
        alice.channel("room", broadcast=BroadcastConfig(ack=True, receive_own=True)) as room,
    ):
        main = threading.main_thread().ident
        assert main == threading.get_ident()
        interrupter = threading.Timer(0.05, signal.pthread_kill, args=(main, signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the interrupt may come anywhere here
            interrupter.start()
            room.receive()  # nothing will come: only the interrupt ends this
        interrupter.join(WAIT)
        room.send_broadcast("after", {})
        # Not BusyResourceError: the interrupted receive is over.
        assert receive_until(room, is_broadcast("after")).payload == {}  # type: ignore[union-attr]
