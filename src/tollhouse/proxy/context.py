"""Per-request bookkeeping that ends in exactly one UsageEvent.

Handlers note what happened (route, timings, usage, failure) on a
``RequestContext``; ``finish`` turns it into the immutable event, computing
cost once, with the price resolved at start-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

from tollhouse.accounting.event import NONE, Attempt, Outcome, TokenSource, UsageEvent
from tollhouse.accounting.pricing import Price, PriceBook, cost
from tollhouse.accounting.usage import ZERO_USAGE, Usage
from tollhouse.errors import ErrorType, GatewayError
from tollhouse.identity.principal import ANONYMOUS, Principal
from tollhouse.limits.admission import Ticket
from tollhouse.providers.base import RateLimitInfo
from tollhouse.routing.router import Deployment, ModelGroup

perf = time.perf_counter


@dataclass(slots=True)
class RequestContext:
    request_id: str
    operation: str
    t0: float  # perf_counter at arrival
    started_at: float  # unix time at arrival
    deployment: Deployment | None = None  # the current (finally: the serving) deployment
    group: ModelGroup | None = None  # the public model the client asked for
    stream: bool = False
    status: int = 200
    outcome: Outcome = Outcome.SUCCESS
    error_type: ErrorType | None = None
    token_source: TokenSource = TokenSource.REPORTED
    waited: float = 0.0  # seconds spent awaiting the upstream or the client's socket
    upstream_duration: float | None = None
    ttft: float | None = None
    ratelimit: RateLimitInfo | None = None
    principal: Principal = ANONYMOUS
    end_user: str | None = None
    ticket: Ticket | None = None  # the caller's limits (key, team, user, end user)
    attempt_ticket: Ticket | None = None  # the serving deployment's limits (backend, provider)
    attempt_charges: int = 0  # where the current attempt's entries in ``charges`` begin
    attempts: list[Attempt] = field(default_factory=list)  # upstream calls that ended
    attempting: bool = False  # an upstream call is under way (not in ``attempts`` yet)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    charges: list[tuple[Usage, Price | None]] = field(default_factory=list)
    cache: str = "off"
    saved: tuple[Usage, Decimal | None] | None = None
    worst: Usage = ZERO_USAGE  # the worst case reserved at admission

    @classmethod
    def begin(cls, request_id: str, operation: str) -> RequestContext:
        return cls(request_id, operation, perf(), time.time())

    def overhead_so_far(self) -> float:
        return max(0.0, perf() - self.t0 - self.waited)

    def charge(self, usage: Usage, *, estimated: bool = False) -> None:
        """Tokens the current deployment used, at its price. Attempts add up: a retried
        request that was charged by a failed attempt pays for both."""
        price = self.deployment.price if self.deployment is not None else None
        self.charges.append((usage, price))
        if estimated:
            self.token_source = TokenSource.ESTIMATED

    def estimated(self, usage: Usage) -> None:
        """Record usage the gateway estimated because the provider reported none."""
        self.charge(usage, estimated=True)

    def charged_since(self, start: int) -> tuple[Usage, Decimal | None]:
        """What ``charges[start:]`` add up to (one attempt's share): its tokens, and its
        cost (``None`` if a part is unpriced)."""
        usage, total = ZERO_USAGE, Decimal(0)
        priced = True
        for part, price in self.charges[start:]:
            usage = usage + part
            if price is not None:
                total += cost(part, price)
            elif part.input or part.output:
                priced = False
        return usage, total if priced else None

    def fail(self, err: GatewayError) -> None:
        self.status = err.status
        self.outcome = Outcome.ERROR
        self.error_type = err.error_type

    def cancel(self, status: int) -> None:
        """The client went away; ``status`` is what it was sent (499 if nothing yet)."""
        self.outcome = Outcome.CANCELLED
        self.error_type = ErrorType.CANCELLED
        self.status = status

    def _cost(self, prices: PriceBook) -> tuple[Usage, Decimal | None, str | None]:
        usage = ZERO_USAGE
        total: Decimal | None = Decimal(0)
        source: str | None = None
        for part, price in self.charges:
            usage = usage + part
            if price is None:
                if part.input or part.output:
                    total = None  # any unpriced part makes the whole request unpriced
                    dep = self.deployment
                    if dep is not None:
                        prices.warn_unpriced(dep.target.backend, dep.target.upstream_model)
            elif total is not None:
                total += cost(part, price)
                source = price.source
        return usage, total, source  # nothing charged (a refusal, a cache hit) costs 0

    def finish(self, prices: PriceBook) -> UsageEvent:
        duration = perf() - self.t0
        dep = self.deployment
        usage, amount, price_source = self._cost(prices)
        rl = self.ratelimit
        model = self.group.name if self.group is not None else NONE
        return UsageEvent(
            request_id=self.request_id,
            started_at=self.started_at,
            operation=self.operation,
            model=model,
            backend=dep.target.backend if dep else ("cache" if self.cache == "hit" else NONE),
            provider=dep.target.provider if dep else ("cache" if self.cache == "hit" else NONE),
            upstream_model=dep.target.upstream_model if dep else NONE,
            key=self.principal.key,
            team=self.principal.team,
            user=self.principal.user,
            end_user=self.end_user or NONE,
            stream=self.stream,
            outcome=self.outcome,
            status=self.status,
            error_type=self.error_type,
            usage=usage,
            token_source=self.token_source,
            cost=amount,
            price_source=price_source,
            duration=duration,
            upstream_duration=self.upstream_duration,
            overhead=max(0.0, duration - self.waited),
            ttft=self.ttft,
            ratelimit_remaining_requests=rl.remaining_requests if rl else None,
            ratelimit_remaining_tokens=rl.remaining_tokens if rl else None,
            attempts=tuple(self.attempts),
            fallbacks=tuple(self.fallbacks),
            cache=self.cache,
            saved_usage=self.saved[0] if self.saved else None,
            saved_cost=self.saved[1] if self.saved else None,
        )
