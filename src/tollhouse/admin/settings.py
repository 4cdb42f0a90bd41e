"""Tunables of the admin API and of authentication throttling, with production defaults.

They are constructor arguments (``App(..., admin=AdminSettings(...))``) rather
than config-file fields, so tests can tighten them without touching the
config schema; the defaults suit one operator and a few dashboards.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdminSettings:
    # Admin API rate limit per client address: a token bucket refilled at ``rate`` per second.
    rate: float = 20.0
    burst: int = 60
    # After ``max_auth_failures`` failed authentications from one address within
    # ``failure_window`` seconds, that address gets 429 for ``cooloff`` seconds (proxy and admin).
    max_auth_failures: int = 20
    failure_window: float = 60.0
    cooloff: float = 60.0
    # Roll-up folding: how often, and (PostgreSQL) how old a ledger id must be before folding.
    rollup_interval: float = 2.0
    rollup_settle: float = 10.0
    # Event-loop lag probe period.
    lag_interval: float = 0.5
