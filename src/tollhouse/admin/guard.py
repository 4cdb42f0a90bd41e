"""Failed-authentication accounting and throttling, for the proxy and the admin API.

Every failed authentication is counted by surface and reason. An address with
``max_auth_failures`` failures inside ``failure_window`` seconds is refused
(429, ``too_many_auth_failures``, ``Retry-After``) for ``cooloff`` seconds,
whatever key it sends: key guessing gets slow and visible. State is per
process (each replica throttles on its own), bounded in memory.

The proxy's ``Authenticator`` only sees headers, so the app puts the client's
address in a context variable (``client_address``) before dispatching a proxied
request; ``GuardedAuthenticator`` reads it there.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar

from prometheus_client import Counter

from tollhouse.admin.settings import AdminSettings
from tollhouse.errors import Rejected, Unauthorized
from tollhouse.identity.auth import Authenticator, Directory
from tollhouse.identity.principal import Principal

client_address: ContextVar[str | None] = ContextVar("tollhouse_client_address", default=None)
MAX_ADDRESSES = 100_000  # memory bound against floods from many addresses
REASONS = {"missing_api_key": "missing", "invalid_api_key": "invalid",
           "blocked_api_key": "blocked", "expired_api_key": "expired"}  # fmt: skip


class AuthGuard:
    def __init__(
        self,
        settings: AdminSettings,
        failures: Counter,
        throttled: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = settings.max_auth_failures
        self._window = settings.failure_window
        self._cooloff = settings.cooloff
        self._failures_metric = failures
        self._throttled_metric = throttled
        self._clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}

    def retry_after(self, address: str | None) -> float | None:
        """Seconds until ``address`` may try again, or ``None`` when it is not throttled."""
        if address is None or not self._blocked:
            return None
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._blocked[address]
            return None
        return left

    def refuse(self, surface: str, retry_after: float) -> Rejected:
        """The 429 for a throttled address, counted."""
        self._throttled_metric.labels(surface).inc()
        err = Rejected(
            "Too many failed authentication attempts from this address; try again later.",
            reason="auth_throttled", scope="none", retry_after=retry_after,
        )  # fmt: skip
        err.code = "too_many_auth_failures"
        return err

    def failed(self, surface: str, reason: str, address: str | None) -> None:
        """Count one failure; throttle ``address`` once it has too many in the window."""
        self._failures_metric.labels(surface, reason).inc()
        if address is None:
            return
        now = self._clock()
        recent = self._recent.get(address)
        if recent is None:
            if len(self._recent) >= MAX_ADDRESSES:
                self._recent.clear()
            recent = self._recent[address] = deque()
        recent.append(now)
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        if len(recent) >= self._max:
            if len(self._blocked) >= MAX_ADDRESSES:
                self._blocked.clear()
            self._blocked[address] = now + self._cooloff
            recent.clear()


class GuardedAuthenticator(Authenticator):
    """The proxy's authenticator, counting failures and refusing throttled addresses."""

    def __init__(
        self,
        guard: AuthGuard,
        directory: Directory,
        *,
        required: bool,
        cache_ttl: float,
        stale_if_error: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            directory, required=required, cache_ttl=cache_ttl, stale_if_error=stale_if_error,
            wall=wall,
        )  # fmt: skip
        self.guard = guard

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        address = client_address.get()
        wait = self.guard.retry_after(address)
        if wait is not None:
            raise self.guard.refuse("proxy", wait)
        try:
            return await super().authenticate(headers)
        except Unauthorized as err:
            self.guard.failed("proxy", REASONS.get(err.code, "invalid"), address)
            raise


class TokenBuckets:
    """The admin API's own rate limit: one token bucket per client address."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def take(self, address: str) -> float | None:
        """Spend one token; ``None`` if allowed, else seconds until a token is back."""
        now = self._clock()
        tokens, at = self._buckets.get(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / self._rate
        if len(self._buckets) >= MAX_ADDRESSES and address not in self._buckets:
            self._buckets.clear()
        self._buckets[address] = (tokens - 1.0, now)
        return None
