"""Per-end-user overrides (the request's ``user`` field), looked up with a short cache.

End users are unbounded and arrive in request bodies, so lookups are cached
(misses too) for ``ttl`` seconds and the cache is bounded. While the store cannot be
read, an end user seen in the last ``stale_if_error`` seconds keeps the overrides
last read; for any other, ``limits`` raises ``LimitsUnavailable`` (a 503): an
override may be a tighter budget, so the gateway does not guess there is none.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tollhouse.errors import LimitsUnavailable
from tollhouse.identity.lookup import LookupCache, StoreUnreadable
from tollhouse.store.models import Limits
from tollhouse.store.repos import EndUsers

MAX_CACHED = 50_000


class EndUserDirectory:
    def __init__(
        self,
        repo: EndUsers,
        ttl: float,
        stale_if_error: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repo
        self._cache: LookupCache[Limits | None] = LookupCache(
            "end_user", ttl=ttl, stale_if_error=stale_if_error, max_entries=MAX_CACHED,
            clock=clock,
        )  # fmt: skip

    def forget(self) -> None:
        """Drop cached overrides (an end user's limits were set or removed)."""
        self._cache.clear()

    async def limits(self, end_user: str) -> Limits | None:
        try:
            return await self._cache.get(end_user, self._load)
        except StoreUnreadable as err:
            raise LimitsUnavailable(
                "The gateway cannot read this end user's limits right now; try again shortly."
            ) from err

    async def _load(self, end_user: str) -> Limits | None:
        row = await self._repo.get(end_user)
        return row.limits if row is not None else None
