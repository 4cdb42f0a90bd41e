"""``tollhouse.instrument`` on the OpenAI Responses API (``client.responses.create``).

The bench mock does not speak Responses, so ``tests.test_instrument_helpers``
adds a ``/v1/responses`` route (JSON and SSE: ``response.created``,
``response.output_text.delta``, ``response.completed`` with ``usage``) that
writes to the same ledger.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

import tollhouse
from bench.mock_upstream import MockUpstream
from tests.test_instrument_helpers import (
    PRICES,
    Probe,
    assert_tokens,
    expected_cost,
    traffic,
    upstream,
    who,
)
from tollhouse.accounting.usage import Usage

INPUT = "Write one line about toll roads."
INSTRUCTIONS = "Be brief."


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with upstream() as up:
        yield up


@pytest.fixture
def up(mock: MockUpstream) -> MockUpstream:
    mock.reset()
    return mock


@pytest.fixture
def probe() -> Probe:
    return Probe()


def client(up: MockUpstream, probe: Probe) -> openai.OpenAI:
    raw = openai.OpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    return tollhouse.instrument(raw, instrumentation=probe.inst, prices=PRICES)


def aclient(up: MockUpstream, probe: Probe) -> openai.AsyncOpenAI:
    raw = openai.AsyncOpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    return tollhouse.instrument(raw, instrumentation=probe.inst, prices=PRICES)


def assert_success(probe: Probe, model: str, usage: Usage, *, stream: bool) -> None:
    labels = who(model)
    assert probe.value("llm_requests_total", **labels, outcome="success", status_class="2xx") == 1
    assert_tokens(probe, model, usage, "reported")
    assert probe.value("llm_cost_usd_total", **labels) == pytest.approx(
        expected_cost(usage), abs=1e-12
    )
    ttft = probe.value("llm_time_to_first_token_seconds_count", **traffic(model))
    assert ttft == (1 if stream else 0)


def test_responses_whole_answer(up: MockUpstream, probe: Probe) -> None:
    """A whole Response: input/output tokens with cached and reasoning details, reported."""
    model = "gpt-cache-reason-3"
    with client(up, probe) as c:
        response = c.responses.create(
            model=model, input=INPUT, instructions=INSTRUCTIONS, max_output_tokens=8
        )
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    served = up.ledger()[0].usage
    assert served.cached_input > 0 and served.reasoning == 3
    event = probe.only_event()
    assert (event.usage, event.operation, event.request_id) == (served, "chat", response.id)
    assert_success(probe, model, served, stream=False)


def test_responses_stream(up: MockUpstream, probe: Probe) -> None:
    """A streamed Response: TTFT at the first text delta, usage from ``response.completed``."""
    with client(up, probe) as c:
        stream = c.responses.create(
            model="gpt-cache", input=INPUT, max_output_tokens=5, stream=True
        )
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    served = up.ledger()[0].usage
    event = probe.only_event()
    assert event.usage == served and event.token_source.value == "reported"
    assert event.request_id.startswith("resp_") and event.ttft is not None
    assert_success(probe, "gpt-cache", served, stream=True)


async def test_responses_async_whole_and_stream(up: MockUpstream, probe: Probe) -> None:
    """The async client, both ways."""
    async with aclient(up, probe) as c:
        await c.responses.create(model="gpt", input=INPUT, max_output_tokens=3)
        stream = await c.responses.create(
            model="gpt", input=INPUT, max_output_tokens=4, stream=True
        )
        async for _event in stream:
            pass
    served = up.totals()
    assert [e.stream for e in probe.events] == [False, True]
    labels = who("gpt")
    assert probe.value("llm_requests_total", **labels, outcome="success", status_class="2xx") == 2
    assert_tokens(probe, "gpt", served, "reported")


def test_responses_stream_closed_early(up: MockUpstream, probe: Probe) -> None:
    """Closing before ``response.completed``: cancelled, estimated prompt + deltas read."""
    with client(up, probe) as c:
        stream = c.responses.create(
            model="gpt-chunkdelay-5", input=INPUT, max_output_tokens=40, stream=True
        )
        for item in stream:
            if item.type == "response.output_text.delta" and item.delta == "tok1 ":
                break
        stream.close()
    event = probe.only_event()
    assert event.outcome.value == "cancelled" and event.token_source.value == "estimated"
    assert event.usage == Usage(input=up.ledger()[0].input, output=2)


def test_responses_error_is_classified(up: MockUpstream, probe: Probe) -> None:
    """A 429 from the Responses endpoint is a ``rate_limit`` error, re-raised."""
    with client(up, probe) as c, pytest.raises(openai.RateLimitError):
        c.responses.create(model="fail-429", input=INPUT)
    assert probe.value("llm_errors_total", **traffic("fail-429"), error_type="rate_limit") == 1


def test_responses_failed_event_is_an_error(up: MockUpstream, probe: Probe) -> None:
    """A stream that ends in ``response.failed`` (no exception raised) is recorded as an
    error of the type its ``error.code`` says, with the usage it reported."""
    with client(up, probe) as c:
        kinds = [e.type for e in c.responses.create(model="gpt-failed", input=INPUT, stream=True)]
    assert kinds[-1] == "response.failed"
    event = probe.only_event()
    assert (event.outcome.value, event.error_type, event.status) == ("error", "rate_limit", 200)
    assert event.usage == up.ledger()[0].usage and event.token_source.value == "reported"
    assert probe.value("llm_errors_total", **traffic("gpt-failed"), error_type="rate_limit") == 1
