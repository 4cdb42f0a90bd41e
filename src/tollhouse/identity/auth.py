"""Authentication: the request's key → a ``Principal``, with a short-lived cache.

Keys arrive as ``Authorization: Bearer sk-...`` or ``x-api-key`` (Anthropic-style
clients). Only the SHA-256 hash is looked up; the secret is never stored,
logged or put in an error. Lookups are cached for ``cache_ttl`` seconds (both
hits and misses), so blocking a key takes effect within that time. While the store
cannot be read, a key seen in the last ``stale_if_error`` seconds keeps its last
answer and any other key gets a 503 ``auth_unavailable`` (``identity.lookup``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tollhouse.errors import AuthUnavailable, Unauthorized
from tollhouse.identity.keys import hash_key
from tollhouse.identity.lookup import LookupCache, StoreUnreadable
from tollhouse.identity.principal import ANONYMOUS, Principal

MAX_CACHED = 100_000


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What the directory knows about one key hash."""

    principal: Principal
    expires_at: datetime | None
    blocked: bool


class Directory(Protocol):
    async def grant(self, key_hash: str) -> KeyGrant | None: ...


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from ``authorization: Bearer ...`` or ``x-api-key``, whichever is present."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


class Authenticator:
    def __init__(
        self,
        directory: Directory,
        *,
        required: bool,
        cache_ttl: float,
        stale_if_error: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._directory = directory
        self._required = required
        self._wall = wall  # the app's wall clock: key expiry follows the one budgets use
        self._cache: LookupCache[KeyGrant | None] = LookupCache(
            "api_key", ttl=cache_ttl, stale_if_error=stale_if_error, max_entries=MAX_CACHED,
            clock=clock,
        )  # fmt: skip

    def forget(self) -> None:
        """Drop every cached lookup (after an admin change in this process)."""
        self._cache.clear()

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        secret = bearer(headers)
        if secret is None:
            if not self._required:
                return ANONYMOUS
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.",
                code="missing_api_key",
            )
        try:
            grant = await self._cache.get(hash_key(secret), self._directory.grant)
        except StoreUnreadable as err:
            raise AuthUnavailable(
                "The gateway cannot check API keys right now; try again shortly."
            ) from err
        if grant is None:
            if not self._required:
                return ANONYMOUS
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        if grant.blocked:
            raise Unauthorized("This API key has been blocked.", code="blocked_api_key")
        if grant.expires_at is not None and grant.expires_at.timestamp() <= self._wall():
            raise Unauthorized("This API key has expired.", code="expired_api_key")
        return grant.principal
