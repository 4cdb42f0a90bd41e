"""Budget and rate counters in one process's memory: the embedded default.

Atomicity comes from the event loop, not from a lock: ``admit`` checks every
counter and increments them without awaiting in between, so no other coroutine
can run between the check and the increment. That holds for one event loop in
one process; several workers or replicas need ``RedisLimits``.

Counters expire ``ttl`` seconds after they are created (a later charge never
moves the expiry, exactly as in Redis). An expired counter behaves as absent;
it is dropped when next touched, and a sweep every ``sweep_interval`` seconds
drops the ones nobody touches again, so memory stays bounded by the counters
of the live windows.

Expiry is measured on ``clock``, ``time.monotonic`` by default: TTLs are
relative, and a wall-clock step (NTP, a VM resume) must not end or extend a
window's counters early or late. Tests inject a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tollhouse.limits.base import (
    Admitted,
    BudgetCharge,
    BudgetState,
    RateCharge,
    Refused,
    Settlement,
)


@dataclass(slots=True)
class _Budget:
    spent: int
    reserved: int
    expires: float


@dataclass(slots=True)
class _Rate:
    count: int
    expires: float


class MemoryLimits:
    """``LimitsBackend`` for a single process and event loop; not thread-safe by design."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_interval: float = 60.0
    ) -> None:
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._budgets: dict[str, _Budget] = {}
        self._rates: dict[str, _Rate] = {}
        self._next_sweep = clock() + sweep_interval

    async def admit(
        self, budgets: Sequence[BudgetCharge], rates: Sequence[RateCharge]
    ) -> Admitted | Refused:
        """All-or-nothing reservation; budgets are checked first, then rates, in order."""
        now = self._tick()
        refused = self._first_without_room(budgets, rates, now)
        if refused is not None:
            return refused
        for b in budgets:
            budget = self._budget(b.name, now)
            if budget is None:
                budget = self._budgets[b.name] = _Budget(0, 0, now + b.ttl)
            budget.reserved += b.amount
        for r in rates:
            rate = self._rate(r.name, now)
            if rate is None:
                rate = self._rates[r.name] = _Rate(0, now + r.ttl)
            rate.count += r.amount
        return Admitted(
            budgets=tuple(budgets),
            rates=tuple(rates),
            budget_totals=tuple(
                self._budgets[b.name].spent + self._budgets[b.name].reserved for b in budgets
            ),
            rate_counts=tuple(self._rates[r.name].count for r in rates),
        )

    def _first_without_room(
        self, budgets: Sequence[BudgetCharge], rates: Sequence[RateCharge], now: float
    ) -> Refused | None:
        """The first counter the request does not fit in, counting earlier charges of this
        same request against a counter named twice (so a repeat cannot slip past the cap)."""
        pending: dict[str, int] = {}
        for i, b in enumerate(budgets):
            budget = self._budget(b.name, now)
            current = 0 if budget is None else budget.spent + budget.reserved
            if current + pending.get(b.name, 0) + b.amount > b.limit:
                return Refused("budget", i, current)
            pending[b.name] = pending.get(b.name, 0) + b.amount
        pending.clear()
        for i, r in enumerate(rates):
            rate = self._rate(r.name, now)
            current = 0 if rate is None else rate.count
            if current + pending.get(r.name, 0) + r.amount > r.limit:
                return Refused("rate", i, current)
            pending[r.name] = pending.get(r.name, 0) + r.amount
        return None

    async def settle(self, admitted: Admitted, outcome: Settlement) -> None:
        """Reserved → spent with the real cost; a counter whose window already expired is
        left absent (its spend belonged to a window that no longer limits anything)."""
        deltas = rate_deltas(admitted, outcome)
        now = self._tick()
        for b in admitted.budgets:
            budget = self._budget(b.name, now)
            if budget is not None:
                budget.reserved = max(0, budget.reserved - b.amount)
                budget.spent += outcome.cost
        for r, delta in zip(admitted.rates, deltas, strict=True):
            rate = self._rate(r.name, now)
            if rate is not None:
                rate.count = max(0, rate.count + delta)

    async def budget_states(self, names: Sequence[str]) -> list[BudgetState]:
        now = self._tick()
        out = []
        for name in names:
            budget = self._budget(name, now)
            out.append(
                BudgetState(0, 0) if budget is None else BudgetState(budget.spent, budget.reserved)
            )
        return out

    async def rate_counts(self, names: Sequence[str]) -> list[int]:
        now = self._tick()
        return [0 if (rate := self._rate(name, now)) is None else rate.count for name in names]

    async def seed_spent(self, name: str, spent: int, ttl: int) -> bool:
        now = self._tick()
        if self._budget(name, now) is not None:
            return False
        self._budgets[name] = _Budget(spent, 0, now + ttl)
        return True

    async def ping(self) -> float:
        return 0.0

    async def start(self) -> None:
        """Nothing to keep up: one process holds every counter and its reservations."""

    async def aclose(self) -> None:
        self._budgets.clear()
        self._rates.clear()

    def _budget(self, name: str, now: float) -> _Budget | None:
        budget = self._budgets.get(name)
        if budget is not None and budget.expires <= now:
            del self._budgets[name]
            return None
        return budget

    def _rate(self, name: str, now: float) -> _Rate | None:
        rate = self._rates.get(name)
        if rate is not None and rate.expires <= now:
            del self._rates[name]
            return None
        return rate

    def _tick(self) -> float:
        """The current time, sweeping expired counters when a sweep is due."""
        now = self._clock()
        if now >= self._next_sweep:
            self._budgets = {k: v for k, v in self._budgets.items() if v.expires > now}
            self._rates = {k: v for k, v in self._rates.items() if v.expires > now}
            self._next_sweep = now + self._sweep_interval
        return now


def rate_deltas(admitted: Admitted, outcome: Settlement) -> list[int]:
    """Per rate counter, real minus charged; no ``rate_amounts`` means "as charged".

    Shared by every backend so they agree on what a settlement means."""
    if not outcome.rate_amounts:
        return [0] * len(admitted.rates)
    if len(outcome.rate_amounts) != len(admitted.rates):
        raise ValueError(
            f"settlement has {len(outcome.rate_amounts)} rate amounts "
            f"for {len(admitted.rates)} rate counters"
        )
    return [real - r.amount for r, real in zip(admitted.rates, outcome.rate_amounts, strict=True)]
