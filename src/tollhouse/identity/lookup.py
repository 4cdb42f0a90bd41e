"""A bounded TTL cache for the store lookups on the request path, that rides out outages.

Keys and end-user overrides live in the store, and every request needs one of them.
Lookups are cached for ``ttl`` seconds (found or not), so the store sees a handful of
queries per caller per minute. When the store cannot be read (a PostgreSQL restart, a
network blip), an entry looked up in the last ``stale_if_error`` seconds keeps its last
answer, so callers already seen ride out the outage; any other lookup raises
``StoreUnreadable`` for the caller to turn into a clear 503. The trade is explicit:
during an outage a change made since an entry's last lookup (a key blocked, a budget
lowered) is not seen for at most that window; ``0`` turns it off.

A store that stops answering (rather than refusing) costs a lookup ``store.timeout``
before it fails. So after a failure the store is left alone for ``RECHECK`` seconds:
lookups meanwhile answer from what is cached, or fail, at once, and only the first
one after the pause waits on the store again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")

log = logging.getLogger("tollhouse")

RECHECK = 1.0  # seconds without trying the store after a failed lookup


class StoreUnreadable(Exception):
    """The store could not answer and no recent answer was at hand."""


class LookupCache(Generic[V]):
    def __init__(
        self,
        what: str,
        *,
        ttl: float,
        stale_if_error: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what  # names the lookup in the outage log lines
        self._ttl = ttl
        self._stale = stale_if_error
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}  # key -> (looked up at, answer)
        self._down = False  # log an outage once, not once per request
        self._retry_at = 0.0  # while the store is down: when to try it again
        self._generation = 0  # bumped by ``clear``: answers loaded before it are not kept

    def clear(self) -> None:
        """Forget every answer (a key, team or user changed). A lookup already under way
        may have read the store before the change; its answer serves its own request
        but is not cached, or the change would be undone for ``ttl`` seconds."""
        self._entries.clear()
        self._generation += 1

    async def get(self, key: str, load: Callable[[str], Awaitable[V]]) -> V:
        now = self._clock()
        cached = self._entries.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        if self._down and now < self._retry_at:
            return self._unreadable(None, cached, now)
        generation = self._generation
        try:
            value = await load(key)
        except Exception as err:  # unreachable, timed out, refused: the store's problem
            return self._unreadable(err, cached, self._clock())
        if self._down:
            self._down = False
            log.warning("store_lookup_recovered lookup=%s", self._what)
        if generation != self._generation:
            return value  # read before a change: do not keep it
        if len(self._entries) >= self._max:
            self._entries.clear()  # bounded memory against floods of made-up keys
        self._entries[key] = (now, value)
        return value

    def _unreadable(self, err: Exception | None, cached: tuple[float, V] | None, now: float) -> V:
        """``err``: what the store just raised; ``None`` when it was not asked (paused)."""
        if err is not None:
            self._retry_at = now + RECHECK
            if not self._down:
                self._down = True
                log.error("store_lookup_failed lookup=%s error=%s", self._what, type(err).__name__)
        if cached is not None and now - cached[0] < self._stale:
            return cached[1]
        raise StoreUnreadable(self._what) from err
