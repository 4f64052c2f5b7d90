"""Reconnect backoff as a pure schedule.

Theory of operation
-------------------
After the ``attempt``-th consecutive failure (0-based) the client waits
``min(cap, base * factor**attempt)`` seconds, or with full jitter a uniform draw from
``[0, that)``. Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads a
crowd of clients that lost the same server over the whole window, so they do not come back in
lock-step. The random source is injected (anything with ``random() -> float``) so tests and
benchmarks are reproducible; this module never touches the global RNG.
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs

from .._errors import LocalProtocolError

__all__ = ["BackoffPolicy", "RandomSource"]


class RandomSource(Protocol):
    """What the backoff needs from an RNG (``random.Random`` fits)."""

    def random(self) -> float: ...


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise LocalProtocolError(
            f"BackoffPolicy.{attribute.name} must be a finite number >= 0, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class BackoffPolicy:
    """Full-jitter exponential backoff.

    Attributes:
        base: the ceiling of the first delay, in seconds.
        factor: growth of the ceiling per attempt.
        cap: the largest ceiling.
        jitter: draw uniformly below the ceiling (True) or wait exactly the ceiling (False).
        max_attempts: give up after this many consecutive failures (None: never).
    """

    base: float = attrs.field(default=1.0, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    cap: float = attrs.field(default=30.0, validator=_positive)
    jitter: bool = True
    max_attempts: int | None = attrs.field(default=None)

    @max_attempts.validator
    def _check_max_attempts(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value < 0:
            raise LocalProtocolError(f"BackoffPolicy.max_attempts must be None or >= 0, got {value!r}")

    def ceiling(self, attempt: int) -> float:
        """The delay without jitter after failure number ``attempt`` (0-based)."""
        if attempt < 0:
            raise LocalProtocolError(f"attempt must be >= 0, got {attempt}")
        try:
            value = self.base * self.factor**attempt
        except OverflowError:
            return self.cap if self.base > 0 else 0.0  # 0 * (huge) is 0, not the cap
        return min(self.cap, value)

    def delay(self, attempt: int, rng: RandomSource) -> float:
        """Seconds to wait after failure number ``attempt`` (0-based)."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        return ceiling * rng.random()

    def exhausted(self, attempts: int) -> bool:
        """True if ``attempts`` consecutive failures mean: stop trying."""
        return self.max_attempts is not None and attempts >= self.max_attempts
