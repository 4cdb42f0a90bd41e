"""An optional sink that mirrors usage events into OpenTelemetry's GenAI metrics.

Install ``tollhouse[otel]`` (``opentelemetry-sdk``), then::

    from tollhouse.instrument.otel import OTelExporter
    instrumentation.add_sink(OTelExporter())          # the global MeterProvider's meter
    instrumentation.add_sink(OTelExporter(my_meter))  # or a meter of your own

Each event records the GenAI semantic-convention client metrics, with the
bucket boundaries the conventions advise:

* ``gen_ai.client.operation.duration`` (s) — every call; ``error.type`` (the
  gateway's taxonomy: ``rate_limit``, ``timeout``, ..., ``cancelled``) when it
  did not succeed;
* ``gen_ai.client.operation.time_to_first_chunk`` (s) — streams that produced
  content;
* ``gen_ai.client.token.usage`` ({token}) — ``gen_ai.token.type`` ``input``
  and ``output``, only for usage the provider *reported*: the conventions
  forbid reporting counts the instrumentation cannot obtain, so the gateway's
  estimates stay in the Prometheus metrics (labelled ``source="estimated"``).

Attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name`` (and the
deprecated ``gen_ai.system`` with ``legacy_system=True``),
``gen_ai.request.model``, ``gen_ai.response.model``.

This module is imported only when used; nothing else in tollhouse needs
OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tollhouse import __version__
from tollhouse.accounting.event import Outcome, TokenSource, UsageEvent

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

# The semantic conventions' advice (gen-ai-metrics.md, "SHOULD be specified with
# ExplicitBucketBoundaries of ...").
TOKEN_USAGE_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TIME_TO_FIRST_CHUNK_BUCKETS = DURATION_BUCKETS

TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"


class OTelExporter:
    """A ``UsageEvent`` sink recording OpenTelemetry GenAI client metrics."""

    name = "otel"

    def __init__(self, meter: Meter | None = None, *, legacy_system: bool = False) -> None:
        if meter is None:
            from opentelemetry import metrics

            meter = metrics.get_meter("tollhouse", __version__)
        self._legacy_system = legacy_system
        self._tokens = meter.create_histogram(
            TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=[float(b) for b in TOKEN_USAGE_BUCKETS],
        )
        self._duration = meter.create_histogram(
            OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._ttfc = meter.create_histogram(
            TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk, measured from when the client "
            "issues the generation request to when the first chunk is received in the "
            "response stream.",
            explicit_bucket_boundaries_advisory=list(TIME_TO_FIRST_CHUNK_BUCKETS),
        )

    def _attributes(self, event: UsageEvent) -> dict[str, str]:
        attrs = {
            "gen_ai.operation.name": event.operation,
            "gen_ai.provider.name": event.provider,
            "gen_ai.request.model": event.model,
            "gen_ai.response.model": event.upstream_model,
        }
        if self._legacy_system:
            attrs["gen_ai.system"] = event.provider
        return attrs

    def __call__(self, event: UsageEvent) -> None:
        attrs = self._attributes(event)
        if event.ttft is not None:
            self._ttfc.record(event.ttft, attrs)
        usage = event.usage
        if event.token_source is TokenSource.REPORTED and (usage.input or usage.output):
            self._tokens.record(usage.input, {**attrs, "gen_ai.token.type": "input"})
            self._tokens.record(usage.output, {**attrs, "gen_ai.token.type": "output"})
        if event.outcome is not Outcome.SUCCESS and event.error_type is not None:
            attrs["error.type"] = event.error_type.value
        self._duration.record(event.duration, attrs)
