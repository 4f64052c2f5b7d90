"""Tenant rate counters of the reference server (PROTOCOL.md §7.1), sans-IO.

Theory of operation
-------------------
The official server counts events in a ``GenCounter`` and lets a ``RateCounter`` process
read it every *tick* (5 s). Each tick's count is kept for the last ``ticks`` (12) ticks, and
the rate is ``sum(kept counts) / number of kept ticks / tick`` events per second, recomputed
once per tick. The limit is *triggered* when that average reaches the limit and released
when it falls below it. So a burst is noticed at the next tick boundary, and a triggered
limit stays triggered until enough quiet ticks have diluted the average: a server that
exceeded 100 events/s for a minute stays closed for a while afterwards, by design.

:class:`RateCounter` does the same arithmetic without a process: callers pass ``now`` to
:meth:`RateCounter.add` and :meth:`RateCounter.triggered`, and the counter closes every tick
boundary ``now`` has crossed since it was last called (idle ticks count as zero). The first
call starts the first tick. Nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["RateCounter"]


@attrs.define(eq=False)
class RateCounter:
    """Events per second averaged over the last ``ticks`` ticks of ``tick`` seconds.

    Args:
        limit: the average rate (events/s) at which the limit triggers.
        tick: seconds per tick (officially 5).
        ticks: ticks averaged (officially 12, i.e. one minute).
    """

    limit: float
    tick: float = 5.0
    ticks: int = 12
    _closed: deque[int] = attrs.field(init=False)
    _current: int = attrs.field(default=0, init=False)
    _tick_start: float | None = attrs.field(default=None, init=False)
    _average: float = attrs.field(default=0.0, init=False)
    _triggered: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.tick > 0 or self.ticks < 1 or not self.limit > 0:
            raise ValueError(
                f"invalid rate counter: limit={self.limit!r} tick={self.tick!r} ticks={self.ticks!r}"
            )
        self._closed = deque(maxlen=self.ticks)

    def _roll(self, now: float) -> None:
        if self._tick_start is None:
            self._tick_start = now
            return
        elapsed = int((now - self._tick_start) // self.tick)
        if elapsed <= 0:
            return
        self._closed.append(self._current)
        self._current = 0
        for _ in range(min(elapsed - 1, self.ticks)):
            self._closed.append(0)  # ticks that passed without a call
        self._tick_start += elapsed * self.tick
        self._average = sum(self._closed) / len(self._closed) / self.tick
        self._triggered = self._average >= self.limit

    def add(self, now: float, n: int = 1) -> None:
        """Count ``n`` events at ``now``."""
        self._roll(now)
        self._current += n

    def triggered(self, now: float) -> bool:
        """Whether the limit is triggered at ``now`` (as of the last tick boundary)."""
        self._roll(now)
        return self._triggered

    def average(self, now: float) -> float:
        """The rate computed at the last tick boundary, in events per second."""
        self._roll(now)
        return self._average
