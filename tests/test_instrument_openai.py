"""``tollhouse.instrument`` on the real ``openai`` SDK against the bench mock upstream.

Chat completions (whole and streamed, with and without ``include_usage``) and
embeddings, sync and async: each call is one UsageEvent whose tokens equal the
mock's ledger, whose cost is exact, and whose metrics are the gateway's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

import tollhouse
from bench.mock_upstream import MockUpstream
from tests.test_instrument_helpers import (
    HOST,
    PRICES,
    Probe,
    assert_tokens,
    expected_cost,
    traffic,
    upstream,
    who,
)
from tollhouse.accounting.pricing import cost, price_from_genai_prices
from tollhouse.accounting.tokens import estimate_prompt_tokens
from tollhouse.accounting.usage import Usage
from tollhouse.instrument import core

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there, how are you today?"},
]
PROMPT = estimate_prompt_tokens(MESSAGES)


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


def sync_client(up: MockUpstream, probe: Probe, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    return tollhouse.instrument(client, instrumentation=probe.inst, prices=PRICES, **options)


def async_client(up: MockUpstream, probe: Probe, **options: Any) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    return tollhouse.instrument(client, instrumentation=probe.inst, prices=PRICES, **options)


def assert_one_success(
    probe: Probe, model: str, usage: Usage, source: str, *, stream: bool
) -> None:
    """The metric families the gateway writes for one successful call, exactly."""
    labels = who(model)
    assert probe.value("llm_requests_total", **labels, outcome="success", status_class="2xx") == 1
    assert_tokens(probe, model, usage, source)
    assert probe.value("llm_cost_usd_total", **labels) == pytest.approx(
        expected_cost(usage), abs=1e-12
    )
    flag = "true" if stream else "false"
    duration = "llm_request_duration_seconds_count"
    assert probe.value(duration, **traffic(model), outcome="success", stream=flag) == 1
    ttft = probe.value("llm_time_to_first_token_seconds_count", **traffic(model))
    assert ttft == (1 if stream else 0)
    upstream = probe.value(
        "llm_upstream_requests_total", **traffic(model), outcome="success", error_type="none"
    )
    assert upstream == 1  # one call is one upstream attempt
    assert probe.value("llm_upstream_duration_seconds_count", **traffic(model)) == 1
    assert probe.value("llm_requests_in_flight", model=model) == 0
    assert probe.value("llm_errors_total", **traffic(model), error_type="unknown") == 0


def test_chat_sync_records_the_ledger_usage_and_exact_cost(up: MockUpstream, probe: Probe) -> None:
    """A whole answer: reported usage (cached and reasoning parts too) equals the ledger."""
    model = "gpt-cache-reason-2"
    with sync_client(up, probe) as client:
        answer = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=7)
    served = up.ledger()[0]
    assert served.usage == Usage(input=PROMPT, output=7, cached_input=PROMPT // 2, reasoning=2)
    event = probe.only_event()
    assert event.usage == served.usage and event.token_source.value == "reported"
    assert (event.operation, event.stream, event.status, event.ttft) == ("chat", False, 200, None)
    assert (event.backend, event.provider, event.upstream_model) == (HOST, "openai", model)
    assert event.request_id == answer.id
    assert_one_success(probe, model, served.usage, "reported", stream=False)


async def test_chat_async_records_the_ledger_usage(up: MockUpstream, probe: Probe) -> None:
    """The async client is instrumented the same way."""
    async with async_client(up, probe) as client:
        await client.chat.completions.create(model="gpt-cache", messages=MESSAGES, max_tokens=3)
    assert_one_success(probe, "gpt-cache", up.ledger()[0].usage, "reported", stream=False)


def test_chat_stream_without_usage_is_estimated_and_not_modified(
    up: MockUpstream, probe: Probe
) -> None:
    """The request is sent as written (no usage chunk reaches the caller); tokens are the
    gateway's estimate, which for this mock equals what it served."""
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(
            model="gpt", messages=MESSAGES, max_tokens=5, stream=True
        )
        chunks = list(stream)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    served = up.ledger()[0]
    event = probe.only_event()
    assert event.usage == served.usage == Usage(input=PROMPT, output=5)
    assert event.token_source.value == "estimated"
    assert event.ttft is not None and 0 < event.ttft <= event.duration
    assert_one_success(probe, "gpt", served.usage, "estimated", stream=True)
    ttft_sum = probe.value("llm_time_to_first_token_seconds_sum", **traffic("gpt"))
    assert ttft_sum == pytest.approx(event.ttft, abs=1e-12)


