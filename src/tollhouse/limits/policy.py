"""Admission policy: which budget and rate counters a request touches, and their windows.

The backends only do atomic arithmetic on named counters; this module decides
the names. A counter name holds the scope, the entity and the window, so a new
window is simply a new counter (the old one expires by its TTL), and replicas
sharing Redis agree on names without talking to each other.

Worst case first (reserve-then-settle): the reservation is the prompt estimate
plus ``max_tokens`` (or the configured cap) at the model's prices; the rate
charge for tokens is the same token count. Both settle to the real numbers
when the request ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from tollhouse.errors import Rejected
from tollhouse.identity.principal import BudgetRule, RateRule
from tollhouse.limits.base import NANO, Admitted, BudgetCharge, RateCharge, Refused
from tollhouse.limits.periods import minute_window, parse_period

TTL_MARGIN = 3600  # counters outlive their window by an hour, for late settlements and scrapes


def nano_usd(usd: Decimal) -> int:
    """USD → nano-USD, rounded up: a budget may be over-counted by < 1e-9, never under."""
    return math.ceil(usd * NANO)


@dataclass(frozen=True, slots=True)
class Plan:
    """The counters of one request, with the rules they came from (same order)."""

    budget_rules: tuple[BudgetRule, ...]
    budgets: tuple[BudgetCharge, ...]
    budget_resets: tuple[float, ...]  # unix time each budget window ends
    rate_rules: tuple[RateRule, ...]
    rates: tuple[RateCharge, ...]
    rate_reset: float  # unix time the current minute ends


def budget_counter(rule: BudgetRule, now: float) -> tuple[str, float, int]:
    """(counter name, window end, ttl) of ``rule`` at ``now``."""
    window = parse_period(rule.period).window(now)
    name = f"budget:{rule.scope}:{rule.entity}:{window.id}"
    return name, window.end, int(window.end - now) + TTL_MARGIN


def rate_counter(rule: RateRule, minute: int) -> str:
    """The counter of ``rule`` in unix minute ``minute`` (per model for key+model rules)."""
    entity = rule.entity if rule.model is None else f"{rule.entity}/{rule.model}"
    return f"rate:{rule.scope}:{entity}:{rule.kind}:{minute}"


def plan(
    budgets: Sequence[BudgetRule],
    rates: Sequence[RateRule],
    *,
    cost: int,
    tokens: int,
    now: float,
) -> Plan:
    charges: list[BudgetCharge] = []
    resets: list[float] = []
    for rule in budgets:
        name, end, ttl = budget_counter(rule, now)
        charges.append(BudgetCharge(name, rule.limit, cost, ttl))
        resets.append(end)
    minute, minute_end = minute_window(now)
    rate_charges = [
        RateCharge(
            rate_counter(rule, minute),
            rule.limit,
            1 if rule.kind == "rpm" else tokens,
            int(minute_end - now) + 120,
        )
        for rule in rates
    ]
    return Plan(tuple(budgets), tuple(charges), tuple(resets), tuple(rates),
                tuple(rate_charges), minute_end)  # fmt: skip


def rejection(plan: Plan, refused: Refused, now: float) -> Rejected:
    """The client-facing 429 for a refusal, with ``Retry-After`` at the window's reset."""
    if refused.kind == "budget":
        rule = plan.budget_rules[refused.index]
        worst = plan.budgets[refused.index].amount
        if worst > rule.limit:  # waiting will not help: no Retry-After, say what to change
            return Rejected(
                f"This request's worst case ({Decimal(worst) / NANO:.6f} USD: the prompt "
                f"estimate plus max_tokens at the model's price) is more than the whole "
                f"{Decimal(rule.limit) / NANO:.6f} USD {rule.period} budget of {rule.scope} "
                f"'{rule.entity}'. Send a smaller max_tokens.",
                reason="budget", scope=rule.scope, retry_after=None, too_big=True,
            )  # fmt: skip
        spent = Decimal(refused.current) / NANO
        return Rejected(
            f"Budget exceeded for {rule.scope} '{rule.entity}': {spent:.6f} of "
            f"{Decimal(rule.limit) / NANO:.6f} USD used this {rule.period} period.",
            reason="budget",
            scope=rule.scope,
            retry_after=plan.budget_resets[refused.index] - now,
        )
    r = plan.rate_rules[refused.index]
    unit = "requests" if r.kind == "rpm" else "tokens"
    charge = plan.rates[refused.index]
    if charge.amount > r.limit:  # waiting will not help: no Retry-After, say what to change
        return Rejected(
            f"This request's worst case ({charge.amount} tokens: the prompt estimate plus "
            f"max_tokens, or the gateway's default reservation when max_tokens is absent) is "
            f"more than the {r.limit} tokens per minute allowed for {r.scope} '{r.entity}'. "
            "Send a smaller max_tokens.",
            reason="rate_limit", scope=r.scope, retry_after=None, too_big=True,
        )  # fmt: skip
    message = f"Rate limit reached for {r.scope} '{r.entity}': {r.limit} {unit} per minute."
    return Rejected(message, reason="rate_limit", scope=r.scope, retry_after=plan.rate_reset - now)


def rate_headers(plan: Plan, admitted: Admitted, now: float) -> list[tuple[bytes, bytes]]:
    """OpenAI-style ``x-ratelimit-*`` headers for the tightest request and token limits."""
    out: list[tuple[bytes, bytes]] = []
    reset = f"{max(0, math.ceil(plan.rate_reset - now))}s".encode()
    for kind, suffix in (("rpm", b"requests"), ("tpm", b"tokens")):
        best: tuple[int, int] | None = None  # (remaining, limit)
        for rule, count in zip(plan.rate_rules, admitted.rate_counts, strict=True):
            if rule.kind == kind:
                remaining = max(0, rule.limit - count)
                if best is None or remaining < best[0]:
                    best = (remaining, rule.limit)
        if best is not None:
            out += [
                (b"x-ratelimit-limit-" + suffix, str(best[1]).encode()),
                (b"x-ratelimit-remaining-" + suffix, str(best[0]).encode()),
                (b"x-ratelimit-reset-" + suffix, reset),
            ]
    return out


def tightest(*groups: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """One set of ``x-ratelimit-*`` headers from several tickets' (the caller's limits and
    the serving backend's): per kind, the trio of the limit with the least remaining."""
    chosen: dict[bytes, tuple[int, list[tuple[bytes, bytes]]]] = {}
    for headers in groups:
        for suffix in (b"requests", b"tokens"):
            trio = [(name, value) for name, value in headers if name.endswith(suffix)]
            remaining = next(
                (int(v) for n, v in trio if n == b"x-ratelimit-remaining-" + suffix), None
            )
            if remaining is not None and (suffix not in chosen or remaining < chosen[suffix][0]):
                chosen[suffix] = (remaining, trio)
    return [h for suffix in (b"requests", b"tokens") if suffix in chosen for h in chosen[suffix][1]]
