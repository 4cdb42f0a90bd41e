"""``tollhouse.instrument`` on the real ``anthropic`` SDK against the bench mock upstream.

``messages.create`` whole and with ``stream=True``, and the ``messages.stream``
helper (iteration, ``text_stream``, ``get_final_message``), sync and async.
Anthropic's ``input_tokens`` excludes cache reads and writes; the recorded
``input`` includes them, as the gateway's does.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam

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
from tollhouse.accounting.tokens import estimate_prompt_tokens
from tollhouse.accounting.usage import Usage

SYSTEM = "You are terse."
MESSAGES: list[MessageParam] = [{"role": "user", "content": "hello there, how are you today?"}]
PROMPT = estimate_prompt_tokens([{"content": SYSTEM}, *MESSAGES])


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


def client(up: MockUpstream, probe: Probe) -> anthropic.Anthropic:
    raw = anthropic.Anthropic(base_url=up.base_url, api_key="sk-test", max_retries=0)
    return tollhouse.instrument(raw, instrumentation=probe.inst, prices=PRICES)


def aclient(up: MockUpstream, probe: Probe) -> anthropic.AsyncAnthropic:
    raw = anthropic.AsyncAnthropic(base_url=up.base_url, api_key="sk-test", max_retries=0)
    return tollhouse.instrument(raw, instrumentation=probe.inst, prices=PRICES)


def assert_success(probe: Probe, model: str, usage: Usage, *, count: int = 1, streams: int) -> None:
    labels = who(model, provider="anthropic")
    ok = probe.value("llm_requests_total", **labels, outcome="success", status_class="2xx")
    assert ok == count
    assert_tokens(probe, model, usage, "reported", provider="anthropic")
    assert probe.value("llm_cost_usd_total", **labels) == pytest.approx(
        expected_cost(usage), abs=1e-12
    )
    ttft = probe.value("llm_time_to_first_token_seconds_count", **traffic(model, "anthropic"))
    assert ttft == streams
    assert probe.value("llm_requests_in_flight", model=model) == 0


def test_messages_create_counts_cache_reads_and_writes(up: MockUpstream, probe: Probe) -> None:
    """A whole message: input = uncached + cache read + cache write, as the ledger says."""
    model = "claude-cache"
    with client(up, probe) as c:
        message = c.messages.create(model=model, system=SYSTEM, messages=MESSAGES, max_tokens=6)
    served = up.ledger()[0].usage
    assert served == Usage(
        input=PROMPT, output=6, cached_input=PROMPT // 2, cache_write_input=PROMPT // 4
    )
    event = probe.only_event()
    assert (event.usage, event.provider, event.request_id) == (served, "anthropic", message.id)
    assert_success(probe, model, served, streams=0)


def test_messages_create_stream(up: MockUpstream, probe: Probe) -> None:
    """``stream=True``: usage from ``message_start`` + ``message_delta``, TTFT at the first delta."""
    with client(up, probe) as c:
        stream = c.messages.create(
            model="claude-cache", system=SYSTEM, messages=MESSAGES, max_tokens=5, stream=True
        )
        kinds = [event.type for event in stream]
    assert kinds.count("content_block_delta") == 5
    served = up.ledger()[0].usage
    event = probe.only_event()
    assert event.usage == served and event.token_source.value == "reported"
    assert event.ttft is not None and event.ttft <= event.duration
    assert_success(probe, "claude-cache", served, streams=1)


def test_messages_stream_helper_text_stream(up: MockUpstream, probe: Probe) -> None:
    """``with client.messages.stream(...)`` read through ``text_stream``, then the final message."""
    with (
        client(up, probe) as c,
        c.messages.stream(model="claude", messages=MESSAGES, max_tokens=4) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 "
    assert final.usage.output_tokens == 4
    served = up.ledger()[0].usage
    assert probe.only_event().usage == served
    assert_success(probe, "claude", served, streams=1)


async def test_async_create_and_stream_helper(up: MockUpstream, probe: Probe) -> None:
    """The async client: whole, ``stream=True`` and ``messages.stream`` each record one call."""
    async with aclient(up, probe) as c:
        await c.messages.create(model="claude", messages=MESSAGES, max_tokens=2)
        stream = await c.messages.create(
            model="claude", messages=MESSAGES, max_tokens=3, stream=True
        )
        async for _event in stream:
            pass
        async with c.messages.stream(model="claude", messages=MESSAGES, max_tokens=4) as helper:
            words = [text async for text in helper.text_stream]
    assert len(words) == 4
    assert_success(probe, "claude", up.totals(), count=3, streams=2)


def test_stream_helper_left_early_is_cancelled(up: MockUpstream, probe: Probe) -> None:
    """Leaving the ``with`` after two words: cancelled; the prompt Anthropic reported in
    ``message_start`` is kept, output is the words read; all labelled estimated."""
    with client(up, probe) as c:
        with c.messages.stream(
            model="claude-cache-chunkdelay-5", system=SYSTEM, messages=MESSAGES, max_tokens=60
        ) as stream:
            for i, _text in enumerate(stream.text_stream):
                if i == 1:
                    break
        event = probe.only_event()
    assert (event.outcome.value, event.status) == ("cancelled", 200)
    assert event.usage == Usage(
        input=PROMPT, output=2, cached_input=PROMPT // 2, cache_write_input=PROMPT // 4
    )
    assert event.token_source.value == "estimated"


def test_abandoned_raw_stream_is_recorded(up: MockUpstream, probe: Probe) -> None:
    """A ``stream=True`` result dropped unread is finished by its finalizer."""
    with client(up, probe) as c:
        stream = c.messages.create(
            model="claude-chunkdelay-5", messages=MESSAGES, max_tokens=60, stream=True
        )
        next(stream)
        del stream
        gc.collect()
        labels = who("claude-chunkdelay-5", provider="anthropic")
        got = probe.value("llm_requests_total", **labels, outcome="cancelled", status_class="2xx")
    assert got == 1


@pytest.mark.parametrize(
    ("model", "error", "error_type"),
    [
        ("fail-429", anthropic.RateLimitError, "rate_limit"),
        ("fail-529", anthropic.APIStatusError, "server_error"),
        ("fail-500", anthropic.InternalServerError, "server_error"),
        ("fail-413", anthropic.APIStatusError, "context_length"),
        ("hang", anthropic.APITimeoutError, "timeout"),
    ],
)
def test_errors_are_classified_and_reraised(
    up: MockUpstream, probe: Probe, model: str, error: type[Exception], error_type: str
) -> None:
    """Anthropic's error types map onto the gateway's taxonomy; the SDK error reaches the caller."""
    with client(up, probe).with_options(timeout=0.3) as c, pytest.raises(error):
        c.messages.create(model=model, messages=MESSAGES, max_tokens=4)
    assert (
        probe.value("llm_errors_total", **traffic(model, "anthropic"), error_type=error_type) == 1
    )


async def test_stream_helper_error_on_enter_is_recorded(up: MockUpstream, probe: Probe) -> None:
    """``messages.stream`` sends its request on ``__aenter__``; a 429 there is one error."""
    async with aclient(up, probe) as c:
        with pytest.raises(anthropic.RateLimitError):
            async with c.messages.stream(model="fail-429", messages=MESSAGES, max_tokens=4):
                pass  # pragma: no cover - never entered
    event = probe.only_event()
    assert (event.outcome.value, event.error_type, event.stream) == ("error", "rate_limit", True)


def test_stream_helper_until_done(up: MockUpstream, probe: Probe) -> None:
    """``until_done()`` reads through the instrumented raw stream too: a reported success."""
    with client(up, probe) as c:
        manager: Any = c.messages.stream(model="claude", messages=MESSAGES, max_tokens=1)
        with manager as stream:
            stream.until_done()
    event = probe.only_event()
    assert (event.outcome.value, event.usage.output, event.token_source.value) == (
        "success",
        1,
        "reported",
    )
