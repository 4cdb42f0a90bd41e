"""Scrape-time gauges: budgets, gateway rate limits and the ledger, from one snapshot.

These values change with every request, but nobody needs them between two
scrapes, so nothing is updated per request: the ``/metrics`` handler refreshes
one snapshot (a single batched read of the counters) and the collector below
yields metric families from it (prometheus_client's custom-collector shape).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tollhouse.identity.principal import BudgetRule, RateRule
from tollhouse.limits.base import NANO, BudgetState, LimitsBackend
from tollhouse.limits.periods import minute_window
from tollhouse.limits.policy import budget_counter, rate_counter
from tollhouse.metrics import catalog as c


def usd(nano: int) -> float:
    return float(Decimal(nano) / NANO)


# Rules shown as gauges, counted apart for end users (whose number the clients decide, one
# per distinct ``user``) and for everything else (keys, teams, users, models, backends,
# providers: what the operator created), so end users can never crowd the others out.
# Rules beyond a cap are not shown (cardinality); they are still enforced.
MAX_TRACKED = 10_000


class Pingable(Protocol):
    async def ping(self) -> float: ...


@dataclass
class LedgerStats:
    backlog: int = 0
    written: int = 0
    errors: int = 0


@dataclass
class Snapshot:
    budgets: list[tuple[BudgetRule, BudgetState, float]] = field(default_factory=list)
    rates: list[tuple[RateRule, int]] = field(default_factory=list)


class LimitsSnapshot:
    """Knows which rules exist (configured, or seen in traffic) and reads them at scrape time."""

    def __init__(
        self, backend: LimitsBackend | None, clock: Callable[[], float] = time.time
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._budgets: dict[tuple[str, str, str], BudgetRule] = {}
        self._rates: dict[tuple[str, str, str, str | None], RateRule] = {}
        self._counts = {("budget", True): 0, ("budget", False): 0,
                        ("rate", True): 0, ("rate", False): 0}  # fmt: skip
        self.current = Snapshot()
        self.ledger: Callable[[], LedgerStats] = LedgerStats
        self._store: Pingable | None = None
        self._backend_name = "memory"
        self.store_latency: float | None = None
        self.limits_latency: float | None = None

    def track(self, budgets: list[BudgetRule], rates: list[RateRule]) -> None:
        """Remember rules so they are reported (bounded; cheap enough for the request path)."""
        for b in budgets:
            key = (b.scope, b.entity, b.period)
            if key not in self._budgets and self._room("budget", b.scope):
                self._budgets[key] = b
        for r in rates:
            rkey = (r.scope, r.entity, r.kind, r.model)
            if rkey not in self._rates and self._room("rate", r.scope):
                self._rates[rkey] = r

    def _room(self, kind: str, scope: str) -> bool:
        """Count one more rule of ``kind`` if its share (end users, or the rest) has room."""
        share = (kind, scope == "end_user")
        if self._counts[share] >= MAX_TRACKED:
            return False
        self._counts[share] += 1
        return True

    def attach(self, backend: LimitsBackend, ledger: object, store: Pingable | None = None,
               backend_name: str = "memory") -> None:  # fmt: skip
        """Point the snapshot at the live counters, the ledger writer and the store (start-up)."""
        self._backend = backend
        self._store = store
        self._backend_name = backend_name

        def stats() -> LedgerStats:
            return LedgerStats(
                int(getattr(ledger, "backlog", 0)),
                int(getattr(ledger, "written_total", 0)),
                int(getattr(ledger, "write_errors_total", 0)),
            )

        self.ledger = stats

    async def _latencies(self) -> None:
        """Round trips to the store and the counters, measured now (a failed one reads NaN)."""
        for target, attr in ((self._store, "store_latency"), (self._backend, "limits_latency")):
            if target is None:
                continue
            try:
                setattr(self, attr, await target.ping())
            except Exception:  # unreachable: report it as NaN, the scrape itself still works
                setattr(self, attr, float("nan"))

    async def refresh(self) -> None:
        await self._latencies()
        if self._backend is None:
            return
        now = self._clock()
        budgets = list(self._budgets.values())
        names = [budget_counter(b, now) for b in budgets]
        states = await self._backend.budget_states([n for n, _, _ in names])
        rates = list(self._rates.values())
        minute, _ = minute_window(now)
        counts = await self._backend.rate_counts([rate_counter(r, minute) for r in rates])
        self.current = Snapshot(
            [(b, s, end - now) for b, s, (_, end, _) in zip(budgets, states, names, strict=True)],
            list(zip(rates, counts, strict=True)),
        )

    def collect(self) -> Iterator[Metric]:
        snap = self.current
        families = {s.name: GaugeMetricFamily(s.name, s.help, labels=s.labels) for s in (
            c.BUDGET_LIMIT, c.BUDGET_SOFT_LIMIT, c.BUDGET_SPEND, c.BUDGET_RESERVED,
            c.BUDGET_REMAINING, c.BUDGET_RESET, c.RATE_LIMIT, c.RATE_REMAINING)}  # fmt: skip
        for rule, state, left in snap.budgets:
            labels = [rule.scope, rule.entity, rule.period]
            families[c.BUDGET_LIMIT.name].add_metric(labels, usd(rule.limit))
            if rule.soft is not None:
                families[c.BUDGET_SOFT_LIMIT.name].add_metric(labels, usd(rule.soft))
            families[c.BUDGET_SPEND.name].add_metric(labels, usd(state.spent))
            families[c.BUDGET_RESERVED.name].add_metric(labels, usd(state.reserved))
            remaining = max(0, rule.limit - state.spent - state.reserved)
            families[c.BUDGET_REMAINING.name].add_metric(labels, usd(remaining))
            families[c.BUDGET_RESET.name].add_metric(labels, max(0.0, left))
        for rate, count in snap.rates:
            entity = rate.entity if rate.model is None else f"{rate.entity}/{rate.model}"
            kind = "requests" if rate.kind == "rpm" else "tokens"
            families[c.RATE_LIMIT.name].add_metric([rate.scope, entity, kind], rate.limit)
            families[c.RATE_REMAINING.name].add_metric(
                [rate.scope, entity, kind], max(0, rate.limit - count)
            )
        yield from families.values()
        if self.store_latency is not None:
            yield GaugeMetricFamily(
                c.STORE_LATENCY.name, c.STORE_LATENCY.help, value=self.store_latency
            )
        if self.limits_latency is not None:
            fam = GaugeMetricFamily(
                c.LIMITS_LATENCY.name, c.LIMITS_LATENCY.help, labels=["backend"]
            )
            fam.add_metric([self._backend_name], self.limits_latency)
            yield fam
        stats = self.ledger()
        yield GaugeMetricFamily(c.LEDGER_BACKLOG.name, c.LEDGER_BACKLOG.help, value=stats.backlog)
        yield CounterMetricFamily(c.LEDGER_WRITTEN.name.removesuffix("_total"), c.LEDGER_WRITTEN.help,
                                  value=stats.written)  # fmt: skip
        yield CounterMetricFamily(c.LEDGER_ERRORS.name.removesuffix("_total"), c.LEDGER_ERRORS.help,
                                  value=stats.errors)  # fmt: skip
