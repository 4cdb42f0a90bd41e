"""The embedded defaults (docs/configuration.md "The embedded defaults"): every model
they list behaves as the table says, and the mock backend's prices are the ones given,
through the real gateway (only the `read` timeout is shortened, so `mock-timeout`
fires in a test's time rather than after 600 s)."""

from __future__ import annotations

import copy
import itertools
import re
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway, run_gateway
from tollhouse.config.defaults import DEFAULT_CONFIG

MSG = [{"role": "user", "content": "hello tollhouse"}]


@pytest.fixture(scope="module")
def gw() -> Any:
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["backends"][0]["timeouts"] = {"read": 0.5}
    with run_gateway(config) as running:
        yield running


def chat(gw: RunningGateway, model: str, **body: Any) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", timeout=10,
                      json={"model": model, "messages": MSG, **body})  # fmt: skip


def event_of(gw: RunningGateway, response: httpx.Response) -> Any:
    """The response's event, by request id (events are emitted a loop turn after the
    answer, so another test's may land after this request's count was taken)."""
    rid = response.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [e for e in list(gw.events) if e.request_id == rid]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no event for request {rid}")


def test_the_models_listed_are_the_models_served(gw: RunningGateway) -> None:
    listed = [m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]]
    assert listed == [m["name"] for m in DEFAULT_CONFIG["models"]]
    assert listed == ["mock-chat", "mock-embed", "mock-slow", "mock-fail-429",
                      "mock-fail-500", "mock-timeout", "mock-drop"]  # fmt: skip


def test_mock_chat_answers_and_is_priced_at_the_documented_prices(gw: RunningGateway) -> None:
    r = chat(gw, "mock-chat")
    assert (
        r.status_code == 200 and "hello tollhouse" in r.json()["choices"][0]["message"]["content"]
    )
    event = event_of(gw, r)
    usage = event.usage
    expected = (Decimal(usage.input - usage.cached_input) * Decimal("1.00")
                + Decimal(usage.cached_input) * Decimal("0.50")
                + Decimal(usage.output) * Decimal("2.00")) / 1_000_000  # fmt: skip
    assert usage.input > 0 and usage.output > 0 and event.cost == expected


def test_mock_embed_serves_embeddings(gw: RunningGateway) -> None:
    r = httpx.post(gw.v1 + "/embeddings", json={"model": "mock-embed", "input": "x"}, timeout=10)
    assert r.status_code == 200 and r.json()["data"][0]["embedding"]


def test_mock_slow_waits_500_ms_then_50_ms_between_chunks(gw: RunningGateway) -> None:
    started = time.perf_counter()
    assert chat(gw, "mock-slow").status_code == 200
    assert time.perf_counter() - started >= 0.49  # 500 ms; loop timers may fire ~1 ms early
    arrivals: list[float] = []
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=10,
                      json={"model": "mock-slow", "messages": MSG, "stream": True}) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter())
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert len(arrivals) >= 3 and gaps[len(gaps) // 2] >= 0.04  # 50 ms, less timer slack


@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("mock-fail-429", 429, "rate_limit"),
        ("mock-fail-500", 502, "server_error"),
        ("mock-timeout", 504, "timeout"),
    ],
)
def test_the_failing_models_fail_as_documented(
    gw: RunningGateway, model: str, status: int, error_type: str
) -> None:
    r = chat(gw, model)
    assert r.status_code == status and r.json()["error"]["message"]
    event = event_of(gw, r)
    assert (event.outcome.value, event.error_type.value) == ("error", error_type)


def test_mock_drop_streams_3_tokens_then_breaks(gw: RunningGateway) -> None:
    longer = [{"role": "user", "content": "one two three four five six"}]  # echoed: 6 tokens
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=10,
                      json={"model": "mock-drop", "messages": longer, "stream": True}) as r:  # fmt: skip
        assert r.status_code == 200
        text = "".join(r.iter_text())
    words = re.findall(r'"content":"([^"]+)"', text)
    assert words == ["one", " two", " three"] and "[DONE]" not in text
    assert '"code":"upstream_unreachable"' in text  # the stream ends with an error event
    event = event_of(gw, r)
    assert (event.outcome.value, event.error_type.value) == ("error", "network")
    assert event.usage.output == 3
