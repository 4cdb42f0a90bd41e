"""Budgets survive a restart: current-window spend is recovered from the ledger.

The ledger is the durable record; counters (in memory, or in a Redis that was
restarted) are rebuilt from it at start-up. ``seed_spent`` only fills counters
that do not exist, so when several replicas start against one Redis the spend
is not counted twice. What can be missing is bounded by the ledger writer's
queue at the moment of a crash (see ``tollhouse.accounting.ledger``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import cast

from tollhouse.identity.principal import BudgetRule
from tollhouse.limits.base import LimitsBackend
from tollhouse.limits.periods import parse_period
from tollhouse.limits.policy import budget_counter
from tollhouse.store.ledger import LedgerRepo, SpendScope

COLUMN = {"key": "key_alias", "team": "team", "user": "user", "end_user": "end_user",
          "backend": "backend", "provider": "provider"}  # fmt: skip


async def recover_spend(
    backend: LimitsBackend, ledger: LedgerRepo, rules: Iterable[BudgetRule], now: float
) -> int:
    """Seed each rule's current-window counter with the ledger's spend; return how many were set."""
    groups: dict[tuple[str, str], list[BudgetRule]] = defaultdict(list)
    for rule in rules:
        groups[(rule.scope, rule.period)].append(rule)
    seeded = 0
    for (scope, period), members in groups.items():
        start = parse_period(period).window(now).start
        spend = await ledger.spend_since(cast(SpendScope, COLUMN[scope]), start)
        for rule in members:
            pico = spend.get(rule.entity, 0)
            if not pico:
                continue
            name, _end, ttl = budget_counter(rule, now)
            if await backend.seed_spent(name, math.ceil(pico / 1000), ttl):
                seeded += 1
    return seeded


async def end_user_rules(
    ledger: LedgerRepo, default: BudgetRule | None, now: float, own: Collection[str] = ()
) -> list[BudgetRule]:
    """The default end-user budget, once per end user who spent in its current window.

    End users in ``own`` have a budget of their own, which replaces the default for them
    (as admission does), so the default's counter is not rebuilt for them.
    """
    if default is None:
        return []
    start = parse_period(default.period).window(now).start
    spenders = await ledger.spend_since("end_user", start)
    return [
        BudgetRule("end_user", who, default.limit, default.period, default.soft)
        for who in spenders
        if who != "none" and who not in own
    ]
