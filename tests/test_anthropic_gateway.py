"""OpenAI clients served by an Anthropic backend: the Messages wire format (whole and SSE)
through the gateway, against a local server that speaks it."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import openai
import orjson
import pytest

from bench.mock_upstream import MockUpstream
from tests.conftest import RunningGateway, run_gateway
from tests.raw_upstream import answer_once

MSG = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "one two three four"},
]
PROMPT = 2 + 3 + 5 + 3  # the system prompt and the message, by the documented estimate


@pytest.fixture(scope="module")
def claude() -> Iterator[tuple[MockUpstream, RunningGateway]]:
    with MockUpstream() as up:
        config = {
            "backends": [{"name": "claude", "provider": "anthropic", "base_url": up.base_url,
                          "prices": {"input": 3, "output": 15, "cached_input": "0.3",
                                     "cache_write_input": "3.75"}}],
            "models": [{"name": "sonnet", "backend": "claude", "model": "claude-x"},
                       {"name": "sonnet-cached", "backend": "claude", "model": "claude-x-cache"},
                       {"name": "sonnet-busy", "backend": "claude", "model": "claude-x-fail-529"}],
        }  # fmt: skip
        with run_gateway(config) as gw:
            yield up, gw


def test_whole_answer_translated_with_cache_usage(
    claude: tuple[MockUpstream, RunningGateway],
) -> None:
    up, gw = claude
    before = len(gw.events)
    with openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as c:
        out = c.chat.completions.create(model="sonnet-cached", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    assert out.object == "chat.completion" and out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content and out.usage is not None
    assert out.usage.prompt_tokens == PROMPT and out.usage.completion_tokens == 5
    assert out.usage.prompt_tokens_details is not None
    assert out.usage.prompt_tokens_details.cached_tokens == PROMPT // 2
    event = gw.wait_events(before + 1)[-1]
    entry = up.ledger()[-1]
    assert event.usage == entry.usage
    assert (event.usage.cached_input, event.usage.cache_write_input) == (PROMPT // 2, PROMPT // 4)
    assert event.provider == "anthropic" and event.token_source.value == "reported"


def test_sse_events_become_openai_chunks(claude: tuple[MockUpstream, RunningGateway]) -> None:
    up, gw = claude
    before = len(gw.events)
    with openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as c:
        stream = c.chat.completions.create(
            model="sonnet", messages=MSG, max_tokens=4, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.split() == ["tok0", "tok1", "tok2", "tok3"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    event = gw.wait_events(before + 1)[-1]
    assert event.usage == up.ledger()[-1].usage and event.ttft is not None


def test_overloaded_anthropic_is_a_server_error(
    claude: tuple[MockUpstream, RunningGateway],
) -> None:
    _, gw = claude
    before = len(gw.events)
    with (
        openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as c,
        pytest.raises(openai.APIStatusError) as info,
    ):
        c.chat.completions.create(model="sonnet-busy", messages=MSG)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    event = gw.wait_events(before + 1)[-1]
    assert event.error_type is not None and event.error_type.value == "server_error"


def _truncated_messages_stream() -> bytes:
    """One Anthropic stream that ends cleanly (EOF-delimited body) after three words,
    with no message_delta or message_stop: cut short, though no connection broke."""
    usage = {"input_tokens": 20, "output_tokens": 1}
    start = {"type": "message_start", "message": {"id": "m", "model": "t", "usage": usage}}
    words = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
        for w in ("one", " two", " three")
    ]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in [start, *words])
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + body


def test_an_anthropic_stream_that_ends_without_its_final_events_is_an_error() -> None:
    """message_start's usage has a placeholder output of 0: a stream that ended after it
    without message_delta/message_stop was recorded as a success with 0 output tokens
    (and told the client so in its usage chunk)."""
    with answer_once(_truncated_messages_stream()) as port:
        config = {
            "backends": [{"name": "t", "provider": "anthropic", "base_url": f"http://127.0.0.1:{port}",
                          "prices": {"input": 3, "output": 15}}],
            "models": [{"name": "trunc", "backend": "t", "model": "claude-t"}],
        }  # fmt: skip
        with run_gateway(config) as gw:
            client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
            words: list[str] = []
            usages: list[int] = []

            def read_all() -> None:
                stream = client.chat.completions.create(
                    model="trunc", messages=[{"role": "user", "content": "hi"}], stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        words.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usages.append(chunk.usage.completion_tokens)

            with pytest.raises(openai.APIError):
                read_all()
            event = gw.wait_events(1)[0]
    assert "".join(words) == "one two three" and usages == []
    assert (event.outcome.value, event.error_type.value) == ("error", "network")
    assert (event.usage.input, event.usage.output) == (20, 3)
    assert event.token_source.value == "estimated"
    assert event.cost == Decimal(20 * 3 + 3 * 15) / 1_000_000
