"""The token-bucket limiter guarding /login, /register and token-less password UIA."""

from __future__ import annotations

import pytest

from homeserver.clock import Clock
from homeserver.errors import MatrixError
from homeserver.handlers.registration import RateLimiter


class FakeClock(Clock):
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, rate=0.5, burst=2)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(MatrixError) as info:
        limiter.check("a")
    assert (info.value.status, info.value.errcode) == (429, "M_LIMIT_EXCEEDED")
    assert info.value.extra["retry_after_ms"] == 2001
    # Other keys have their own bucket.
    limiter.check("b")
    clock.now += 2.0
    limiter.check("a")
    with pytest.raises(MatrixError):
        limiter.check("a")


def test_disabled_and_bounded() -> None:
    clock = FakeClock()
    off = RateLimiter(clock, rate=0.1, burst=1, enabled=False)
    for _ in range(10):
        off.check("a")
    limiter = RateLimiter(clock, rate=0.1, burst=1, max_keys=3)
    for key in "abcdef":
        limiter.check(key)
    assert len(limiter._buckets) == 3
    # "a" was evicted, so it starts with a full bucket again.
    limiter.check("a")
