"""The review API's rate limit: so many requests per principal per minute (a moving window),
CONCORD_RATE_LIMIT_PER_MINUTE, counted in this process's memory (`limits`' MemoryStorage).

Per principal, not per address: hospital users often share a proxy's address, and a token is
what the API knows the caller by. Requests refused before a principal is known (no token, a bad
one) are not counted here. Each API process counts on its own: with N replicas behind a load
balancer a principal may make up to N times the limit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from concord.config import ReviewSettings
from concord.review.access import Principal


class PrincipalRateLimit:
    """`hit(principal)`: None while under the limit, else the seconds until a request would be
    allowed again (for Retry-After)."""

    def __init__(
        self,
        per_minute: int,
        *,
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_minute < 1:
            raise ValueError("the rate limit must allow at least one request a minute")
        self.item = RateLimitItemPerMinute(per_minute)
        self.storage = storage if storage is not None else MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: ReviewSettings) -> PrincipalRateLimit:
        return cls(settings.rate_limit_per_minute)

    @staticmethod
    def identifier(principal: Principal) -> str:
        """The storage key of a principal: a digest of issuer and subject (limits joins
        identifiers with '/', which issuer URLs and subjects may contain)."""
        return hashlib.sha256(f"{principal.issuer}\0{principal.subject}".encode()).hexdigest()

    def hit(self, principal: Principal) -> float | None:
        key = self.identifier(principal)
        if self._limiter.hit(self.item, key):
            return None
        reset_at = self._limiter.get_window_stats(self.item, key).reset_time
        # Never 0: a caller told to wait 0 s would come straight back.
        return max(reset_at - self._clock(), 0.001)

    def remaining(self, principal: Principal) -> int:
        """Requests left in the current window (for a RateLimit-Remaining header, say)."""
        return int(self._limiter.get_window_stats(self.item, self.identifier(principal)).remaining)
