"""Rate limiting: token buckets per key, and the server's named limiters.

`RateLimiter` keeps one token bucket per key (a user ID, a client address, a
federation origin): `rate` tokens a second, at most `burst`. It is API-compatible
with the limiter the accounts area introduced for /login and /register, so that one
can move here. Time comes from the injected `Clock`, so tests need no sleeps.

Invariants:
* Memory is bounded: each limiter keeps buckets for its `max_keys` most recently
  used keys; a forgotten key starts again with a full bucket, which only ever
  errs on the side of letting a request through.
* A refusal is a `LimitExceeded` (429 `M_LIMIT_EXCEEDED` with `retry_after_ms`);
  the HTTP layer adds the matching `Retry-After` header.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config import RateLimitConfig
from homeserver.errors import Codes, MatrixError

DEFAULT_MAX_KEYS = 10_000


class LimitExceeded(MatrixError):
    """429 M_LIMIT_EXCEEDED, telling the client when to try again."""

    def __init__(self, retry_after_ms: int, message: str = "Too many requests") -> None:
        super().__init__(429, Codes.LIMIT_EXCEEDED, message, retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


def retry_after_seconds(retry_after_ms: int) -> int:
    """The `Retry-After` header value (whole seconds, rounded up, at least 1)."""
    return max(1, math.ceil(retry_after_ms / 1000))


class RateLimiter:
    """Token buckets per key: `rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self,
        clock: Clock,
        rate: float,
        burst: int,
        *,
        enabled: bool = True,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.enabled = enabled and rate > 0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def _retry_after_ms(self, tokens: float, cost: float) -> int:
        return int((cost - tokens) / self.rate * 1000) + 1

    def retry_after_ms(self, key: str, cost: float = 1.0) -> int | None:
        """How long until `key` could spend `cost`, or None if it can now (nothing is taken)."""
        if not self.enabled:
            return None
        tokens = self._tokens(key, self.clock.monotonic())
        return None if tokens >= cost else self._retry_after_ms(tokens, cost)

    def charge(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens from `key` even if that leaves the bucket in debt.

        For work that is only known to count after it happened (e.g. a federation
        request whose signature turned out valid); the debt delays the next request.
        """
        if not self.enabled:
            return
        now = self.clock.monotonic()
        self._store(key, self._tokens(key, now) - cost, now)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens for `key`, or raise `LimitExceeded` (taking nothing)."""
        if not self.enabled:
            return
        now = self.clock.monotonic()
        tokens = self._tokens(key, now)
        if tokens < cost:
            self._store(key, tokens, now)
            raise LimitExceeded(self._retry_after_ms(tokens, cost))
        self._store(key, tokens - cost, now)


@dataclass(slots=True)
class RateLimits:
    """The server's named limiters, built once from `rate_limits` in the config."""

    messages: RateLimiter
    joins: RateLimiter
    invites_sent: RateLimiter
    invites_received: RateLimiter
    media_uploads: RateLimiter
    key_claims: RateLimiter
    to_device: RateLimiter
    typing: RateLimiter
    receipts: RateLimiter
    federation_origin: RateLimiter
    federation_unauthenticated: RateLimiter

    @classmethod
    def from_config(cls, cfg: RateLimitConfig, clock: Clock) -> RateLimits:
        def make(rate: float, burst: int) -> RateLimiter:
            return RateLimiter(clock, rate, burst, enabled=cfg.enabled)

        return cls(
            messages=make(cfg.messages_per_second, cfg.messages_burst),
            joins=make(cfg.joins_per_second, cfg.joins_burst),
            invites_sent=make(cfg.invites_per_second, cfg.invites_burst),
            invites_received=make(cfg.invites_received_per_second, cfg.invites_received_burst),
            media_uploads=make(cfg.media_uploads_per_second, cfg.media_uploads_burst),
            key_claims=make(cfg.key_claims_per_second, cfg.key_claims_burst),
            to_device=make(cfg.to_device_per_second, cfg.to_device_burst),
            typing=make(cfg.typing_per_second, cfg.typing_burst),
            receipts=make(cfg.receipts_per_second, cfg.receipts_burst),
            federation_origin=make(cfg.federation_per_second, cfg.federation_burst),
            federation_unauthenticated=make(
                cfg.federation_unauthenticated_per_second, cfg.federation_unauthenticated_burst
            ),
        )
