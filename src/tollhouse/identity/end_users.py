"""Per-end-user overrides (the request's ``user`` field), looked up with a short cache.

End users are unbounded and arrive in request bodies, so lookups are cached
(misses too) for ``ttl`` seconds and the cache is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tollhouse.store.models import Limits
from tollhouse.store.repos import EndUsers

MAX_CACHED = 50_000


class EndUserDirectory:
    def __init__(
        self, repo: EndUsers, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._repo = repo
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Limits | None]] = {}

    async def limits(self, end_user: str) -> Limits | None:
        now = self._clock()
        cached = self._cache.get(end_user)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self._repo.get(end_user)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        found = row.limits if row is not None else None
        self._cache[end_user] = (now + self._ttl, found)
        return found
