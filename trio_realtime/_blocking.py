"""A blocking facade for synchronous code: ``with open_blocking_realtime(url) as client:``.

Theory of operation
-------------------
Scripts and thread-based web workers (Django, Flask) cannot ``await``. For them
:func:`open_blocking_realtime` starts one ordinary (non-daemon) thread that runs
``trio.run``; inside it, the real client (:func:`~trio_realtime.open_realtime`) and one
nursery live for exactly as long as the ``with`` block.

Every blocking call crosses into that thread the same way: ``trio.from_thread.run_sync``
(with the run's token) starts a *call task* in the client's nursery, and the calling thread
waits for that task's result on a queue. So all work stays inside the client's nursery —
nothing runs as a loose system task — and the result, or the exception with its original type
(``JoinRejected``, ``PushRejected``, ``HandshakeFailed`` ...), is handed back to the calling
thread as is. If the calling thread is interrupted while it waits (``KeyboardInterrupt``), the
call task is cancelled before the interrupt propagates.

A channel is an async context manager, which must be entered and exited by one task; so each
``with client.channel(...)`` starts a *holder task* that enters ``client.channel(...)``,
hands the subscription back, and waits until the ``with`` block exits; then it leaves the
channel (shielded and bounded by ``leave_timeout``, as always) and only then does the ``with``
return.

Shutdown, when the client's ``with`` exits: the run's main cancel scope is cancelled, which
cancels holder tasks (they leave their channels) and call tasks (their callers get
``trio.ClosedResourceError``), then ``open_realtime`` closes the connection, ``trio.run``
returns and the thread is joined. The exit therefore blocks for at most about
``leave_timeout + close_timeout``. If the background side failed, its exception is raised by
the next call (as the ``__cause__`` of a ``ClosedResourceError``) and by the ``with`` exit.

Timeouts: Trio's rule is no ``timeout=`` arguments, because async callers compose cancel
scopes. Synchronous callers cannot, so here, as in ``queue.Queue.get``, the one call that waits
for the outside world for an unbounded time, :meth:`BlockingSubscription.receive`, takes a
``timeout`` and raises the builtin ``TimeoutError``. Every other call is bounded by the
protocol timeouts of :class:`~trio_realtime.RealtimeConfig`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import attrs
import trio

from ._client import open_realtime
from ._connection_state import ConnectionState
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from ._client import ClientStatistics, RealtimeClient, TokenSource
    from ._config import OverflowPolicy, RealtimeConfig
    from ._subscription import Subscription, SubscriptionStatistics
    from .protocol import (
        BroadcastConfig,
        ChannelState,
        PostgresChanges,
        PresenceConfig,
        RealtimeEvent,
    )

__all__ = ["BlockingRealtimeClient", "BlockingSubscription", "open_blocking_realtime"]

T = TypeVar("T")


@attrs.define(eq=False)
class _Result(Generic[T]):
    """A call task's outcome, handed from the Trio thread to the calling thread."""

    value: T | None = None
    error: BaseException | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@final
