"""The gateway's runtime state, built once by the app lifespan and handed to the routes.

Admission happens in two parts. The caller's limits (key, key+model, team, user,
end user) are reserved once per request, at the worst case over every
deployment the request might reach (its group and the group's fallbacks). The
deployment's limits (its backend's and provider's budgets, the backend's rate
limits) are reserved per attempt, so a backend that is out of budget or rate is
skipped and the request moves on to the next deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal

from prometheus_client import Gauge

from tollhouse.accounting.event import Attempt, Outcome, Sink, Sinks
from tollhouse.accounting.pricing import Price, PriceBook, cost
from tollhouse.accounting.usage import Usage
from tollhouse.cache import ResponseCache
from tollhouse.config.schema import Config
from tollhouse.errors import (
    ErrorType,
    GatewayError,
    LimitsUnavailable,
    ModelNotAllowed,
    Rejected,
    Unauthorized,
    UpstreamError,
)
from tollhouse.identity.auth import Authenticator
from tollhouse.identity.end_users import EndUserDirectory
from tollhouse.identity.principal import BudgetRule, RateRule
from tollhouse.limits.admission import Admission, Ticket
from tollhouse.metrics.registry import Metrics
from tollhouse.metrics.snapshot import LimitsSnapshot
from tollhouse.proxy.context import RequestContext
from tollhouse.routing.executor import Call, Executor
from tollhouse.routing.router import Deployment, ModelGroup, Router

log = logging.getLogger("tollhouse")

LIMITS_RECHECK = 1.0  # seconds without asking a limits store that just failed
_LIMITS_DOWN = "The gateway cannot check budgets and rate limits right now; try again shortly."


@dataclass(slots=True)
class Gateway:
    config: Config
    router: Router
    prices: PriceBook
    metrics: Metrics
    sinks: Sinks
    auth: Authenticator
    admission: Admission | None
    snapshot: LimitsSnapshot
    end_users: EndUserDirectory | None = None
    cache: ResponseCache | None = None
    ready: bool = False
    rng: random.Random = field(default_factory=random.Random)
    executor: Executor = field(init=False)
    reachable_prices: dict[str, tuple[Price, ...]] = field(default_factory=dict)
    in_flight: dict[str, Gauge] = field(default_factory=dict)  # each group's bound series
    cancel_abandoned: bool = field(init=False)  # server.on_disconnect: cancel
    open_requests: int = 0  # proxied requests whose event is not emitted yet
    limits_retry_at: float = 0.0  # after a limits store failure: when to ask it again
    all_done: asyncio.Event | None = None  # set when they are none, once ``drained`` waits

    def __post_init__(self) -> None:
        self.executor = Executor(self.router, self.rng)
        self.cancel_abandoned = self.config.server.on_disconnect == "cancel"

    @classmethod
    def build(cls, config: Config, router: Router, prices: PriceBook, metrics: Metrics,
              sinks: list[Sink], auth: Authenticator, admission: Admission | None,
              snapshot: LimitsSnapshot) -> Gateway:  # fmt: skip
        def on_error(sink: Sink, err: Exception) -> None:
            name = getattr(sink, "name", type(sink).__name__)
            metrics.sink_errors.labels(name).inc()
            log.error("sink_failed sink=%s error=%s", name, type(err).__name__, exc_info=err)

        return cls(
            config, router, prices, metrics, Sinks(sinks, on_error), auth, admission, snapshot
        )

    def route(self, ctx: RequestContext, model: str) -> ModelGroup:
        """Resolve the public model, count the request in flight until ``done``, and check
        the caller may use the model: here, before a cached answer could be served."""
        group = self.router.resolve(model)
        ctx.group = group
        self._in_flight(group.name).inc()
        if not ctx.principal.allows(group.name):
            raise ModelNotAllowed(
                f"The key '{ctx.principal.key}' may not use the model '{group.name}'.",
                param="model",
            )
        return group

    def _in_flight(self, group: str) -> Gauge:
        """The group's in-flight series, bound once (``labels()`` costs a few µs per call)."""
        series = self.in_flight.get(group)
        if series is None:
            series = self.in_flight[group] = self.metrics.in_flight.labels(group)
        return series

    def _reachable_prices(self, group: ModelGroup) -> tuple[Price, ...]:
        """The prices of every deployment a request to ``group`` could reach, its fallbacks'
        included (fixed per group, so computed once and kept). Which is dearest depends on
        the request (a long prompt or a long answer), so the reservation prices its worst
        case at each and keeps the largest."""
        prices = self.reachable_prices.get(group.name)
        if prices is None:
            groups = [group, *(self.router.resolve(m) for f in group.config.fallbacks
                               for m in f.to)]  # fmt: skip
            found = (d.price for g in groups for d in g.deployments if d.price is not None)
            prices = self.reachable_prices[group.name] = tuple(dict.fromkeys(found))
        return prices

    async def admit(self, ctx: RequestContext, input_tokens: int, output_tokens: int) -> None:
        """Reserve the caller's limits for the worst case (``route`` checked the model)."""
        group = ctx.group
        assert group is not None
        if self.admission is None:
            return
        ctx.worst = Usage(input=input_tokens, output=output_tokens)
        prices = self._reachable_prices(group)
        overrides = None
        if ctx.end_user is not None and self.end_users is not None:
            overrides = await self.end_users.limits(ctx.end_user)
        rules = self.admission.caller_rules(ctx.principal, group.name, ctx.end_user, overrides)
        ctx.ticket = await self._reserve(rules, prices, ctx.worst)

    async def _reserve(self, rules: tuple[list[BudgetRule], list[RateRule]],
                       prices: tuple[Price, ...], worst: Usage) -> Ticket | None:  # fmt: skip
        assert self.admission is not None
        if not rules[0] and not rules[1]:
            return None  # no limit applies: nothing to price, track or reserve
        self.snapshot.track(*rules)
        worst_cost = max((cost(worst, p) for p in prices), default=Decimal(0))
        if self.limits_retry_at and time.monotonic() < self.limits_retry_at:
            raise LimitsUnavailable(_LIMITS_DOWN)  # failed a moment ago: do not wait again
        try:
            return await self.admission.admit(rules, worst_cost, worst.input + worst.output)
        except GatewayError:
            raise
        except Exception as err:  # the counters' store is down: refuse, clearly and counted
            # A store that stops answering costs each call limits.redis_timeout, so the
            # requests of the next LIMITS_RECHECK seconds are refused without asking it.
            self.limits_retry_at = time.monotonic() + LIMITS_RECHECK
            log.error("limits_unavailable error=%s", type(err).__name__)
            raise LimitsUnavailable(_LIMITS_DOWN) from err

    async def execute(self, ctx: RequestContext, call: Call) -> None:
        """Serve through the group's deployments, with retries and fallbacks."""
        assert ctx.group is not None
        await self.executor.run(ctx.group, call, _Hooks(self, ctx))

    def rejected(self, err: GatewayError) -> None:
        """Count refusals at the gate by reason and scope."""
        if isinstance(err, Rejected):
            self.metrics.rejections.labels(err.reason, err.scope).inc()
        elif isinstance(err, Unauthorized):
            self.metrics.rejections.labels("auth", "none").inc()
        elif isinstance(err, ModelNotAllowed):
            self.metrics.rejections.labels("permission", "key").inc()

    def unwind(self, ctx: RequestContext) -> None:
        """A request refused after the caller's reservation and before any upstream call
        (every deployment's backend limits had no room, or their counters were away):
        admission is all-or-nothing, so the caller's reservation and its rate counts go
        back in full, and its refusal shows no ``x-ratelimit-*`` headers."""
        untouched = not ctx.attempts and not ctx.attempting
        if ctx.ticket is not None and untouched and self.admission is not None:
            self.admission.release(ctx.ticket)
            ctx.ticket = None

    async def drained(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait, up to ``timeout``, until every proxied request has emitted its event. At
        shutdown the server cancels what outlived its grace period and then closes the
        app at once; the cancelled requests still record themselves (a loop turn or two
        later), and their events must reach the sinks before the ledger's last flush."""
        if not self.open_requests:
            return
        self.all_done = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.all_done.wait()

    def done(self, ctx: RequestContext) -> None:
        """Turn the request into its one UsageEvent, hand it to every sink, settle limits."""
        self.open_requests -= 1
        if not self.open_requests and self.all_done is not None:
            self.all_done.set()
        if ctx.group is not None:
            self._in_flight(ctx.group.name).dec()
        event = ctx.finish(self.prices)
        self.sinks.emit(event)
        if self.admission is not None:
            if ctx.ticket is not None:  # the caller's limits: the whole request
                self.admission.settle(ctx.ticket, event)
            if ctx.attempt_ticket is not None:  # the serving deployment's: its attempt only
                self.admission.settle_usage(
                    ctx.attempt_ticket, *ctx.charged_since(ctx.attempt_charges)
                )


class _Hooks:
    """What the proxy does around each upstream attempt the executor makes."""

    def __init__(self, gw: Gateway, ctx: RequestContext) -> None:
        self.gw, self.ctx = gw, ctx

    async def before(self, dep: Deployment) -> None:
        ctx, gw = self.ctx, self.gw
        ctx.deployment = dep
        ctx.attempt_charges = len(ctx.charges)
        if gw.admission is not None:
            rules = gw.admission.deployment_rules(dep.target.backend, dep.target.provider)
            assert ctx.group is not None
            if dep.model != ctx.group.name:  # a fallback: the key's limits for that model too
                rules[1].extend(r for r in ctx.principal.rates if r.model == dep.model)
            if rules[0] or rules[1]:
                prices = (dep.price,) if dep.price is not None else ()
                ctx.attempt_ticket = await gw._reserve(rules, prices, ctx.worst)
        ctx.attempting = True

    def after(
        self, dep: Deployment, error: UpstreamError | None, duration: float, retried: bool
    ) -> None:
        ctx = self.ctx
        ctx.attempting = False
        kind = error.error_type if error is not None else self.soft_error()
        t = dep.target
        ctx.attempts.append(Attempt(dep.model, t.backend, t.provider, t.upstream_model, kind,
                                    duration, retried))  # fmt: skip
        if ctx.ratelimit is not None:
            dep.health.upstream_remaining(
                ctx.ratelimit.remaining_requests, ctx.ratelimit.remaining_tokens
            )
        if error is not None and ctx.attempt_ticket is not None and self.gw.admission is not None:
            # The upstream was called: the attempt counts against its backend's limits,
            # with what it was charged (the prompt of an answer it could not read, say).
            usage, spent = ctx.charged_since(ctx.attempt_charges)
            self.gw.admission.settle_usage(ctx.attempt_ticket, usage, spent)
            ctx.attempt_ticket = None

    def soft_error(self) -> ErrorType | None:
        """A stream that failed after its first chunk ends without an exception; say so."""
        ctx = self.ctx
        if ctx.outcome is Outcome.ERROR or ctx.outcome is Outcome.CANCELLED:
            return ctx.error_type
        return None

    def may_use(self, model: str) -> bool:
        return self.ctx.principal.allows(model)

    def fell_back(self, origin: str, target: str) -> None:
        self.ctx.fallbacks.append((origin, target))
