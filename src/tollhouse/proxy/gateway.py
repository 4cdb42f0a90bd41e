"""The gateway's runtime state, built once by the app lifespan and handed to the routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tollhouse.accounting.event import Sink, Sinks
from tollhouse.accounting.pricing import PriceBook
from tollhouse.config.schema import Config
from tollhouse.metrics.registry import Metrics
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
    ready: bool = False

    @classmethod
    def build(cls, config: Config, router: Router, prices: PriceBook, metrics: Metrics,
              sinks: list[Sink]) -> Gateway:  # fmt: skip
        def on_error(sink: Sink, err: Exception) -> None:
            name = getattr(sink, "name", type(sink).__name__)
            metrics.sink_errors.labels(name).inc()
            log.error("sink_failed sink=%s error=%s", name, type(err).__name__, exc_info=err)

        return cls(config, router, prices, metrics, Sinks(sinks, on_error))

    def route(self, ctx: RequestContext, model: str) -> Deployment:
        """Resolve the model for a request and count it in flight until ``done``."""
        dep = self.router.resolve(model)
        ctx.deployment = dep
        self.metrics.in_flight.labels(dep.model).inc()
        return dep

    def done(self, ctx: RequestContext) -> None:
        """Turn the request into its one UsageEvent and hand it to every sink."""
        if ctx.deployment is not None:
            self.metrics.in_flight.labels(ctx.deployment.model).dec()
        self.sinks.emit(ctx.finish(self.prices))