def test_chat_stream_with_include_usage_is_reported(up: MockUpstream, probe: Probe) -> None:
    """Asked for, the usage chunk reaches the caller and its numbers are recorded."""
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(
            model="gpt-cache-reason-1",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    served = up.ledger()[0]
    assert probe.only_event().usage == served.usage
    assert_one_success(probe, "gpt-cache-reason-1", served.usage, "reported", stream=True)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_async(up: MockUpstream, probe: Probe, include_usage: bool) -> None:
    """Async streams end their call when iteration ends, with or without usage."""
    options: Any = {"include_usage": True} if include_usage else openai.omit
    async with async_client(up, probe) as client:
        stream = await client.chat.completions.create(
            model="gpt", messages=MESSAGES, max_tokens=6, stream=True, stream_options=options
        )
        texts = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(t or "" for t in texts) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    source = "reported" if include_usage else "estimated"
    assert_one_success(probe, "gpt", up.ledger()[0].usage, source, stream=True)


def test_embeddings_sync_and_async(up: MockUpstream, probe: Probe) -> None:
    """Embeddings count their input tokens as reported, with operation ``embeddings``."""
    with sync_client(up, probe) as client:
        client.embeddings.create(model="embed", input=["the quick brown fox", "jumps"])

    async def call() -> None:
        async with async_client(up, probe) as client:
            await client.embeddings.create(model="embed", input="over the lazy dog")

    asyncio.run(call())
    served = up.totals(api="embeddings")
    assert served.input > 0 and served.output == 0
    assert [e.operation for e in probe.events] == ["embeddings", "embeddings"]
    labels = who("embed")
    assert probe.value("llm_requests_total", **labels, outcome="success", status_class="2xx") == 2
    assert_tokens(probe, "embed", served, "reported")
    assert probe.value("llm_cost_usd_total", **labels) == pytest.approx(
        expected_cost(served), abs=1e-12
    )


def test_stream_closed_early_is_one_cancelled_call(up: MockUpstream, probe: Probe) -> None:
    """Breaking out and closing: cancelled, with the prompt and the chunks read so far."""
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(
            model="gpt-chunkdelay-5", messages=MESSAGES, max_tokens=50, stream=True
        )
        for i, _chunk in enumerate(stream):
            if i == 3:  # the role-only chunk, then three words
                break
        assert probe.events == []  # breaking out alone does not end the call
        stream.close()
        stream.close()
    event = probe.only_event()
    assert (event.outcome.value, event.status, event.error_type) == ("cancelled", 200, "cancelled")
    assert event.usage == Usage(input=PROMPT, output=3) and event.token_source.value == "estimated"
    labels = who("gpt-chunkdelay-5")
    assert probe.value("llm_requests_total", **labels, outcome="cancelled", status_class="2xx") == 1
    assert probe.value("llm_tokens_total", **labels, type="output", source="estimated") == 3
    assert probe.value("llm_time_to_first_token_seconds_count", **traffic("gpt-chunkdelay-5")) == 1
    assert probe.value("llm_requests_in_flight", model="gpt-chunkdelay-5") == 0


def test_stream_left_in_with_block_is_cancelled(up: MockUpstream, probe: Probe) -> None:
    """Leaving ``with stream:`` before the end closes it: one cancelled call."""
    with (
        sync_client(up, probe) as client,
        client.chat.completions.create(
            model="gpt-chunkdelay-5", messages=MESSAGES, max_tokens=50, stream=True
        ) as stream,
    ):
        next(stream)
        next(stream)
    event = probe.only_event()
    assert event.outcome.value == "cancelled"
    assert event.usage == Usage(input=PROMPT, output=1)


def test_abandoned_stream_is_recorded_when_collected(up: MockUpstream, probe: Probe) -> None:
    """A stream dropped without close is finished by its finalizer (queued, then drained)."""
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(
            model="gpt-chunkdelay-5", messages=MESSAGES, max_tokens=50, stream=True
        )
        next(stream)
        next(stream)
        next(stream)
        assert probe.value("llm_requests_in_flight", model="gpt-chunkdelay-5") == 1
        del stream
        gc.collect()
        labels = who("gpt-chunkdelay-5")
        # A scrape drains the queue before reading.
        assert (
            probe.value("llm_requests_total", **labels, outcome="cancelled", status_class="2xx")
            == 1
        )
    assert probe.value("llm_tokens_total", **labels, type="output", source="estimated") == 2
    assert probe.value("llm_requests_in_flight", model="gpt-chunkdelay-5") == 0
    assert len(probe.events) == 1


async def test_async_stream_closed_early_is_cancelled(up: MockUpstream, probe: Probe) -> None:
    """``await stream.close()`` after reading part of an async stream."""
    async with async_client(up, probe) as client:
        stream = await client.chat.completions.create(
            model="gpt-chunkdelay-5", messages=MESSAGES, max_tokens=50, stream=True
        )
        read = 0
        async for _chunk in stream:
            read += 1
            if read == 3:
                break
        await stream.close()
    event = probe.only_event()
    assert event.outcome.value == "cancelled" and event.usage.output == 2


async def test_async_stream_cancelled_task_is_cancelled(up: MockUpstream, probe: Probe) -> None:
    """A task cancelled while awaiting the next chunk records a cancelled call."""
    async with async_client(up, probe) as client:
        stream = await client.chat.completions.create(
            model="gpt-hang-after-2", messages=MESSAGES, max_tokens=50, stream=True
        )

        two_words = asyncio.Event()

        async def read_all() -> None:
            seen = 0
            async for _chunk in stream:
                seen += 1
                if seen == 3:  # the role-only chunk and two words; then the mock goes silent
                    two_words.set()

        task = asyncio.create_task(read_all())
        await asyncio.wait_for(two_words.wait(), timeout=10)
        await asyncio.sleep(0.05)  # the reader is now waiting for a chunk that never comes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.close()
    event = probe.only_event()
    assert (event.outcome.value, event.error_type) == ("cancelled", "cancelled")
    assert event.usage.output == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("model", "error", "error_type", "status_class"),
    [
        ("fail-429", openai.RateLimitError, "rate_limit", "4xx"),
        ("fail-500", openai.InternalServerError, "server_error", "5xx"),
        ("fail-400-ctx", openai.BadRequestError, "context_length", "4xx"),
        ("fail-401", openai.AuthenticationError, "auth", "4xx"),
        ("hang", openai.APITimeoutError, "timeout", "5xx"),
    ],
)
def test_sdk_errors_are_classified_and_reraised(
    up: MockUpstream,
    probe: Probe,
    model: str,
    error: type[Exception],
    error_type: str,
    status_class: str,
) -> None:
    """The SDK's own exception reaches the caller; the error is counted by type."""
    client = sync_client(up, probe).with_options(timeout=0.3)
    with client, pytest.raises(error) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert type(raised.value) is error
    labels = traffic(model)
    assert probe.value("llm_errors_total", **labels, error_type=error_type) == 1
    assert (
        probe.value("llm_requests_total", **who(model), outcome="error", status_class=status_class)
        == 1
    )
    upstream = probe.value(
        "llm_upstream_requests_total", **labels, outcome="error", error_type=error_type
    )
    assert upstream == 1
    event = probe.only_event()
    assert event.usage == Usage() and event.cost == 0


