"""Heartbeat bookkeeping as pure functions of ``now``.

Theory of operation
-------------------
A heartbeat (``phoenix``/``heartbeat`` with a fresh ref) goes out every ``interval`` seconds
after the connection opened: at ``t0 + interval``, ``t0 + 2*interval``, ... The reply must
arrive within ``timeout`` seconds of the send; if it has not by then, the connection is dead
(a half-open TCP link looks exactly like this) and must be closed and replaced.

The driver needs one timer: :meth:`HeartbeatTimer.deadline` is the next instant at which
:meth:`HeartbeatTimer.poll` can have something to say. With the default
``timeout == interval`` both coincide: at each tick, either the previous heartbeat was answered
(send the next) or it was not (the link is dead) — the same rule realtime-js applies.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs

__all__ = ["HeartbeatTimer"]


@attrs.define(eq=False)
class HeartbeatTimer:
    """Heartbeat state of one connection. All times are the caller's clock, in seconds."""

    interval: float
    timeout: float
    pending_ref: str | None = None
    sent_at: float | None = None
    next_send: float = math.inf
    last_rtt: float | None = None

    def start(self, now: float) -> None:
        """The connection opened at ``now``; the first heartbeat is due one interval later."""
        self.pending_ref = None
        self.sent_at = None
        self.next_send = now + self.interval

    def stop(self) -> None:
        """No connection: nothing is due."""
        self.pending_ref = None
        self.sent_at = None
        self.next_send = math.inf

    def deadline(self) -> float:
        """The next instant at which :meth:`poll` may return something other than None."""
        if self.pending_ref is not None and self.sent_at is not None:
            return self.sent_at + self.timeout
        return self.next_send

    def poll(self, now: float) -> Literal["send", "dead"] | None:
        """What to do at ``now``: send a heartbeat, declare the link dead, or nothing."""
        if self.pending_ref is not None and self.sent_at is not None:
            if now >= self.sent_at + self.timeout:
                return "dead"
            return None
        if now >= self.next_send:
            return "send"
        return None

    def sent(self, ref: str, now: float) -> None:
        """A heartbeat with ``ref`` went out at ``now``."""
        self.pending_ref = ref
        self.sent_at = now
        self.next_send = now + self.interval

    def acked(self, ref: str | None, now: float) -> float | None:
        """A ``phoenix`` reply with ``ref`` arrived; returns the round trip if it was ours."""
        if ref is None or ref != self.pending_ref or self.sent_at is None:
            return None
        rtt = now - self.sent_at
        self.last_rtt = rtt
        self.pending_ref = None
        return rtt
