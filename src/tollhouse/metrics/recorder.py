"""The metrics sink: one UsageEvent in, every traffic metric updated from it.

Nothing here computes tokens or cost; it only reads the event.

``labels()`` on a prometheus_client metric validates and locks on every call,
and one event touches about a dozen series. Label values are bounded (config
names and closed enums), so each bound child is looked up once and kept in a
plain dict; a series is still created only when it first gets a value.
"""

from __future__ import annotations

from typing import Any

from tollhouse.accounting.event import Outcome, UsageEvent
from tollhouse.metrics.registry import Metrics

_TOKEN_TYPES = ("input", "output", "cached_input", "cache_write_input", "reasoning")


class MetricsRecorder:
    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def __call__(self, event: UsageEvent) -> None:
        m, child = self._m, self._child
        traffic = (event.model, event.backend, event.provider)
        outcome, stream = event.outcome.value, "true" if event.stream else "false"
        child(m.requests, *traffic, event.key, event.team, outcome, event.status_class).inc()
        child(m.request_duration, *traffic, outcome, stream).observe(event.duration)
        child(m.overhead, stream).observe(event.overhead)
        self._attempts(event)
        if event.ttft is not None:
            child(m.ttft, *traffic).observe(event.ttft)
            tpot = event.time_per_output_token
            if tpot is not None:
                child(m.tpot, *traffic).observe(tpot)
        if event.error_type is not None and event.outcome is Outcome.ERROR:
            child(m.errors, *traffic, event.error_type.value).inc()
        self._tokens_and_cost(event, traffic)
        if event.ratelimit_remaining_requests is not None:
            child(m.ratelimit_requests, event.backend, event.upstream_model).set(
                event.ratelimit_remaining_requests
            )
        if event.ratelimit_remaining_tokens is not None:
            child(m.ratelimit_tokens, event.backend, event.upstream_model).set(
                event.ratelimit_remaining_tokens
            )

    def _attempts(self, event: UsageEvent) -> None:
        """Every upstream call of the request: one sample each (no double counting of the
        request itself, which ``llm_requests_total`` counts once)."""
        m, child = self._m, self._child
        for a in event.attempts:
            kind = a.error_type.value if a.error_type is not None else "none"
            outcome = "success" if a.error_type is None else "error"
            child(m.upstream_requests, a.model, a.backend, a.provider, outcome, kind).inc()
            child(m.upstream_duration, a.model, a.backend, a.provider).observe(a.duration)
            if a.retried:
                child(m.retries, a.backend, kind).inc()
        for origin, target in event.fallbacks:
            child(m.fallbacks, origin, target, event.outcome.value).inc()
        if event.cache != "off":
            child(m.cache_requests, event.model, event.cache).inc()
        saved = event.saved_usage
        if saved is not None:
            for kind in _TOKEN_TYPES:
                count = getattr(saved, kind)
                if count:
                    child(m.cache_saved_tokens, event.model, kind).inc(count)
            if event.saved_cost:
                child(m.cache_saved_cost, event.model).inc(float(event.saved_cost))

    def _tokens_and_cost(self, event: UsageEvent, traffic: tuple[str, str, str]) -> None:
        m, child = self._m, self._child
        usage = event.usage
        source = event.token_source.value
        for kind in _TOKEN_TYPES:
            count = getattr(usage, kind)
            if count:
                child(m.tokens, *traffic, event.key, event.team, kind, source).inc(count)
        if event.cost is not None:
            if event.cost:
                child(m.cost, *traffic, event.key, event.team).inc(float(event.cost))
        elif usage.input or usage.output:
            child(m.unpriced, *traffic).inc()
