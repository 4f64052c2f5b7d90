"""Debounced broadcasts: ``open_debounced_sender`` for cursors, typing indicators and the like.

Theory of operation
-------------------
High-frequency sources (a mouse, a keyboard) produce far more values than anyone needs to
see; only the latest one matters. :func:`open_debounced_sender` puts one task, the *sender*,
between the app and a subscription's ``send_broadcast``. The app calls the synchronous,
non-blocking :meth:`DebouncedSender.send` as often as it likes; the sender task enforces the
rate.

The sender alternates between two phases:

* **Idle, window open.** Nothing was sent in the last ``interval``. The next ``send()`` claims
  the *leading* slot and the sender puts it on the wire at once (at the same instant of the
  Trio clock). A leading value is never coalesced, so the first value of a burst is the one
  that goes out first, even if more follow before the sender task runs.
* **Rate-limited.** After each send completes, the sender waits ``interval``. Values sent
  meanwhile land in the *trailing* slot, each replacing the previous one (counted in
  ``coalesced``). At the end of the interval the trailing value, if any, is sent and another
  interval starts; if there is none the window opens again.

The interval is measured from the moment ``send_broadcast`` *returned* (the frame was handed to
the socket, or acknowledged when the channel uses ``ack``), so two frames never reach the wire
closer than ``interval`` apart, whatever the socket or the server's ack did in between.

Exit policy: on a clean exit with ``on_exit="flush"`` (the default) a pending trailing value is
sent when the rate allows it (the block's exit waits at most one interval for it); with
``on_exit="drop"`` it is discarded and counted in ``dropped``. A send already in progress,
and a leading value (due at once, so already on its way), are always allowed to finish. If
the block exits with an exception or is cancelled, pending values are dropped (counted) and
the sender is cancelled with the block.

Errors: the sender task lives in the context manager's own nursery, so an error from
``send_broadcast`` ends the block with that error (e.g. ``SubscriptionClosed``,
``PushRejected``) instead of vanishing. The one exception is :class:`ConnectionLost` — the
connection died while a value was on its way and the client is already reconnecting; the
next value supersedes the lost one, so it is counted in ``failed`` and the sender carries on.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol, final

import attrs
import trio

from ._errors import ConnectionLost, LocalProtocolError
from ._groups import collapse
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["BroadcastTarget", "DebouncedSender", "DebouncedSenderStatistics", "open_debounced_sender"]

#: What :func:`open_debounced_sender` does with a pending value when its block exits cleanly.
ExitPolicy = Literal["flush", "drop"]


class BroadcastTarget(Protocol):
    """Anything with ``send_broadcast(event, payload)``: a :class:`~trio_realtime.Subscription`,
    an :class:`~trio_realtime.EntityChannel`, or your own wrapper."""

    async def send_broadcast(self, event: str, payload: Any = None) -> None: ...  # pragma: no cover


@attrs.frozen(kw_only=True)
class DebouncedSenderStatistics:
    """A snapshot of a :class:`DebouncedSender`.

    Attributes:
        sent: values handed to ``send_broadcast`` that returned normally.
        coalesced: values replaced by a later one before they could be sent.
        dropped: values discarded when the block exited (``on_exit="drop"``, or an exception).
        failed: values whose send raised :class:`ConnectionLost` (delivery unknown).
        pending: whether a value is waiting to be sent right now.
    """

    sent: int
    coalesced: int
    dropped: int
    failed: int
    pending: bool


@attrs.define(eq=False)
class _Box:
    """A value in a slot (so that ``None`` is a value like any other)."""

    value: Any


@final
class DebouncedSender(metaclass=NoPublicConstructor):
    """Sends the latest of many values, at most once per ``interval``.

    Built by :func:`open_debounced_sender`; there is no public constructor. See the module
    documentation of ``trio_realtime._debounce`` for the exact rules.
    """

    def __init__(self, target: BroadcastTarget, event: str, interval: float) -> None:
        self._target = target
        self._event = event
        self._interval = interval
        self._leading: _Box | None = None
        self._trailing: _Box | None = None
        # Open from the start: the first send() goes out at once, even before the task runs.
        self._window_open = True
        self._closed = False
        self._closing = False
        self._kick = trio.Event()
        self._sent = 0
        self._coalesced = 0
        self._dropped = 0
        self._failed = 0

    def __repr__(self) -> str:
        return f"<DebouncedSender {self._event!r} every {self._interval:g} s>"

    @property
    def event(self) -> str:
        """The broadcast event name every value is sent as."""
        return self._event

    @property
    def interval(self) -> float:
        """The minimum number of seconds between two sends."""
        return self._interval

    def send(self, payload: Any = None) -> None:
        """Queue ``payload`` for sending; it replaces any value not sent yet.

        Not a checkpoint and never blocks: if nothing was sent in the last ``interval`` the
        value goes out at once (as soon as the sender task runs, at the same clock time);
        otherwise it is sent at the end of the current interval unless a later ``send``
        replaces it first.

        Raises:
            trio.ClosedResourceError: the sender's block has exited (or is exiting).
        """
        if self._closed:
            raise trio.ClosedResourceError(
                f"debounced sender for {self._event!r} is closed (its block has exited)"
            )
        if self._window_open:
            self._window_open = False
            self._leading = _Box(payload)
        else:
            if self._trailing is not None:
                self._coalesced += 1
            self._trailing = _Box(payload)
        self._wake()

    def statistics(self) -> DebouncedSenderStatistics:
        """Counters: values sent, coalesced, dropped and failed; whether one is pending."""
        return DebouncedSenderStatistics(
            sent=self._sent,
            coalesced=self._coalesced,
            dropped=self._dropped,
            failed=self._failed,
            pending=self._leading is not None or self._trailing is not None,
        )

    # -- internals -------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._kick.set()
        self._kick = trio.Event()

    async def _wait(self, deadline: float = math.inf) -> None:
        """Wait for a ``send()``/close, or until ``deadline``."""
        with trio.move_on_at(deadline):
            await self._kick.wait()

    def _close(self, *, flush: bool) -> None:
        """Stop accepting values; drop the trailing one unless ``flush``. Not a checkpoint.

        A leading value is already on its way (it was due at once), so a clean exit sends it
        whatever the policy; only the exception path (:meth:`_cancelled`) drops it too.
        """
        self._closed = True
        self._closing = True
        self._window_open = False
        if not flush and self._trailing is not None:
            self._trailing = None
            self._dropped += 1
        self._wake()

    def _cancelled(self) -> None:
        """The block exited with an exception: drop everything pending. Not a checkpoint."""
        self._close(flush=False)
        if self._leading is not None:
            self._leading = None
            self._dropped += 1

    async def _send(self, box: _Box) -> None:
        try:
            await self._target.send_broadcast(self._event, box.value)
        except ConnectionLost:
            self._failed += 1
        else:
            self._sent += 1

    async def _run(self) -> None:
        """The sender task: see the module's theory of operation."""
        try:
            await self._loop()
        finally:
            # Cancelled from outside (e.g. during a flush) or failed: what was pending is
            # dropped. (send() keeps accepting until the block exits: if the task failed, the
            # block is being cancelled and will raise the task's error, not a misleading one.)
            for slot in ("_leading", "_trailing"):
                if getattr(self, slot) is not None:
                    setattr(self, slot, None)
                    self._dropped += 1

    async def _loop(self) -> None:
        while True:
            # Idle: the window is open until a send() claims the leading slot.
            self._window_open = not self._closed
            while self._leading is None:
                if self._closing:
                    return
                await self._wait()
            box, self._leading = self._leading, None
            self._window_open = False
            await self._send(box)
            # Rate-limited: at most one trailing value per interval.
            while True:
                deadline = trio.current_time() + self._interval
                while trio.current_time() < deadline and not (self._closing and self._trailing is None):
                    if self._closing:
                        await trio.sleep_until(deadline)  # flushing: the rate still holds
                    else:
                        await self._wait(deadline)
                if self._trailing is None:
                    if self._closing:
                        return
                    break
                box, self._trailing = self._trailing, None
                await self._send(box)


