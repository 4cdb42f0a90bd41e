"""Deployment health: who is healthy, degraded or cooled down, from the calls it served.

Each deployment keeps a sliding window of recent call outcomes. It leaves
rotation ("cooled down") for the group's ``period`` when it answers 429 (if
``on_rate_limit``), when more than ``failure_rate`` of at least ``min_calls``
calls in ``window`` failed, or when its backend's budget or rate limit at the
gate is exhausted (until that window resets). It comes back by itself when the
period ends. States, as exported: 0 healthy, 1 degraded (recent failures),
2 cooled down.

Routing never imports metrics: counters here are plain ints read at scrape time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tollhouse.config.schema import CooldownConfig

HEALTHY, DEGRADED, COOLED_DOWN = 0, 1, 2
_EWMA = 0.2  # weight of the newest latency in the moving average


@dataclass
class DeploymentHealth:
    policy: CooldownConfig
    clock: Callable[[], float] = time.monotonic
    calls: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, failed)
    cooled_until: float = 0.0
    latency: float | None = None  # moving average of successful call durations
    in_flight: int = 0
    last_duration: float = 0.0
    exhausted_until: float = 0.0  # upstream said 0 requests/tokens remain
    cooldowns: dict[str, int] = field(default_factory=dict)  # reason -> times cooled down
    last_failure: float = float("-inf")  # when the window's latest failed call ended
    # Failed calls in ``calls``, kept as they come and go: counting them per failure
    # walked the whole window, so an outage at thousands of requests/s (a window of
    # hundreds of thousands of calls) cost milliseconds per failed request.
    failures: int = 0

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window
        while self.calls and self.calls[0][0] < horizon:
            self.failures -= self.calls.popleft()[1]

    probe_ok: bool = True  # the backend's last active health probe succeeded (or none ran)

    def available(self) -> bool:
        now = self.clock()
        return self.probe_ok and now >= self.cooled_until and now >= self.exhausted_until

    def state(self) -> int:
        """Healthy, degraded (a failed call within ``window``) or cooled down.

        A /metrics scrape reads this from a worker thread while the loop records calls,
        so it reads plain attributes only: walking (or trimming) ``calls`` there failed
        scrapes under load with "deque mutated during iteration"."""
        now = self.clock()
        if now < self.cooled_until or not self.probe_ok:
            return COOLED_DOWN
        return DEGRADED if self.last_failure >= now - self.policy.window else HEALTHY

    def cool_down(self, reason: str, seconds: float) -> None:
        self.cooled_until = max(self.cooled_until, self.clock() + seconds)
        self.cooldowns[reason] = self.cooldowns.get(reason, 0) + 1

    def succeeded(self, duration: float) -> None:
        now = self.clock()
        self.calls.append((now, False))
        self._trim(now)
        self.latency = duration if self.latency is None else (
            _EWMA * duration + (1 - _EWMA) * self.latency
        )  # fmt: skip

    def failed(self, rate_limited: bool, retry_after: float | None) -> None:
        now = self.clock()
        self.calls.append((now, True))
        self.failures += 1
        self.last_failure = now
        self._trim(now)
        p = self.policy
        if not p.enabled:
            return
        if rate_limited and p.on_rate_limit:
            self.cool_down("rate_limit", max(p.period, retry_after or 0.0))
            return
        if len(self.calls) >= p.min_calls and self.failures / len(self.calls) > p.failure_rate:
            self.cool_down("failure_rate", p.period)
            self.calls.clear()  # a fresh window after it comes back
            self.failures = 0
            self.last_failure = float("-inf")

    def over_limit(self, seconds: float) -> None:
        """The gateway's own budget or rate limit for this backend is spent until its reset."""
        self.cool_down("budget", seconds)

    def upstream_remaining(self, requests: float | None, tokens: float | None) -> None:
        """The upstream reported its own remaining quota; zero means skip for a moment."""
        if requests == 0 or tokens == 0:
            self.exhausted_until = self.clock() + 1.0
