"""Instantiate the catalog on a registry the app owns (never the process global)."""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from tollhouse import __version__
from tollhouse.metrics import catalog as c
from tollhouse.metrics.catalog import MetricSpec
from tollhouse.metrics.multiprocess import gauge_mode


def build(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    """Create the prometheus_client object for ``spec`` on ``registry``."""
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":  # the mode only matters with several workers (multiprocess.py)
        mode = gauge_mode(spec.name)
        return Gauge(spec.name, spec.help, spec.labels, registry=registry, multiprocess_mode=mode)
    return Histogram(
        spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets or ()
    )


class Metrics:
    """The catalog's metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # ``*_created`` series double the series count and no dashboard uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests: Counter = build(c.REQUESTS, r)
        self.request_duration: Histogram = build(c.REQUEST_DURATION, r)
        self.upstream_duration: Histogram = build(c.UPSTREAM_DURATION, r)
        self.overhead: Histogram = build(c.OVERHEAD, r)
        self.ttft: Histogram = build(c.TTFT, r)
        self.tpot: Histogram = build(c.TPOT, r)
        self.tokens: Counter = build(c.TOKENS, r)
        self.cost: Counter = build(c.COST, r)
        self.unpriced: Counter = build(c.UNPRICED, r)
        self.errors: Counter = build(c.ERRORS, r)
        self.in_flight: Gauge = build(c.IN_FLIGHT, r)
        self.ratelimit_requests: Gauge = build(c.RATELIMIT_REQUESTS, r)
        self.ratelimit_tokens: Gauge = build(c.RATELIMIT_TOKENS, r)
        self.build_info: Gauge = build(c.BUILD_INFO, r)
        self.sink_errors: Counter = build(c.SINK_ERRORS, r)
        self.rejections: Counter = build(c.REJECTIONS, r)
        self.upstream_requests: Counter = build(c.UPSTREAM_REQUESTS, r)
        self.retries: Counter = build(c.RETRIES, r)
        self.fallbacks: Counter = build(c.FALLBACKS, r)
        self.cache_requests: Counter = build(c.CACHE_REQUESTS, r)
        self.cache_saved_tokens: Counter = build(c.CACHE_SAVED_TOKENS, r)
        self.cache_saved_cost: Counter = build(c.CACHE_SAVED_COST, r)
        self.admin_requests: Counter = build(c.ADMIN_REQUESTS, r)
        self.auth_failures: Counter = build(c.AUTH_FAILURES, r)
        self.auth_throttled: Counter = build(c.AUTH_THROTTLED, r)
        self.unrouted: Counter = build(c.UNROUTED, r)
        self.loop_lag: Gauge = build(c.LOOP_LAG, r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
