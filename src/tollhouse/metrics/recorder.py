"""The metrics sink: one UsageEvent in, every traffic metric updated from it.

Nothing here computes tokens or cost; it only reads the event.
"""

from __future__ import annotations

from tollhouse.accounting.event import Outcome, UsageEvent
from tollhouse.metrics.registry import Metrics

_TOKEN_TYPES = ("input", "output", "cached_input", "cache_write_input", "reasoning")


class MetricsRecorder:
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def __call__(self, event: UsageEvent) -> None:
        m = self._m
        model, backend, provider = event.model, event.backend, event.provider
        stream = "true" if event.stream else "false"
        m.requests.labels(
            model, backend, provider, event.key, event.outcome.value, event.status_class
        ).inc()
        m.request_duration.labels(model, backend, provider, event.outcome.value, stream).observe(
            event.duration
        )
        m.overhead.labels(stream).observe(event.overhead)
        if event.upstream_duration is not None:
            m.upstream_duration.labels(model, backend, provider).observe(event.upstream_duration)
        if event.ttft is not None:
            m.ttft.labels(model, backend, provider).observe(event.ttft)
            tpot = event.time_per_output_token
            if tpot is not None:
                m.tpot.labels(model, backend, provider).observe(tpot)
        if event.error_type is not None and event.outcome is Outcome.ERROR:
            m.errors.labels(model, backend, provider, event.error_type.value).inc()
        self._tokens_and_cost(event)
        if event.ratelimit_remaining_requests is not None:
            m.ratelimit_requests.labels(backend, event.upstream_model).set(
                event.ratelimit_remaining_requests
            )
        if event.ratelimit_remaining_tokens is not None:
            m.ratelimit_tokens.labels(backend, event.upstream_model).set(
                event.ratelimit_remaining_tokens
            )

    def _tokens_and_cost(self, event: UsageEvent) -> None:
        m = self._m
        usage = event.usage
        source = event.token_source.value
        for kind in _TOKEN_TYPES:
            count = getattr(usage, kind)
            if count:
                m.tokens.labels(
                    event.model, event.backend, event.provider, event.key, kind, source
                ).inc(count)
        if event.cost is not None:
            if event.cost:
                m.cost.labels(event.model, event.backend, event.provider, event.key).inc(
                    float(event.cost)
                )
        elif usage.input or usage.output:
            m.unpriced.labels(event.model, event.backend, event.provider).inc()
