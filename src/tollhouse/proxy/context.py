"""Per-request bookkeeping that ends in exactly one UsageEvent.

Handlers note what happened (route, timings, usage, failure) on a
``RequestContext``; ``finish`` turns it into the immutable event, computing
cost once, with the price resolved at start-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from tollhouse.accounting.event import NONE, Outcome, TokenSource, UsageEvent
from tollhouse.accounting.pricing import PriceBook, cost
from tollhouse.accounting.usage import ZERO_USAGE, Usage
from tollhouse.errors import ErrorType, GatewayError
from tollhouse.identity.principal import ANONYMOUS, Principal
from tollhouse.limits.admission import Ticket
from tollhouse.providers.base import RateLimitInfo
from tollhouse.routing.router import Deployment

perf = time.perf_counter


@dataclass(slots=True)
class RequestContext:
    request_id: str
    operation: str
    t0: float  # perf_counter at arrival
    started_at: float  # unix time at arrival
    deployment: Deployment | None = None
    stream: bool = False
    status: int = 200
    outcome: Outcome = Outcome.SUCCESS
    error_type: ErrorType | None = None
    usage: Usage = ZERO_USAGE
    token_source: TokenSource = TokenSource.REPORTED
    waited: float = 0.0  # seconds spent awaiting the upstream or the client's socket
    upstream_duration: float | None = None
    ttft: float | None = None
    ratelimit: RateLimitInfo | None = None
    principal: Principal = ANONYMOUS
    end_user: str | None = None
    ticket: Ticket | None = None

    @classmethod
    def begin(cls, request_id: str, operation: str) -> RequestContext:
        return cls(request_id, operation, perf(), time.time())

    def overhead_so_far(self) -> float:
        return max(0.0, perf() - self.t0 - self.waited)

    def estimated(self, usage: Usage) -> None:
        """Record usage the gateway estimated because the provider reported none."""
        self.usage = usage
        self.token_source = TokenSource.ESTIMATED

    def fail(self, err: GatewayError) -> None:
        self.status = err.status
        self.outcome = Outcome.ERROR
        self.error_type = err.error_type

    def cancel(self, status: int) -> None:
        """The client went away; ``status`` is what it was sent (499 if nothing yet)."""
        self.outcome = Outcome.CANCELLED
        self.error_type = ErrorType.CANCELLED
        self.status = status

    def finish(self, prices: PriceBook) -> UsageEvent:
        duration = perf() - self.t0
        dep = self.deployment
        price = dep.price if dep else None
        amount: Decimal | None = cost(self.usage, price) if price is not None else None
        if dep is not None and price is None and (self.usage.input or self.usage.output):
            prices.warn_unpriced(dep.target.backend, dep.target.upstream_model)
        rl = self.ratelimit
        return UsageEvent(
            request_id=self.request_id,
            started_at=self.started_at,
            operation=self.operation,
            model=dep.model if dep else NONE,
            backend=dep.target.backend if dep else NONE,
            provider=dep.target.provider if dep else NONE,
            upstream_model=dep.target.upstream_model if dep else NONE,
            key=self.principal.key,
            team=self.principal.team,
            user=self.principal.user,
            end_user=self.end_user or NONE,
            stream=self.stream,
            outcome=self.outcome,
            status=self.status,
            error_type=self.error_type,
            usage=self.usage,
            token_source=self.token_source,
            cost=amount,
            price_source=price.source if price else None,
            duration=duration,
            upstream_duration=self.upstream_duration,
            overhead=max(0.0, duration - self.waited),
            ttft=self.ttft,
            ratelimit_remaining_requests=rl.remaining_requests if rl else None,
            ratelimit_remaining_tokens=rl.remaining_tokens if rl else None,
        )
