"""``tollhouse.track``: the manual API for clients ``instrument()`` does not know.

As a context manager (sync and async) and a decorator (sync and async), each
use is one UsageEvent with the gateway's labels, pricing and error taxonomy.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import tollhouse
from tests.test_instrument_helpers import PRICES, Probe, expected_cost, traffic
from tollhouse.accounting.usage import Usage
from tollhouse.instrument import current_call
from tollhouse.instrument.tracker import Tracker

LABELS = {"model": "local-llm", "backend": "gpu-1", "provider": "vllm"}
WHO = {**LABELS, "key": "svc", "team": "ml"}


@pytest.fixture
def probe() -> Probe:
    return Probe()


def track(probe: Probe, *, stream: bool = False) -> Tracker:
    return tollhouse.track(
        provider="vllm",
        model="local-llm",
        backend="gpu-1",
        key="svc",
        team="ml",
        stream=stream,
        prices=PRICES,
        instrumentation=probe.inst,
    )


def test_context_manager_records_usage_ttft_and_cost(probe: Probe) -> None:
    """``record_usage`` and ``first_token`` inside the block make one priced event."""
    with track(probe, stream=True) as call:
        time.sleep(0.01)
        call.first_token()
        call.first_token()  # the first mark wins
        call.record_usage(
            input_tokens=120, output_tokens=30, cached_input_tokens=100, reasoning_tokens=10
        )
    usage = Usage(input=120, output=30, cached_input=100, reasoning=10)
    event = probe.only_event()
    assert (event.usage, event.operation, event.stream) == (usage, "chat", True)
    assert event.ttft is not None and 0.01 <= event.ttft <= event.duration
    assert probe.value("llm_requests_total", **WHO, outcome="success", status_class="2xx") == 1
    assert probe.value("llm_tokens_total", **WHO, type="cached_input", source="reported") == 100
    assert probe.value("llm_tokens_total", **WHO, type="reasoning", source="reported") == 10
    assert probe.value("llm_cost_usd_total", **WHO) == pytest.approx(
        expected_cost(usage), abs=1e-12
    )
    assert probe.value("llm_time_to_first_token_seconds_count", **LABELS) == 1
    assert probe.value("llm_time_per_output_token_seconds_count", **LABELS) == 1


async def test_async_context_manager(probe: Probe) -> None:
    """``async with`` works the same, and estimated usage is labelled so."""
    async with track(probe) as call:
        await asyncio.sleep(0)
        call.record_usage(input_tokens=7, output_tokens=3, estimated=True)
    assert probe.value("llm_tokens_total", **WHO, type="input", source="estimated") == 7
    assert probe.value("llm_tokens_total", **WHO, type="output", source="estimated") == 3


def test_exception_is_classified_recorded_and_reraised(probe: Probe) -> None:
    """An httpx timeout inside the block is a ``timeout`` error (status 504), re-raised as is."""
    boom = httpx.ReadTimeout("slow")
    with pytest.raises(httpx.ReadTimeout) as raised, track(probe):
        raise boom
    assert raised.value is boom
    event = probe.only_event()
    assert (event.outcome.value, event.error_type, event.status) == ("error", "timeout", 504)
    assert probe.value("llm_errors_total", **LABELS, error_type="timeout") == 1
    assert probe.value("llm_requests_total", **WHO, outcome="error", status_class="5xx") == 1


@pytest.mark.parametrize(
    ("error", "error_type", "status"),
    [
        (ConnectionResetError("reset"), "network", 502),
        (TimeoutError(), "timeout", 504),
        (ValueError("bug"), "unknown", 502),
    ],
)
def test_generic_exceptions(probe: Probe, error: Exception, error_type: str, status: int) -> None:
    """Plain Python errors map onto the same taxonomy."""
    with pytest.raises(type(error)), track(probe):
        raise error
    event = probe.only_event()
    assert (event.error_type, event.status) == (error_type, status)


def test_http_status_error_uses_the_status(probe: Probe) -> None:
    """``httpx.HTTPStatusError`` keeps its status: a 429 is ``rate_limit``."""
    request = httpx.Request("POST", "http://127.0.0.1/v1/generate")
    err = httpx.HTTPStatusError(
        "429", request=request, response=httpx.Response(429, request=request)
    )
    with pytest.raises(httpx.HTTPStatusError), track(probe):
        raise err
    assert (probe.only_event().error_type, probe.only_event().status) == ("rate_limit", 429)


def test_decorator_on_a_function(probe: Probe) -> None:
    """Each call of a decorated function is its own event; ``current_call()`` reports usage."""

    @track(probe)
    def generate(n: int) -> str:
        current_call().record_usage(input_tokens=n, output_tokens=2 * n)
        return "x" * n

    assert generate(3) == "xxx"
    assert generate(4) == "xxxx"
    assert [e.usage.input for e in probe.events] == [3, 4]
    assert probe.value("llm_tokens_total", **WHO, type="output", source="reported") == 14
    with pytest.raises(LookupError):
        current_call()


async def test_decorator_on_a_coroutine(probe: Probe) -> None:
    """Async functions too, concurrently, each with its own call; errors re-raise."""

    @track(probe)
    async def generate(n: int) -> int:
        await asyncio.sleep(0.01 * (3 - n))
        current_call().record_usage(input_tokens=n, output_tokens=1)
        if n == 2:
            raise ConnectionError("gone")
        return n

    results = await asyncio.gather(generate(0), generate(1), generate(2), return_exceptions=True)
    assert list(results[:2]) == [0, 1] and isinstance(results[2], ConnectionError)
    assert sorted(e.usage.input for e in probe.events) == [0, 1, 2]
    assert probe.value("llm_requests_total", **WHO, outcome="success", status_class="2xx") == 2
    assert probe.value("llm_errors_total", **LABELS, error_type="network") == 1
    assert probe.value("llm_requests_in_flight", model="local-llm") == 0


async def test_cancelled_task_is_a_cancelled_call(probe: Probe) -> None:
    """A task cancelled inside ``track`` records ``cancelled`` (no error counted)."""

    @track(probe)
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    event = probe.only_event()
    assert (event.outcome.value, event.status) == ("cancelled", 499)
    assert (
        probe.value(
            "llm_errors_total", **traffic("local-llm", "vllm", "gpu-1"), error_type="cancelled"
        )
        == 0
    )


def test_default_labels_and_unpriced(probe: Probe) -> None:
    """Without ``backend``/``key``/``team`` the labels are ``none``; no price → unpriced."""
    with tollhouse.track(provider="acme", model="m1", instrumentation=probe.inst) as call:
        call.record_usage(input_tokens=1, output_tokens=1)
    labels = {"model": "m1", "backend": "none", "provider": "acme"}
    assert (
        probe.value(
            "llm_requests_total",
            **labels,
            key="none",
            team="none",
            outcome="success",
            status_class="2xx",
        )
        == 1
    )
    assert probe.value("llm_unpriced_requests_total", **labels) == 1