@asynccontextmanager
async def open_debounced_sender(
    target: BroadcastTarget,
    event: str,
    *,
    interval: float,
    on_exit: ExitPolicy = "flush",
) -> AsyncIterator[DebouncedSender]:
    """Broadcast the latest of many values as ``event``, at most once per ``interval``.

    The first value after a quiet period goes out at once; values sent within ``interval`` of
    the previous send are coalesced, the last one winning, and go out at the end of the
    interval. The sender task lives in this block's nursery: leaving the block stops it, and
    an error it cannot handle ends the block (see the module documentation)::

        async with client.channel("doc:1") as doc, open_debounced_sender(
            doc, "cursor", interval=0.05
        ) as cursor:
            async for x, y in mouse_moves():
                cursor.send({"x": x, "y": y})

    Args:
        target: where to send: a :class:`~trio_realtime.Subscription` or anything with an
            async ``send_broadcast(event, payload)``.
        event: the broadcast event name.
        interval: the minimum number of seconds between two sends (> 0).
        on_exit: on a clean exit, ``"flush"`` (default) sends a pending value when the rate
            allows it (the exit waits up to one interval); ``"drop"`` discards it. On an
            exception or cancellation the pending value is always dropped.

    Raises:
        LocalProtocolError: ``interval`` is not positive or ``on_exit`` is unknown.
        Whatever ``send_broadcast`` raises, except :class:`ConnectionLost` (counted in
        ``statistics().failed``): e.g. ``SubscriptionClosed`` or ``PushRejected``.
    """
    if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
        raise LocalProtocolError(f"interval must be a positive number of seconds, got {interval!r}")
    if on_exit not in ("flush", "drop"):
        raise LocalProtocolError(f"on_exit must be 'flush' or 'drop', got {on_exit!r}")
    sender = DebouncedSender._create(target, event, float(interval))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender._run)
            try:
                yield sender
            except BaseException:
                sender._cancelled()
                nursery.cancel_scope.cancel()
                raise
            else:
                sender._close(flush=on_exit == "flush")
    except BaseExceptionGroup as group:
        raise collapse(group, "the debounced sender") from None