class BlockingSubscription(metaclass=NoPublicConstructor):
    """One joined channel, for synchronous code. Iterate it to receive events.

    Built by :meth:`BlockingRealtimeClient.channel`; there is no public constructor. Every
    method blocks the calling thread and may be called from any thread; it lives exactly as
    long as its ``with`` block (afterwards every method raises ``trio.ClosedResourceError``).
    """

    def __init__(self, portal: _Portal, sub: Subscription) -> None:
        self._portal = portal
        self._sub = sub

    def __repr__(self) -> str:
        return f"<BlockingSubscription {self._sub.topic!r}>"

    @property
    def topic(self) -> str:
        """The channel topic, e.g. ``"realtime:room1"``."""
        return self._sub.topic

    @property
    def status(self) -> ChannelState:
        """The channel's state (JOINED while all is well)."""
        return self._portal.run_sync(lambda: self._sub.status)

    def receive(self, timeout: float | None = None) -> RealtimeEvent:
        """Wait for the next event and return it.

        Args:
            timeout: seconds to wait at most (None: as long as it takes). Synchronous code has
                no cancel scopes, so this call takes a timeout, as ``queue.Queue.get`` does.

        Raises:
            TimeoutError: no event within ``timeout`` (the subscription stays usable).
            trio.EndOfChannel: the subscription ended cleanly.
            SubscriptionClosed: the server closed the channel (after every queued event).
            trio.ClosedResourceError: the subscription's or the client's block has exited.
            trio.BusyResourceError: another thread is already receiving from it.
        """
        return self._portal.run(_receive, self._sub, timeout)

    def receive_nowait(self) -> RealtimeEvent:
        """The next event if one is queued, else raise :class:`trio.WouldBlock`."""
        return self._portal.run_sync(self._sub.receive_nowait)

    def __iter__(self) -> Iterator[RealtimeEvent]:
        """Yield events as they arrive until the subscription ends.

        Ends when the subscription ends cleanly; raises :class:`SubscriptionClosed` if the
        server closed it. Break out of the loop to stop (the channel stays joined until its
        ``with`` block exits).
        """
        while True:
            try:
                yield self.receive()
            except trio.EndOfChannel:
                return

    def send_broadcast(self, event: str, payload: Any = None) -> None:
        """Broadcast ``payload`` as ``event``; see :meth:`Subscription.send_broadcast`.

        Returns once the frame was handed to the socket, or acknowledged by the server when
        the channel was joined with ``BroadcastConfig(ack=True)`` (bounded by ``push_timeout``).
        """
        self._portal.run(self._sub.send_broadcast, event, payload)

    def track(self, meta: dict[str, Any]) -> None:
        """Track this client's presence with ``meta``; see :meth:`Subscription.track`."""
        self._portal.run(self._sub.track, meta)

    def untrack(self) -> None:
        """Stop tracking this client's presence."""
        self._portal.run(self._sub.untrack)

    def presence(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """The current presence state: key -> presences (each with ``presence_ref``)."""
        return self._portal.run_sync(self._sub.presence)

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of the subscription's counters."""
        return self._portal.run_sync(self._sub.statistics)


async def _receive(sub: Subscription, seconds: float | None) -> RealtimeEvent:
    """``sub.receive()`` bounded by ``seconds``, for the sync facade's ``timeout``."""
    if seconds is None:
        return await sub.receive()
    try:
        with trio.fail_after(seconds):
            return await sub.receive()
    except trio.TooSlowError:
        raise TimeoutError(f"no event on {sub.topic!r} within {seconds:g} s") from None


@final
class BlockingRealtimeClient(metaclass=NoPublicConstructor):
    """A realtime client for synchronous code; built by :func:`open_blocking_realtime`.

    Methods block the calling thread and may be called from any thread.
    """

    def __init__(self, portal: _Portal) -> None:
        self._portal = portal

    def __repr__(self) -> str:
        return f"<BlockingRealtimeClient {self._portal.client!r}>"

    @property
    def state(self) -> ConnectionState:
        """The connection state right now (``closed`` once the client's block has exited)."""
        try:
            return self._portal.run_sync(lambda: self._portal.client.state)
        except trio.ClosedResourceError:
            return ConnectionState.CLOSED

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters; see :meth:`RealtimeClient.statistics`."""
        return self._portal.run_sync(self._portal.client.statistics)

    def set_auth(self, token: str | None) -> None:
        """Use ``token`` from now on and push it to every joined channel."""
        self._portal.run(self._portal.client.set_auth, token)

    @contextmanager
    def channel(
        self,
        name: str,
        *,
        broadcast: BroadcastConfig | None = None,
        presence: PresenceConfig | bool | None = None,
        private: bool = False,
        postgres_changes: Sequence[PostgresChanges] = (),
        buffer: int | None = None,
        overflow: OverflowPolicy | None = None,
    ) -> Iterator[BlockingSubscription]:
        """Join channel ``name`` for the duration of the ``with`` block.

        Takes the arguments of :meth:`RealtimeClient.channel`. The block is entered once the
        server accepted the join; its exit returns once the channel was left.

        Raises:
            JoinRejected, JoinTimedOut, LocalProtocolError: as :meth:`RealtimeClient.channel`.
            trio.ClosedResourceError: the client is closed.
        """
        kwargs: dict[str, Any] = {
            "broadcast": broadcast,
            "presence": presence,
            "private": private,
            "postgres_changes": postgres_changes,
            "buffer": buffer,
            "overflow": overflow,
        }
        holder = _Holder()
        sub = self._portal.run(self._portal.open_channel, name, kwargs, holder)
        try:
            yield BlockingSubscription._create(self._portal, sub)
        finally:
            try:
                self._portal.run(holder.close)
            except trio.ClosedResourceError:
                pass  # the client is gone, and the channel with it


@attrs.define(eq=False)
class _Holder:
    """Keeps one ``client.channel(...)`` block open in the Trio thread."""

    release: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)

    async def close(self) -> None:
        """Let the holder task leave the channel, and wait until it has."""
        self.release.set()
        with trio.CancelScope(shield=True):  # the leave itself is bounded by leave_timeout
            await self.done.wait()


@final
class _Portal:
    """The background thread running the Trio client, and the way calls cross into it."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        access_token: TokenSource,
        config: RealtimeConfig | None,
    ) -> None:
        self._open_args = (url, api_key, access_token, config)
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_requested = False
        self._ready = threading.Event()
        self._main_scope = trio.CancelScope()
        self._accepting = False
        self._client: RealtimeClient | None = None
        self._nursery: trio.Nursery | None = None
        #: What ended the run, if it was not our own stop (set before the thread ends).
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="trio_realtime-blocking", daemon=False)

    @property
    def client(self) -> RealtimeClient:
        assert self._client is not None
        return self._client

    # -- the Trio thread ---------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
            if self._stop_requested:
                self._main_scope.cancel()
        url, api_key, access_token, config = self._open_args
        with self._main_scope:
            async with (
                open_realtime(url, api_key=api_key, access_token=access_token, config=config) as client,
                trio.open_nursery() as nursery,
            ):
                self._client = client
                self._nursery = nursery
                self._accepting = True
                self._ready.set()
                try:
                    await trio.sleep_forever()
                finally:
                    self._accepting = False

    async def _call_task(
        self, afn: Callable[..., Awaitable[T]], args: tuple[Any, ...], scope: trio.CancelScope, out: _Box[T]
    ) -> None:
        result: _Result[T] = _Result(
            error=trio.ClosedResourceError("the blocking realtime client was closed while this call ran")
        )
        try:
            with scope:
                try:
                    result = _Result(value=await afn(*args))
                except trio.Cancelled:
                    raise
                except BaseException as exc:  # every outcome goes back to the calling thread
                    result = _Result(error=exc)
        finally:
            out.put(result)

    async def open_channel(self, name: str, kwargs: dict[str, Any], holder: _Holder) -> Subscription:
        """Start a holder task for ``name``; return its subscription once joined."""
        assert self._nursery is not None
        sub: Subscription = await self._nursery.start(self._hold_channel, name, kwargs, holder)
        return sub

    async def _hold_channel(
        self,
        name: str,
        kwargs: dict[str, Any],
        holder: _Holder,
        *,
        task_status: trio.TaskStatus[Subscription] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with self.client.channel(name, **kwargs) as sub:
                task_status.started(sub)
                await holder.release.wait()
        finally:
            holder.done.set()

    # -- the calling threads -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and wait until the client is connected (or failed to)."""
        self._thread.start()
        try:
            self._ready.wait()
        except BaseException:
            self.stop()
            raise
        if self._client is None or not self._accepting:
            self._thread.join()
            assert self.error is not None
            raise self.error

    def stop(self) -> None:
        """Stop the client and join the thread (it leaves channels and closes the connection)."""
        with self._lock:
            self._stop_requested = True
            token = self._token
        if token is not None:
            try:
                trio.from_thread.run_sync(self._main_scope.cancel, trio_token=token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def _closed_error(self) -> trio.ClosedResourceError:
        error = trio.ClosedResourceError(
            "the blocking realtime client is closed"
            + ("" if self.error is None else f": its background thread failed with {self.error!r}")
        )
        error.__cause__ = self.error
        return error

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` as a task of the client's nursery; block for its result."""
        out: _Box[T] = _Box()
        scope = trio.CancelScope()

        def submit() -> None:
            if not self._accepting or self._nursery is None:
                out.put(_Result(error=self._closed_error()))
            else:
                self._nursery.start_soon(self._call_task, afn, args, scope, out)

        self._submit(submit)
        try:
            result = out.get()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): cancel the call and wait until it
            # has ended (promptly, and it always reports), so that nothing of it is left
            # running (a receive would still hold its subscription); then propagate.
            with contextlib.suppress(trio.ClosedResourceError):
                self._submit(scope.cancel)
                out.get()
            raise
        return result.unwrap()

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the Trio thread (to read state safely); block for its result."""
        out: _Box[T] = _Box()

        def call() -> None:
            if self._client is None:
                out.put(_Result(error=self._closed_error()))
                return
            try:
                out.put(_Result(value=fn()))
            except BaseException as exc:  # handed to the calling thread
                out.put(_Result(error=exc))

        self._submit(call)
        return out.get().unwrap()

    def _submit(self, fn: Callable[[], None]) -> None:
        token = self._token
        if token is None:
            raise self._closed_error()
        try:
            trio.from_thread.run_sync(fn, trio_token=token)
        except trio.RunFinishedError:
            raise self._closed_error() from None


@final
class _Box(Generic[T]):
    """A one-shot result slot the calling thread blocks on."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Result[T]] = queue.SimpleQueue()

    def put(self, result: _Result[T]) -> None:
        self._queue.put(result)

    def get(self) -> _Result[T]:
        return self._queue.get()


@contextmanager
def open_blocking_realtime(
    url: str,
    *,
    api_key: str | None = None,
    access_token: TokenSource = None,
    config: RealtimeConfig | None = None,
) -> Iterator[BlockingRealtimeClient]:
    """Run a realtime client in a background thread for the duration of the ``with`` block.

    For synchronous code: channels are ``with`` blocks, receiving is iteration, sending is a
    plain call. The arguments are those of :func:`~trio_realtime.open_realtime` (an async
    ``access_token`` callable runs in the background thread). The block is entered once the
    client is connected; on exit every channel is left, the connection is closed and the
    thread is joined, so nothing is left running::

        with open_blocking_realtime(url, api_key=key) as client:
            with client.channel("room:lobby") as room:
                room.send_broadcast("hello", {"from": "a script"})
                for event in room:
                    print(event)

    Raises:
        HandshakeFailed: the first connection could not be made.
        Any exception that ended the background side (after the block's own exception, if
        any, which takes precedence).
    """
    portal = _Portal(url, api_key, access_token, config)
    portal.start()
    try:
        yield BlockingRealtimeClient._create(portal)
    finally:
        portal.stop()
    if portal.error is not None:
        raise portal.error
