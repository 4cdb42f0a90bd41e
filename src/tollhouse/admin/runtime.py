"""Everything the admin API reads and changes, assembled once by the app's lifespan.

The API's handlers and the health report take what they need from here;
nothing is global, and ``start``/``stop`` own the background tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tollhouse.admin.background import Folder, LagProbe
from tollhouse.admin.guard import AuthGuard, TokenBuckets
from tollhouse.admin.service import AdminService
from tollhouse.admin.settings import AdminSettings
from tollhouse.config.schema import Config
from tollhouse.identity.principal import BudgetRule
from tollhouse.limits.base import LimitsBackend
from tollhouse.metrics.registry import Metrics
from tollhouse.store.engine import Store


@dataclass
class AdminRuntime:
    config: Config
    store: Store
    metrics: Metrics
    guard: AuthGuard
    admin_key: str | None
    settings: AdminSettings = field(default_factory=AdminSettings)
    limits: LimitsBackend | None = None
    ledger: Any = None  # the LedgerWriter: backlog, written_total, write_errors_total
    config_budgets: tuple[BudgetRule, ...] = ()
    router: Any = None  # the routing layer, for live backend state when it offers any
    on_change: Any = None  # called after every mutation (drops cached key lookups)
    started_at: float = field(default_factory=time.time)
    wall: Callable[[], float] = time.time  # the app's wall clock: the gate's budget windows

    def __post_init__(self) -> None:
        self.service = AdminService(self.store, self.on_change or (lambda: None))
        self.buckets = TokenBuckets(self.settings.rate, self.settings.burst)
        self.folder = Folder(
            self.store.engine, self.settings.rollup_interval, self.settings.rollup_settle
        )
        self.lag = LagProbe(self.settings.lag_interval, self.metrics.loop_lag.set)

    async def start(self) -> None:
        await self.folder.start()
        self.lag.start()

    async def stop(self) -> None:
        await self.lag.stop()
        await self.folder.stop()
