"""BackoffPolicy: a pure schedule with an injected random source."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings, strategies as st

from trio_realtime.protocol import BackoffPolicy, LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable


class FixedRandom:
    """Returns the given values from ``random()``, in order; fails if asked for more."""

    def __init__(self, values: Iterable[float]) -> None:
        self.values = list(values)
        self.calls = 0

    def random(self) -> float:
        value = self.values[self.calls]
        self.calls += 1
        return value


class NoRandom:
    def random(self) -> float:  # pragma: no cover - must not be called
        raise AssertionError("jitter=False must not draw random numbers")


def test_ceilings_double_then_cap() -> None:
    policy = BackoffPolicy(base=1.0, factor=2.0, cap=30.0)
    assert [policy.ceiling(a) for a in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_defaults() -> None:
    policy = BackoffPolicy()
    assert (policy.base, policy.factor, policy.cap, policy.jitter, policy.max_attempts) == (
        1.0,
        2.0,
        30.0,
        True,
        None,
    )


def test_no_jitter_is_exactly_the_ceiling() -> None:
    policy = BackoffPolicy(base=0.5, factor=3.0, cap=10.0, jitter=False)
    assert [policy.delay(a, NoRandom()) for a in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_jitter_uses_the_injected_rng() -> None:
    policy = BackoffPolicy(base=1.0, factor=2.0, cap=30.0)
    rng = FixedRandom([0.5, 0.25, 0.0, 0.75, 0.5, 0.5])
    assert [policy.delay(a, rng) for a in range(6)] == [0.5, 0.5, 0.0, 6.0, 8.0, 15.0]
    assert rng.calls == 6


def test_jitter_with_seeded_random_is_reproducible_and_in_range() -> None:
    policy = BackoffPolicy(base=1.0, factor=2.0, cap=30.0)
    first = [policy.delay(a, random.Random(1234)) for a in range(50)]
    second = [policy.delay(a, random.Random(1234)) for a in range(50)]
    assert first == second
    rng = random.Random(99)
    delays = [policy.delay(a, rng) for a in range(1000)]
    for attempt, d in enumerate(delays):
        assert 0.0 <= d < policy.ceiling(attempt)
    assert len(set(delays)) > 900  # actually random, not a constant


def test_no_overflow_at_attempt_10000() -> None:
    policy = BackoffPolicy(base=1.0, factor=2.0, cap=30.0)
    assert policy.ceiling(10_000) == 30.0
    assert policy.delay(10_000, FixedRandom([0.5])) == 15.0
    assert BackoffPolicy(base=1, factor=2, cap=30).ceiling(10_000) == 30  # ints too


def test_zero_base_stays_zero_even_when_the_power_overflows() -> None:
    """Regression: ``0 * 2.0**10_000`` overflowed and was answered with the cap."""
    policy = BackoffPolicy(base=0.0, factor=2.0, cap=30.0)
    assert policy.ceiling(0) == 0.0
    assert policy.ceiling(10_000) == 0.0


def test_factor_one_is_constant_and_small_factor_decays() -> None:
    assert [BackoffPolicy(base=3.0, factor=1.0, cap=30.0).ceiling(a) for a in (0, 1, 10_000)] == [3.0] * 3
    assert BackoffPolicy(base=8.0, factor=0.5, cap=30.0).ceiling(3) == 1.0
    assert BackoffPolicy(base=8.0, factor=0.5, cap=30.0).ceiling(10_000) == 0.0


def test_cap_below_base() -> None:
    assert BackoffPolicy(base=5.0, cap=2.0).ceiling(0) == 2.0


def test_max_attempts() -> None:
    policy = BackoffPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in range(5)] == [False, False, False, True, True]
    assert not BackoffPolicy().exhausted(10**9)
    assert BackoffPolicy(max_attempts=0).exhausted(0)


def test_negative_attempt_is_local_error() -> None:
    with pytest.raises(LocalProtocolError, match=r"^attempt must be >= 0, got -1$"):
        BackoffPolicy().ceiling(-1)
    with pytest.raises(LocalProtocolError, match=r"^attempt must be >= 0, got -2$"):
        BackoffPolicy().delay(-2, FixedRandom([0.5]))


@pytest.mark.parametrize("field", ["base", "factor", "cap"])
@pytest.mark.parametrize("value", [-1.0, -0.001, math.inf, -math.inf, math.nan])
def test_invalid_params_are_local_errors(field: str, value: float) -> None:
    with pytest.raises(
        LocalProtocolError, match=rf"^BackoffPolicy\.{field} must be a finite number >= 0, got "
    ):
        BackoffPolicy(**{field: value})  # type: ignore[arg-type]


def test_invalid_max_attempts_is_local_error() -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^BackoffPolicy\.max_attempts must be None or >= 0, got -1$"
    ):
        BackoffPolicy(max_attempts=-1)


def test_policy_is_frozen() -> None:
    import attrs

    policy = BackoffPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.base = 2.0  # type: ignore[misc]


@settings(deadline=None, max_examples=200)
@given(
    base=st.floats(min_value=0, max_value=100),
    factor=st.floats(min_value=0, max_value=10),
    cap=st.floats(min_value=0, max_value=1000),
    attempt=st.integers(min_value=0, max_value=100_000),
    u=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_delay_bounds_property(base: float, factor: float, cap: float, attempt: int, u: float) -> None:
    policy = BackoffPolicy(base=base, factor=factor, cap=cap)
    ceiling = policy.ceiling(attempt)
    assert 0.0 <= ceiling <= cap
    assert math.isfinite(ceiling)
    delay = policy.delay(attempt, FixedRandom([u]))
    assert 0.0 <= delay <= ceiling  # == only through float rounding of ceiling * u
