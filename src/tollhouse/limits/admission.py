"""Admission at the gate: reserve the worst case before the call, settle after it.

``Admission.admit`` collects the rules that apply to a request (the caller's
key, team and user; the end user; the backend and its provider), reserves the
worst-case cost and token count against all of them in one atomic backend
call, and either returns a ``Ticket`` or raises ``Rejected`` (429).
``Admission.settle`` hands the real numbers back when the request's
UsageEvent exists; settlements are applied in the background, in order, and
drained on shutdown so no reservation is left hanging.

A settlement that fails (Redis restarting, a network cut) is retried until it is
applied, never dropped: dropping it would leave the request's spend out of its
budgets and its worst case reserved for as long as the gateway runs, refusing
requests that fit. While Redis is away, new limited requests are refused anyway
(``LimitsUnavailable``), so only the requests in flight when it went wait here.
Only shutdown gives up, after ``STOP_TIMEOUT``, and says how many it dropped. A
settlement whose reply was lost after Redis applied it is sent again, and the
backend applies it once (``limits.redis``: each admission's ticket). An admission
whose reply was lost is refused, and undone through the same queue if Redis had
applied it, so its reservation is not left held until the budget's window ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from tollhouse.accounting.event import UsageEvent
from tollhouse.accounting.usage import Usage
from tollhouse.config.schema import Config
from tollhouse.identity.directory import budget_rules, rate_rules
from tollhouse.identity.principal import BudgetRule, Principal, RateRule
from tollhouse.limits.base import Admitted, LimitsBackend, MaybeAdmitted, Settlement
from tollhouse.limits.policy import Plan, nano_usd, plan, rate_headers, rejection
from tollhouse.store.models import Limits
from tollhouse.tasks import cancel_and_wait

log = logging.getLogger("tollhouse.limits")

STOP_TIMEOUT = 10.0  # seconds shutdown waits for settlements Redis cannot take
RETRY_STEP = 0.2  # the pause after a settlement's n-th failure is n times this
RETRY_MAX = 2.0  # the longest pause between two tries of one settlement


@dataclass(frozen=True, slots=True)
class Ticket:
    plan: Plan
    admitted: Admitted
    headers: list[tuple[bytes, bytes]]


class Admission:
    def __init__(
        self, backend: LimitsBackend, config: Config, clock: Callable[[], float] = time.time
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._by_backend: dict[str, list[BudgetRule]] = {}
        self._by_provider: dict[str, list[BudgetRule]] = {}
        self._end_user: BudgetRule | None = None
        for b in config.budgets:
            rule = BudgetRule(b.scope, b.name or "*", nano_usd(b.max_usd), b.period,
                              nano_usd(b.soft_usd) if b.soft_usd is not None else None)  # fmt: skip
            if b.scope == "backend":
                self._by_backend.setdefault(rule.entity, []).append(rule)
            elif b.scope == "provider":
                self._by_provider.setdefault(rule.entity, []).append(rule)
            else:
                self._end_user = rule
        self._rates: dict[str, list[RateRule]] = {}
        for r in config.rate_limits:
            rules = self._rates.setdefault(r.name, [])
            rules += [RateRule("backend", r.name, "rpm", r.rpm)] if r.rpm else []
            rules += [RateRule("backend", r.name, "tpm", r.tpm)] if r.tpm else []
        self.config_budgets: tuple[BudgetRule, ...] = tuple(
            rule
            for rules in (*self._by_backend.values(), *self._by_provider.values())
            for rule in rules
        )
        self.end_user_default = self._end_user
        self._queue: asyncio.Queue[tuple[Admitted, Settlement] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def caller_rules(
        self,
        who: Principal,
        model: str,
        end_user: str | None,
        end_user_limits: Limits | None = None,
    ) -> tuple[list[BudgetRule], list[RateRule]]:
        """The caller's rules: key, key+model, team, user, and the end user (whose own row in
        the store overrides the configured default budget for end users)."""
        budgets = list(who.budgets)
        rates = [r for r in who.rates if r.model is None or r.model == model]
        if end_user is None:
            return budgets, rates
        if end_user_limits is not None and end_user_limits.max_budget_nusd is not None:
            budgets += budget_rules("end_user", end_user, end_user_limits)
        elif self._end_user is not None:
            d = self._end_user
            budgets.append(BudgetRule("end_user", end_user, d.limit, d.period, d.soft))
        if end_user_limits is not None:
            rates += rate_rules("end_user", end_user, end_user_limits)
        return budgets, rates

    def deployment_rules(
        self, backend: str, provider: str
    ) -> tuple[list[BudgetRule], list[RateRule]]:
        """The serving deployment's rules: its backend's and provider's budgets, its backend's rates."""
        budgets = [*self._by_backend.get(backend, ()), *self._by_provider.get(provider, ())]
        return budgets, list(self._rates.get(backend, ()))

    async def admit(
        self, rules: tuple[list[BudgetRule], list[RateRule]], worst_cost: Decimal, worst_tokens: int
    ) -> Ticket | None:
        """Reserve, or raise ``Rejected``. ``None`` when no rule applies (nothing to settle)."""
        budgets, rates = rules
        if not budgets and not rates:
            return None
        now = self._clock()
        p = plan(budgets, rates, cost=nano_usd(worst_cost), tokens=worst_tokens, now=now)
        try:
            result = await self.backend.admit(p.budgets, p.rates)
        except MaybeAdmitted as err:  # applied or not, unknown: undo it if it was
            undo = Settlement(0, [0] * len(p.rates), only_if_admitted=True)
            self._queue.put_nowait((err.admitted, undo))
            raise
        if not isinstance(result, Admitted):
            raise rejection(p, result, now)
        return Ticket(p, result, rate_headers(p, result, now))

    def release(self, ticket: Ticket) -> None:
        """An attempt that served nothing: give back its reservation and its rate charges."""
        self._queue.put_nowait((ticket.admitted, Settlement(0, [0] * len(ticket.plan.rate_rules))))

    def settle(self, ticket: Ticket, event: UsageEvent) -> None:
        """Queue the real cost and tokens of a finished request (never blocks the caller)."""
        self.settle_usage(ticket, event.usage, event.cost)

    def settle_usage(self, ticket: Ticket, usage: Usage, cost: Decimal | None) -> None:
        """Queue what one ticket's part of a request used: the whole request for the
        caller's ticket, one upstream attempt for a deployment's."""
        tokens = usage.input + usage.output
        amounts = [1 if rule.kind == "rpm" else tokens for rule in ticket.plan.rate_rules]
        spent = nano_usd(cost) if cost is not None else 0
        self._queue.put_nowait((ticket.admitted, Settlement(spent, amounts)))

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="tollhouse-settle")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:  # noqa: ASYNC109
        """Apply every queued settlement, for up to ``timeout`` seconds, then stop."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._queue.put_nowait(None)
        done, _ = await asyncio.wait({worker}, timeout=timeout)
        if not done:
            await cancel_and_wait(worker)
            log.error(
                "settlements_lost count=%d: the limits store stayed unreachable while "
                "stopping; their reservations stay held until this replica's lease is swept",
                self._queue.qsize(),  # the one being tried, plus those queued, less the None
            )

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            await self._apply(*item)

    async def _apply(self, admitted: Admitted, outcome: Settlement) -> None:
        """Settle one ticket, retrying (backing off up to ``RETRY_MAX``) until it lands."""
        failures = 0
        while True:
            try:
                await self.backend.settle(admitted, outcome)
            except Exception as err:  # a shared store away: the settlement must not be lost
                failures += 1
                if failures == 1:
                    log.warning("settle_failed error=%s backlog=%d: retrying until applied",
                                type(err).__name__, self._queue.qsize())  # fmt: skip
                await asyncio.sleep(min(RETRY_MAX, RETRY_STEP * failures))
                continue
            if failures:
                log.info("settle_recovered attempts=%d", failures + 1)
            return
