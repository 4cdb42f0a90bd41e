"""The OpenTelemetry exporter: GenAI semantic-convention metrics with the advised buckets,
read back through the SDK's ``InMemoryMetricReader``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tollhouse
from bench.mock_upstream import MockUpstream
from tests.test_instrument_helpers import Probe, upstream
from tollhouse.instrument.otel import (
    DURATION_BUCKETS,
    TIME_TO_FIRST_CHUNK_BUCKETS,
    TOKEN_USAGE_BUCKETS,
    OTelExporter,
)

ADVISED_TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864]  # fmt: skip
ADVISED_SECONDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                   40.96, 81.92]  # fmt: skip


class _Reader(InMemoryMetricReader):
    """Records the probe's queued calls before reading, as a scrape of the registry does."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self._probe = probe

    def get_metrics_data(self) -> Any:
        self._probe.inst.flush()
        return super().get_metrics_data()


@pytest.fixture
def otel() -> Iterator[tuple[Probe, InMemoryMetricReader]]:
    probe = Probe()
    reader = _Reader(probe)
    provider = MeterProvider(metric_readers=[reader])
    probe.inst.add_sink(OTelExporter(provider.get_meter("test")))
    yield probe, reader
    provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found: list[Any] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def test_advised_buckets_are_the_semconv_ones() -> None:
    """The constants are the conventions' advice, verbatim."""
    assert list(TOKEN_USAGE_BUCKETS) == ADVISED_TOKENS
    assert list(DURATION_BUCKETS) == ADVISED_SECONDS
    assert list(TIME_TO_FIRST_CHUNK_BUCKETS) == ADVISED_SECONDS


def test_tracked_stream_records_the_three_metrics(
    otel: tuple[Probe, InMemoryMetricReader],
) -> None:
    """Token usage by type, duration and time to first chunk, with bucket boundaries."""
    probe, reader = otel
    with tollhouse.track(
        provider="openai", model="gpt-x", stream=True, instrumentation=probe.inst
    ) as call:
        call.first_token()
        call.record_usage(input_tokens=300, output_tokens=20, response_model="gpt-x-2025")
    event = probe.only_event()
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-x",
        "gen_ai.response.model": "gpt-x-2025",
    }
    tokens = {
        p.attributes["gen_ai.token.type"]: p for p in points(reader, "gen_ai.client.token.usage")
    }
    assert set(tokens) == {"input", "output"}
    assert (tokens["input"].sum, tokens["input"].count) == (300, 1)
    assert (tokens["output"].sum, tokens["output"].count) == (20, 1)
    assert dict(tokens["input"].attributes) == {**base, "gen_ai.token.type": "input"}
    assert list(tokens["input"].explicit_bounds) == ADVISED_TOKENS
    assert tokens["input"].bucket_counts[ADVISED_TOKENS.index(1024)] == 1  # 256 < 300 <= 1024
    (duration,) = points(reader, "gen_ai.client.operation.duration")
    assert dict(duration.attributes) == base
    assert duration.sum == pytest.approx(event.duration, abs=1e-12)
    assert list(duration.explicit_bounds) == ADVISED_SECONDS
    (ttfc,) = points(reader, "gen_ai.client.operation.time_to_first_chunk")
    assert event.ttft is not None and ttfc.sum == pytest.approx(event.ttft, abs=1e-12)
    assert list(ttfc.explicit_bounds) == ADVISED_SECONDS


def test_errors_carry_error_type_and_estimates_are_not_exported(
    otel: tuple[Probe, InMemoryMetricReader],
) -> None:
    """A failed call has ``error.type``; estimated tokens stay out of ``token.usage``."""
    probe, reader = otel

    def fail() -> None:
        with tollhouse.track(provider="acme", model="m", instrumentation=probe.inst) as call:
            call.record_usage(input_tokens=9, estimated=True)
            raise TimeoutError

    with pytest.raises(TimeoutError):
        fail()
    (duration,) = points(reader, "gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "timeout"
    assert points(reader, "gen_ai.client.token.usage") == []
    assert points(reader, "gen_ai.client.operation.time_to_first_chunk") == []


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with upstream() as up:
        yield up


def test_real_sdk_stream_through_the_exporter(
    mock: MockUpstream, otel: tuple[Probe, InMemoryMetricReader]
) -> None:
    """An instrumented openai stream with usage: the OTel numbers equal the ledger's."""
    probe, reader = otel
    client = openai.OpenAI(base_url=mock.base_url + "/v1", api_key="sk-test", max_retries=0)
    with tollhouse.instrument(client, instrumentation=probe.inst) as client:
        for _chunk in client.chat.completions.create(
            model="gpt",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        ):
            pass
    served = mock.ledger()[-1].usage
    tokens = {
        p.attributes["gen_ai.token.type"]: p.sum
        for p in points(reader, "gen_ai.client.token.usage")
    }
    assert tokens == {"input": served.input, "output": served.output}
    (ttfc,) = points(reader, "gen_ai.client.operation.time_to_first_chunk")
    assert ttfc.attributes["gen_ai.provider.name"] == "openai" and ttfc.count == 1


def test_legacy_system_attribute() -> None:
    """``legacy_system=True`` adds the deprecated ``gen_ai.system`` beside the provider name."""
    probe = Probe()
    reader = _Reader(probe)
    provider = MeterProvider(metric_readers=[reader])
    probe.inst.add_sink(OTelExporter(provider.get_meter("t"), legacy_system=True))
    with tollhouse.track(provider="anthropic", model="c", instrumentation=probe.inst):
        pass
    (duration,) = points(reader, "gen_ai.client.operation.duration")
    assert duration.attributes["gen_ai.system"] == "anthropic"
    provider.shutdown()
