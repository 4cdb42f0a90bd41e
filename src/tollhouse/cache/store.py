"""Where answers are kept: process memory (the default) or Redis (shared by replicas).

Both backends honour one contract, ``ResponseCache``, and one test suite runs
against both. An entry lives for the ``ttl`` it was put with; a ``ttl`` of zero
or less stores nothing.

A cache is an optimisation, never a dependency: ``RedisCache`` turns every
Redis failure (down, slow, a value it cannot read) into a miss or a skipped
write, counts it in ``errors`` and warns at most once a minute, so an outage
costs upstream calls, not failed requests or a flood of log lines.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tollhouse.cache.answer import CachedAnswer, decode, encode

log = logging.getLogger("tollhouse.cache")

WARN_EVERY = 60.0
"""Seconds between two warnings about a failing Redis (every failure is still counted)."""


class ResponseCache(Protocol):
    """Answers by cache key, each kept for the ttl it was put with."""

    async def get(self, key: str) -> CachedAnswer | None:
        """The live answer stored under ``key``, or ``None``."""
        ...

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        """Store ``answer`` under ``key`` for ``ttl`` seconds, replacing any previous one."""
        ...

    async def aclose(self) -> None:
        """Release connections; the cache is not used afterwards."""
        ...


class MemoryCache:
    """A least-recently-used cache in process memory, bounded by entries (and bytes).

    Expired entries are dropped when read or when eviction reaches them, so the
    bound, not the ttl, is what limits memory. ``max_bytes`` (optional) bounds
    the sum of stored bodies, since a few long answers can outweigh many short
    ones; an answer larger than it on its own is not stored.
    """

    def __init__(
        self,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The total size of the stored bodies."""
        return self._bytes

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        size = len(answer.body)
        if ttl <= 0 or (self._max_bytes is not None and size > self._max_bytes):
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl, answer)
        self._bytes += size
        while len(self._entries) > self._max_entries or (
            self._max_bytes is not None and self._bytes > self._max_bytes
        ):
            self._drop(next(iter(self._entries)))  # the least recently used

    def _drop(self, key: str) -> None:
        _, answer = self._entries.pop(key)
        self._bytes -= len(answer.body)

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0


class RedisCache:
    """Answers in Redis under ``prefix + key``, expiring by Redis's own ``PX`` ttl.

    Timeouts are short because every request waits on ``get``: a Redis that
    hangs should cost a fraction of a second, then a miss. One retry, with no
    backoff, lets a pooled connection that died (Redis restarted) reconnect
    without the request noticing.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._prefix = prefix
        self._clock = clock
        self._warned_at: float | None = None
        self.errors = 0
        """Failed operations since start (each one served as a miss or skipped)."""

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = await self._redis.get(self._prefix + key)
            # Without decode_responses, redis-py returns the stored bytes.
            return None if raw is None else decode(cast(bytes, raw))
        except (RedisError, OSError, ValueError) as err:
            self._failed("get", err)
            return None

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        if ttl <= 0:
            return
        try:
            await self._redis.set(self._prefix + key, encode(answer), px=max(1, round(ttl * 1000)))
        except (RedisError, OSError) as err:
            self._failed("put", err)

    def _failed(self, operation: str, err: Exception) -> None:
        self.errors += 1
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        log.warning(
            "cache_redis_failed operation=%s error=%s errors=%d",
            operation,
            type(err).__name__,
            self.errors,
        )

    async def aclose(self) -> None:
        await self._redis.aclose()
