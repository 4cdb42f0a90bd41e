"""Retries and fallbacks: run one client request across deployments and model groups.

The executor never speaks HTTP: the proxy hands it ``call(deployment)``,
which performs one upstream attempt and raises ``UpstreamError`` if that
attempt failed *before anything reached the client* (a stream that already
relayed a chunk ends inside ``call`` and is never retried). Within a group,
retryable failures are retried (exponential backoff with full jitter, an
upstream ``Retry-After`` honoured up to a cap), moving down the strategy's
order; when the group gives up, its fallbacks for that error class are tried
in order. ``Hooks`` lets the proxy reserve limits per attempt and record each
attempt for the UsageEvent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from tollhouse.config.schema import RetryConfig
from tollhouse.errors import ErrorType, GatewayError, Rejected, UpstreamError
from tollhouse.routing.router import Deployment, ModelGroup, Router, retried

Call = Callable[[Deployment], Awaitable[None]]


class Hooks(Protocol):
    async def before(self, dep: Deployment) -> None:
        """Reserve this attempt's deployment-level limits; raise ``Rejected`` to skip it."""
        ...

    def after(
        self, dep: Deployment, error: UpstreamError | None, duration: float, retried: bool
    ) -> None:
        """Record one finished attempt (``retried``: another attempt follows in the group)."""
        ...

    def may_use(self, model: str) -> bool:
        """Whether the caller may be served by the model group ``model`` (its key's list)."""
        ...

    def fell_back(self, origin: str, target: str) -> None: ...


def backoff(
    attempt: int, policy: RetryConfig, retry_after: float | None, rng: random.Random
) -> float:
    """Full-jitter exponential backoff, but never sooner than the upstream asked (capped)."""
    ceiling = min(policy.max_backoff, policy.backoff * 2.0 ** (attempt - 1))
    delay = ceiling * rng.random()
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


class Executor:
    def __init__(
        self,
        router: Router,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._router = router
        self._rng = rng or random.Random()
        self._sleep = sleep

    async def run(self, group: ModelGroup, call: Call, hooks: Hooks) -> None:
        """Serve the request or raise the last error (an ``UpstreamError`` or a ``Rejected``)."""
        visited = [group.name]
        current: ModelGroup | None = group
        last: UpstreamError | GatewayError | None = None
        while current is not None:
            last = await self._group(current, call, hooks)
            if last is None:
                return
            current = self._fallback(current, last, visited, hooks)
        assert last is not None
        raise last

    def _fallback(
        self, group: ModelGroup, err: Exception, visited: list[str], hooks: Hooks
    ) -> ModelGroup | None:
        if not isinstance(err, UpstreamError):
            return None
        for name in group.fallbacks_for(err.error_type.value):
            # A model the caller's key may not use is no way round a failure either.
            if name not in visited and hooks.may_use(name):
                visited.append(name)
                hooks.fell_back(group.name, name)
                return self._router.resolve(name)
        return None

    async def _group(
        self, group: ModelGroup, call: Call, hooks: Hooks
    ) -> UpstreamError | GatewayError | None:
        policy = group.config.retries
        order = group.order(self._rng)
        retries = skipped = index = 0
        while True:
            if index >= len(order):
                order, index = group.order(self._rng), 0
            dep = order[index]
            index += 1
            try:
                await hooks.before(dep)
            except Rejected as refused:  # this backend is out of budget or rate: skip it
                # Cool it down only when its backend's (or provider's) limit is spent: not
                # for a request too big on its own, nor for the caller's key + model limit
                # (checked here when a fallback reaches another model).
                if not refused.too_big and refused.scope in ("backend", "provider"):
                    dep.health.over_limit(refused.retry_after_seconds or 60.0)
                skipped += 1
                if skipped >= len(group.deployments):
                    return refused
                continue
            err = await self._attempt(dep, call)
            retry = (
                err is not None
                and retried(err.error_type.value, policy.when)
                and retries < policy.attempts
            )
            hooks.after(dep, err, dep.health.last_duration, retry)
            if err is None or not retry:
                return err
            retries += 1
            if index >= len(order):
                order, index = group.order(self._rng), 0
            # The upstream's Retry-After speaks for that deployment only: moving on to
            # another one needs just the jittered backoff.
            wait_for = err.retry_after if order[index] is dep else None
            await self._sleep(backoff(retries, policy, wait_for, self._rng))

    async def _attempt(self, dep: Deployment, call: Call) -> UpstreamError | None:
        health = dep.health
        health.in_flight += 1
        started = time.perf_counter()
        try:
            await call(dep)
        except UpstreamError as err:
            health.last_duration = time.perf_counter() - started
            health.failed(err.error_type is ErrorType.RATE_LIMIT, err.retry_after)
            return err
        finally:
            health.in_flight -= 1
        health.last_duration = time.perf_counter() - started
        health.succeeded(health.last_duration)
        return None