async def test_connection_refused_is_network_error(probe: Probe) -> None:
    """Nothing listening: ``APIConnectionError``, counted as ``network`` with the gateway's 502."""
    base = f"http://127.0.0.1:{_closed_port()}/v1"
    client = openai.AsyncOpenAI(base_url=base, api_key="sk-test", max_retries=0)
    async with tollhouse.instrument(client, instrumentation=probe.inst) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="gpt", messages=MESSAGES)
    event = probe.only_event()
    assert (event.error_type, event.status) == ("network", 502)
    assert probe.value("llm_errors_total", **traffic("gpt"), error_type="network") == 1


def test_stream_dropped_midway_is_a_network_error_with_tokens_so_far(
    up: MockUpstream, probe: Probe
) -> None:
    """The connection dies after 3 words: error ``network``, status 200, prompt + 3 tokens."""
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(
            model="gpt-drop-after-3", messages=MESSAGES, max_tokens=9, stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            for _chunk in stream:
                pass
        stream.close()
    event = probe.only_event()
    assert (event.outcome.value, event.error_type, event.status) == ("error", "network", 200)
    assert event.usage == Usage(input=PROMPT, output=3) == up.ledger()[0].usage
    assert probe.value("llm_errors_total", **traffic("gpt-drop-after-3"), error_type="network") == 1


def test_price_from_genai_prices_resolved_once(
    up: MockUpstream, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``prices=``, cost is genai-prices' for the provider, looked up once per model."""
    lookups: list[str] = []

    def counted(provider: str, model: str) -> Any:
        lookups.append(model)
        return price_from_genai_prices(provider, model)

    monkeypatch.setattr(core, "price_from_genai_prices", counted)
    client = openai.OpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    with tollhouse.instrument(client, instrumentation=probe.inst) as client:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4)
    events = probe.events  # prices are looked up when the calls are recorded
    assert lookups == ["gpt-4o-mini"]
    price = price_from_genai_prices("openai", "gpt-4o-mini")
    assert price is not None
    one = cost(up.ledger()[0].usage, price)
    assert len(events) == 3 and all(event.cost == one for event in events)
    got = probe.value("llm_cost_usd_total", **who("gpt-4o-mini"))
    assert got == pytest.approx(3 * float(one), abs=1e-12)


def test_unknown_model_is_counted_unpriced(up: MockUpstream, probe: Probe) -> None:
    """A model genai-prices does not know costs nothing and is counted as unpriced."""
    client = openai.OpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    with tollhouse.instrument(client, instrumentation=probe.inst) as client:
        client.chat.completions.create(model="mock-gpt", messages=MESSAGES)
    assert probe.only_event().cost is None
    assert probe.value("llm_unpriced_requests_total", **traffic("mock-gpt")) == 1
    assert probe.value("llm_cost_usd_total", **who("mock-gpt")) == 0


def test_per_model_prices_and_labels(up: MockUpstream, probe: Probe) -> None:
    """``prices`` per model, and ``backend``/``key``/``team`` labels as given."""
    client = openai.OpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    tollhouse.instrument(
        client,
        instrumentation=probe.inst,
        backend="primary",
        key="app",
        team="search",
        prices={"gpt-a": PRICES},
    )
    with client:
        client.chat.completions.create(model="gpt-a", messages=MESSAGES, max_tokens=2)
        client.chat.completions.create(model="gpt-b", messages=MESSAGES, max_tokens=2)
    labels = {"backend": "primary", "provider": "openai", "key": "app", "team": "search"}
    usage = up.ledger()[0].usage
    got = probe.value("llm_cost_usd_total", model="gpt-a", **labels)
    assert got == pytest.approx(expected_cost(usage), abs=1e-12)
    assert (
        probe.value(
            "llm_unpriced_requests_total", model="gpt-b", backend="primary", provider="openai"
        )
        == 1
    )


def test_instrumenting_twice_and_copies(up: MockUpstream, probe: Probe) -> None:
    """A second ``instrument`` is a no-op; ``with_options`` copies stay instrumented;
    other clients and the SDK classes are untouched."""
    client = sync_client(up, probe)
    create = client.chat.completions.create
    assert tollhouse.instrument(client, instrumentation=Probe().inst) is client
    assert client.chat.completions.create is create
    plain = openai.OpenAI(base_url=up.base_url + "/v1", api_key="sk-test", max_retries=0)
    with client, plain:
        client.chat.completions.create(model="gpt", messages=MESSAGES)
        client.with_options(timeout=5).chat.completions.create(model="gpt", messages=MESSAGES)
        plain.chat.completions.create(model="gpt", messages=MESSAGES)
    assert len(probe.events) == 2 and len(up.ledger()) == 3
    assert not hasattr(type(client.chat.completions).create, "__tollhouse__")


def test_ledger_totals_equal_metric_totals(up: MockUpstream, probe: Probe) -> None:
    """Over a mix of calls, the reported tokens in the metrics sum to the mock's ledger."""
    with sync_client(up, probe) as client:
        for n in (1, 5, 9):
            client.chat.completions.create(model="gpt-cache", messages=MESSAGES, max_tokens=n)
            for _ in client.chat.completions.create(
                model="gpt-cache",
                messages=MESSAGES,
                max_tokens=n,
                stream=True,
                stream_options={"include_usage": True},
            ):
                pass
    served = up.totals()
    assert_tokens(probe, "gpt-cache", served, "reported")
    labels = who("gpt-cache")
    assert probe.value("llm_requests_total", **labels, outcome="success", status_class="2xx") == 6
    assert probe.value("llm_cost_usd_total", **labels) == pytest.approx(
        expected_cost(served), abs=1e-12
    )


def test_the_sdk_stream_helpers_pass_through_unrecorded(up: MockUpstream, probe: Probe) -> None:
    """docs/library.md: ``chat.completions.stream`` and ``responses.stream`` are not
    recorded. They were, and a helper left early stayed in flight until the garbage
    collector ran: the helper closes its HTTP response directly, past the wrapper."""
    with sync_client(up, probe) as client:
        with client.chat.completions.stream(
            model="gpt-chunkdelay-5", messages=MESSAGES, max_tokens=40
        ) as helper:
            for _event in helper:
                break
        with client.responses.stream(model="gpt-r", input="hi", max_output_tokens=20) as rs:
            for _event in rs:
                break
        assert probe.events == []
        assert probe.value("llm_requests_in_flight", model="gpt-chunkdelay-5") == 0
        assert probe.value("llm_requests_in_flight", model="gpt-r") == 0
        whole = client.chat.completions.create(model="gpt-after", messages=MESSAGES, max_tokens=3)
    assert whole.usage is not None and probe.only_event().model == "gpt-after"


def test_a_streams_prompt_is_estimated_from_the_request_as_sent(
    up: MockUpstream, probe: Probe
) -> None:
    """An application that appends the answer to its history while streaming made the
    estimate (taken when the stream ends) count the answer as prompt too."""
    history: list[ChatCompletionMessageParam] = list(MESSAGES)
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(model="gpt", messages=history, stream=True)
        history.append({"role": "assistant", "content": ""})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                history[-1]["content"] += chunk.choices[0].delta.content  # type: ignore[operator]
    event = probe.only_event()
    assert event.usage.input == PROMPT == up.ledger()[0].input
    assert event.token_source.value == "estimated"


def test_a_stream_left_after_its_finish_reason_is_a_success(up: MockUpstream, probe: Probe) -> None:
    """``if chunk.choices[0].finish_reason: break`` leaves a whole answer, not a cancelled
    one (Anthropic streams left after ``message_delta`` already counted as whole)."""
    with sync_client(up, probe) as client:
        stream = client.chat.completions.create(model="gpt", messages=MESSAGES, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                break
        stream.close()
    event = probe.only_event()
    assert (event.outcome.value, event.error_type) == ("success", None)
    assert event.usage.output == up.ledger()[0].output and event.token_source.value == "estimated"


def test_an_unreadable_answer_is_invalid_response_with_its_prompt_charged(
    up: MockUpstream, probe: Probe
) -> None:
    """Both SDKs raise a plain JSONDecodeError for a 2xx body that is not JSON; it was
    recorded as ``unknown`` (a 502) with nothing charged, although the provider took the
    prompt."""
    with sync_client(up, probe) as client, pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="gpt-malformed", messages=MESSAGES)
    event = probe.only_event()
    assert (event.outcome.value, event.error_type) == ("error", "invalid_response")
    assert event.usage.input == PROMPT and event.token_source.value == "estimated"


def test_arguments_the_sdk_refuses_before_sending_record_nothing(
    up: MockUpstream, probe: Probe
) -> None:
    """A misspelt argument never leaves the process: it was counted as a failed upstream
    call (5xx, ``unknown``)."""
    with sync_client(up, probe) as client:
        with pytest.raises(TypeError):
            client.chat.completions.create(  # type: ignore[call-overload]
                model="gpt-typo", messages=MESSAGES, temprature=0.2
            )
        with pytest.raises(TypeError):
            client.chat.completions.create(model="gpt-typo")  # type: ignore[call-overload]
    assert probe.events == [] and up.ledger() == []
    assert probe.value("llm_requests_in_flight", model="gpt-typo") == 0
    assert probe.value("llm_upstream_requests_total", **traffic("gpt-typo"), outcome="error",
                       error_type="unknown") == 0  # fmt: skip


_EXIT_MID_STREAM = """
import sys
import openai
from prometheus_client import CollectorRegistry
import tollhouse
from tollhouse import Instrumentation

inst = Instrumentation(CollectorRegistry())
inst.add_sink(lambda e: print("event", e.model, e.outcome.value, e.usage.output, flush=True))
client = tollhouse.instrument(
    openai.OpenAI(base_url=sys.argv[1], api_key="x", max_retries=0), instrumentation=inst
)
stream = client.chat.completions.create(
    model="gpt-chunkdelay-5", messages=[{"role": "user", "content": "one two three four"}],
    max_tokens=20, stream=True,
)
for i, chunk in enumerate(stream):
    if i == 2:
        break  # the script ends here, the stream still open and referenced
"""


def test_a_stream_still_open_at_exit_is_recorded(up: MockUpstream) -> None:
    """Finalizers may not run at interpreter exit (and the abandoned-stream one skips a
    finalizing interpreter), so a script that left a stream open lost its call."""
    done = subprocess.run([sys.executable, "-c", _EXIT_MID_STREAM, up.base_url + "/v1"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["event gpt-chunkdelay-5 cancelled 2"]
