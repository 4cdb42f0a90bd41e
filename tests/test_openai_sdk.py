"""The real ``openai`` SDK (sync and async) against the gateway on a loopback port."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.conftest import RunningGateway, mock_config, run_gateway

MSG = [{"role": "user", "content": "the quick brown fox"}]
# estimate: ceil(19 chars / 4) = 5, plus 3 per message
PROMPT = 8


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="sk-unused", max_retries=0)


def test_chat_completion_sync_counts_tokens_and_cost(mock_gateway: RunningGateway) -> None:
    """A whole answer reaches the SDK and its usage and cost land in the metrics."""
    with client(mock_gateway) as c:
        out = c.chat.completions.create(model="chat", messages=MSG, max_tokens=6)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "the quick brown fox the quick"
    assert out.usage is not None and out.usage.prompt_tokens == PROMPT
    assert out.usage.completion_tokens == 6
    gw = mock_gateway
    event = gw.wait_events(1)[0]
    labels = {
        "model": "chat",
        "backend": "mock",
        "provider": "mock",
        "key": "anonymous",
        "team": "none",
    }
    assert gw.metric("llm_requests_total", **labels, outcome="success", status_class="2xx") == 1
    assert gw.metric("llm_tokens_total", **labels, type="input", source="reported") == PROMPT
    assert gw.metric("llm_tokens_total", **labels, type="output", source="reported") == 6
    # 8 * 1.5 + 6 * 2.5 = 27 USD per million tokens
    assert event.cost == Decimal("0.000027")
    assert gw.metric("llm_cost_usd_total", **labels) == pytest.approx(27e-6, abs=1e-12)


def test_chat_stream_sync_relays_chunks_and_hides_usage_chunk(mock_gateway: RunningGateway) -> None:
    """The gateway asks for usage itself but does not pass the extra chunk to a client that
    did not ask; the usage is still accounted as reported."""
    with client(mock_gateway) as c:
        stream = c.chat.completions.create(model="chat", messages=MSG, max_tokens=5, stream=True)  # type: ignore[arg-type]
        chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "the quick brown fox the"
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)
    event = mock_gateway.wait_events(1)[0]
    assert (event.usage.input, event.usage.output) == (PROMPT, 5)
    assert event.token_source.value == "reported"
    assert event.ttft is not None and event.ttft <= event.duration
    assert (
        mock_gateway.metric(
            "llm_time_to_first_token_seconds_count", model="chat", backend="mock", provider="mock"
        )
        == 1
    )


def test_chat_stream_passes_usage_chunk_when_asked(mock_gateway: RunningGateway) -> None:
    with client(mock_gateway) as c:
        stream = c.chat.completions.create(
            model="chat",
            messages=MSG,
            max_tokens=3,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens == 3


def test_cached_and_reasoning_tokens_are_split_out(mock_gateway: RunningGateway) -> None:
    with client(mock_gateway) as c:
        c.chat.completions.create(model="cached", messages=MSG, max_tokens=4)  # type: ignore[arg-type]
    gw = mock_gateway
    event = gw.wait_events(1)[0]
    assert (event.usage.cached_input, event.usage.reasoning) == (PROMPT // 2, 2)
    labels = {
        "model": "cached",
        "backend": "mock",
        "provider": "mock",
        "key": "anonymous",
        "team": "none",
    }
    assert gw.metric("llm_tokens_total", **labels, type="cached_input", source="reported") == 4
    assert gw.metric("llm_tokens_total", **labels, type="reasoning", source="reported") == 2
    # 4 plain input at 1.5 + 4 cached at 0.75 + 4 output at 2.5 = 19 per million
    assert event.cost == Decimal("0.000019")


def test_embeddings_and_models_list_sync(mock_gateway: RunningGateway) -> None:
    with client(mock_gateway) as c:
        emb = c.embeddings.create(model="embed", input=["abcd", "efgh ijkl"])
        models = [m.id for m in c.models.list()]
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.usage.prompt_tokens == 1 + 3
    assert set(models) >= {"chat", "embed", "fail-429"}
    event = mock_gateway.wait_events(1)[0]
    assert (event.operation, event.usage.input) == ("embeddings", 4)


async def test_async_client_chat_stream_and_embeddings(mock_gateway: RunningGateway) -> None:
    async with openai.AsyncOpenAI(base_url=mock_gateway.v1, api_key="x", max_retries=0) as c:
        out = await c.chat.completions.create(model="chat", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
        stream = await c.chat.completions.create(
            model="chat",
            messages=MSG,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
        )
        pieces = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
        emb = await c.embeddings.create(model="embed", input="hello")
        models = await c.models.list()
    assert out.choices[0].message.content == "the quick"
    assert "".join(pieces) == "the quick brown fox"
    assert emb.usage.prompt_tokens == 2
    assert any(m.id == "chat" for m in models.data)
    events = mock_gateway.wait_events(3)
    assert sorted(e.usage.output for e in events if e.operation == "chat") == [2, 4]


def test_upstream_429_reaches_sdk_as_rate_limit_error(mock_gateway: RunningGateway) -> None:
    with client(mock_gateway) as c, pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="fail-429", messages=MSG)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "upstream_rate_limited"
    gw = mock_gateway
    gw.wait_events(1)
    assert (
        gw.metric(
            "llm_errors_total",
            model="fail-429",
            backend="mock",
            provider="mock",
            error_type="rate_limit",
        )
        == 1
    )


def test_mock_context_length_error_and_length_finish() -> None:
    """The built-in mock's ``ctx`` and ``length`` tokens (the grammar the HTTP test mock
    shares): a context-length 400 the gateway classifies, and a cut-off answer."""
    config = mock_config()
    config["models"] += [
        {"name": "too-long", "backend": "mock", "model": "fail-400-ctx"},
        {"name": "cut", "backend": "mock", "model": "echo-length"},
    ]
    with run_gateway(config) as gw, client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="too-long", messages=MSG)  # type: ignore[arg-type]
        assert info.value.code == "context_length_exceeded"
        out = c.chat.completions.create(model="cut", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
        assert (out.choices[0].finish_reason, out.choices[0].message.content) == (
            "length",
            "the quick",
        )
        chunks = list(
            c.chat.completions.create(model="cut", messages=MSG, max_tokens=2, stream=True)
        )  # type: ignore[arg-type]
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        gw.wait_events(3)
        labels = {"model": "too-long", "backend": "mock", "provider": "mock"}
        assert gw.metric("llm_errors_total", **labels, error_type="context_length") == 1


def test_request_id_is_echoed_and_overhead_reported(mock_gateway: RunningGateway) -> None:
    with client(mock_gateway) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="chat",
            messages=MSG,
            extra_headers={"x-request-id": "trace-123"},  # type: ignore[arg-type]
        )
    assert raw.headers["x-request-id"] == "trace-123"
    assert float(raw.headers["x-tollhouse-overhead-ms"]) >= 0
    assert mock_gateway.wait_events(1)[0].request_id == "trace-123"
