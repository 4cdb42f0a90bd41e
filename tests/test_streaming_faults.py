"""Faults around streams and upstream calls: timeouts, drops, malformed answers, and
clients that leave. Each ends in exactly one event with the right outcome and tokens."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import orjson
import pytest

from tests.conftest import RunningGateway, mock_config, run_gateway

MSG = [{"role": "user", "content": "one two three"}]
PROMPT = 4 + 3  # ceil(13 / 4) + 3


def post(gw: RunningGateway, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": MSG, "max_tokens": 5, "stream": stream}
    return httpx.post(gw.v1 + "/chat/completions", json=body, timeout=10)


@pytest.mark.parametrize(
    ("model", "status", "code", "error_type"),
    [
        ("fail-500", 502, "upstream_server_error", "server_error"),
        ("timeout", 504, "upstream_timeout", "timeout"),
        ("malformed", 502, "upstream_invalid_response", "invalid_response"),
        ("fail-429", 429, "upstream_rate_limited", "rate_limit"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_map_to_gateway_statuses(
    mock_gateway: RunningGateway, model: str, status: int, code: str, error_type: str, stream: bool
) -> None:
    """Failures before any chunk reached the client are plain HTTP errors, streams included."""
    r = post(mock_gateway, model, stream)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    event = mock_gateway.wait_events(1)[0]
    assert event.error_type is not None and event.error_type.value == error_type
    assert event.outcome.value == "error" and event.status == status
    assert (
        mock_gateway.metric(
            "llm_errors_total", model=model, backend="mock", provider="mock", error_type=error_type
        )
        == 1
    )


@pytest.mark.parametrize(("model", "error_type"), [("drop", "network"), ("idle", "timeout")])
def test_stream_broken_midway_ends_with_error_event_and_estimated_tokens(
    mock_gateway: RunningGateway, model: str, error_type: str
) -> None:
    """After 2 tokens the upstream breaks (or goes silent past stream_idle): the client gets
    an in-stream error, and the prompt plus the 2 chunks seen are charged as estimates."""
    r = post(mock_gateway, model, stream=True)
    assert r.status_code == 200
    events = [line for line in r.text.split("\n\n") if line.startswith("data: ")]
    last = orjson.loads(events[-1][len("data: ") :])
    assert last["error"]["type"] == "api_error"
    event = mock_gateway.wait_events(1)[0]
    assert event.outcome.value == "error" and event.error_type is not None
    assert event.error_type.value == error_type
    assert (event.usage.input, event.usage.output) == (PROMPT, 2)
    assert event.token_source.value == "estimated"
    labels = {
        "model": model,
        "backend": "mock",
        "provider": "mock",
        "key": "anonymous",
        "team": "none",
    }
    assert mock_gateway.metric("llm_tokens_total", **labels, type="output", source="estimated") == 2


def test_client_disconnect_cancels_stream_and_records_tokens_so_far(
    mock_gateway: RunningGateway,
) -> None:
    """A client that closes the connection mid-stream: outcome cancelled, tokens so far."""
    host, port = mock_gateway.url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "slow", "messages": MSG, "max_tokens": 50, "stream": True})
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        seen = b""
        while seen.count(b'"content":"') < 4:  # role chunk (empty) + 3 content chunks
            seen += sock.recv(65536)
    event = mock_gateway.wait_events(1)[0]
    assert event.outcome.value == "cancelled" and event.error_type is not None
    assert event.error_type.value == "cancelled" and event.status == 200
    assert event.usage.input == PROMPT
    assert 3 <= event.usage.output < 50  # what had been relayed when the close was seen
    assert event.token_source.value == "estimated"
    assert (
        mock_gateway.metric(
            "llm_requests_total",
            model="slow",
            backend="mock",
            provider="mock",
            key="anonymous",
            team="none",
            outcome="cancelled",
            status_class="2xx",
        )
        == 1
    )


def test_a_client_leaving_before_the_first_chunk_cancels_the_upstream_call_at_once() -> None:
    """An upstream slow to start its stream (a reasoning model can think for minutes): the
    client gives up after 0.3 s. The upstream call is cancelled then, not when its first
    chunk would have come 5 s later, and the request is recorded as cancelled (499, nothing
    was sent) with its prompt charged as an estimate: it was sent, so it may be billed."""
    config = mock_config()
    config["backends"][0]["timeouts"] = {"read": 30.0, "stream_idle": 30.0}
    config["models"].append({"name": "thinking", "backend": "mock", "model": "echo-delay-5000"})
    with run_gateway(config) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        body = orjson.dumps({"model": "thinking", "messages": MSG, "stream": True})
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                + f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)
        left = time.monotonic()
        event = gw.wait_events(1, timeout=10)[0]
        assert time.monotonic() - left < 2.5  # the old watch began with the first byte: 4.7 s
        assert event.duration < 2.5
        assert event.outcome.value == "cancelled" and event.status == 499
        assert event.error_type is not None and event.error_type.value == "cancelled"
        assert (event.usage.input, event.usage.output) == (PROMPT, 0)
        assert event.token_source.value == "estimated"
        labels = {"model": "thinking", "backend": "mock", "provider": "mock", "key": "anonymous"}
        cancelled = {"team": "none", "outcome": "cancelled", "status_class": "4xx"}
        assert gw.metric("llm_requests_total", **labels, **cancelled) == 1


def test_a_client_that_leaves_a_whole_answer_is_recorded_as_cancelled_with_exact_usage() -> None:
    """A non-streamed request whose client gives up (its SDK timed out, say) before the
    answer: the upstream call still completes, so the tokens and cost are the exact ones it
    reported, but the request is recorded as cancelled (499), not as a success nobody got."""
    config = mock_config()
    config["models"].append({"name": "long", "backend": "mock", "model": "echo-delay-800"})
    with run_gateway(config) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        body = orjson.dumps({"model": "long", "messages": MSG, "max_tokens": 3})
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                + f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.2)
        event = gw.wait_events(1)[0]
        assert event.outcome.value == "cancelled" and event.status == 499
        assert event.error_type is not None and event.error_type.value == "cancelled"
        assert event.token_source.value == "reported" and event.usage.output == 3
        # The upstream call ran to its end (800 ms), not to the client's leaving (200 ms);
        # the loop's timers fire to the millisecond, up to ~1 ms early by perf_counter.
        assert event.duration >= 0.79
        labels = {"model": "long", "backend": "mock", "provider": "mock", "key": "anonymous"}
        cancelled = {"team": "none", "outcome": "cancelled", "status_class": "4xx"}
        assert gw.metric("llm_requests_total", **labels, **cancelled) == 1
        # A client that stays gets its answer, recorded as a success.
        r = post(gw, "long")
        assert r.status_code == 200
        assert gw.wait_events(2)[1].outcome.value == "success"


async def test_gateway_keeps_serving_while_streams_are_cancelled(
    mock_gateway: RunningGateway,
) -> None:
    async with openai.AsyncOpenAI(base_url=mock_gateway.v1, api_key="x", max_retries=0) as c:
        for _ in range(5):
            stream = await c.chat.completions.create(
                model="slow",
                messages=MSG,
                max_tokens=40,
                stream=True,  # type: ignore[arg-type]
            )
            # Read one chunk, then close both the iterator and the stream explicitly: an
            # abandoned ``async for`` leaves the SDK's generator to the garbage collector.
            chunks = aiter(stream)
            await anext(chunks)
            await chunks.aclose()  # type: ignore[attr-defined]
            await stream.close()
        out = await c.chat.completions.create(model="chat", messages=MSG, max_tokens=1)  # type: ignore[arg-type]
    assert out.choices[0].message.content == "one"
    events = mock_gateway.wait_events(6)
    assert sorted(e.outcome.value for e in events) == ["cancelled"] * 5 + ["success"]
    await asyncio.sleep(0)
