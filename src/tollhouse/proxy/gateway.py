"""The gateway's runtime state, built once by the app lifespan and handed to the routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

from tollhouse.accounting.event import Sink, Sinks
from tollhouse.accounting.pricing import PriceBook, cost
from tollhouse.accounting.usage import Usage
from tollhouse.config.schema import Config
from tollhouse.errors import (
    GatewayError,
    LimitsUnavailable,
    ModelNotAllowed,
    Rejected,
    Unauthorized,
)
from tollhouse.identity.auth import Authenticator
from tollhouse.identity.end_users import EndUserDirectory
from tollhouse.limits.admission import Admission
from tollhouse.metrics.registry import Metrics
from tollhouse.metrics.snapshot import LimitsSnapshot
from tollhouse.proxy.context import RequestContext
from tollhouse.routing.router import Deployment, Router

log = logging.getLogger("tollhouse")


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
    ready: bool = False

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

    def route(self, ctx: RequestContext, model: str) -> Deployment:
        """Resolve the model for a request and count it in flight until ``done``."""
        dep = self.router.resolve(model)
        ctx.deployment = dep
        self.metrics.in_flight.labels(dep.model).inc()
        return dep

    async def admit(self, ctx: RequestContext, input_tokens: int, output_tokens: int) -> None:
        """Check the model is allowed, then reserve the worst case against every limit."""
        dep = ctx.deployment
        assert dep is not None
        if not ctx.principal.allows(dep.model):
            raise ModelNotAllowed(
                f"The key '{ctx.principal.key}' may not use the model '{dep.model}'.", param="model"
            )
        if self.admission is None:
            return
        worst = Usage(input=input_tokens, output=output_tokens)
        worst_cost = cost(worst, dep.price) if dep.price is not None else Decimal(0)
        target = dep.target
        overrides = None
        if ctx.end_user is not None and self.end_users is not None:
            overrides = await self.end_users.limits(ctx.end_user)
        rules = self.admission.rules(
            ctx.principal, dep.model, target.backend, target.provider, ctx.end_user, overrides
        )
        self.snapshot.track(*rules)
        try:
            ctx.ticket = await self.admission.admit(
                ctx.principal, model=dep.model, backend=target.backend, provider=target.provider,
                end_user=ctx.end_user, worst_cost=worst_cost,
                worst_tokens=input_tokens + output_tokens, rules=rules,
            )  # fmt: skip
        except GatewayError:
            raise
        except Exception as err:  # the counters' store is down: refuse, clearly and counted
            log.error("limits_unavailable error=%s", type(err).__name__)
            raise LimitsUnavailable(
                "The gateway cannot check budgets and rate limits right now; try again shortly."
            ) from err

    def rejected(self, err: GatewayError) -> None:
        """Count refusals at the gate by reason and scope."""
        if isinstance(err, Rejected):
            self.metrics.rejections.labels(err.reason, err.scope).inc()
        elif isinstance(err, Unauthorized):
            self.metrics.rejections.labels("auth", "none").inc()
        elif isinstance(err, ModelNotAllowed):
            self.metrics.rejections.labels("permission", "key").inc()

    def done(self, ctx: RequestContext) -> None:
        """Turn the request into its one UsageEvent, hand it to every sink, settle limits."""
        if ctx.deployment is not None:
            self.metrics.in_flight.labels(ctx.deployment.model).dec()
        event = ctx.finish(self.prices)
        self.sinks.emit(event)
        if ctx.ticket is not None and self.admission is not None:
            self.admission.settle(ctx.ticket, event)
