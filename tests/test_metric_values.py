"""Documented metrics carry the right values, not just a sample (docs/metrics.md).

``tests/test_metrics_catalog.py`` proves every metric is emitted; here each one is
checked against a ground truth: the mock upstream's own headers and delays, the
time a sink blocked the event loop on purpose, a ledger table taken away, a
budget reservation seen while its request is still running.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.mock_upstream import RATELIMIT_REQUESTS, RATELIMIT_TOKENS, MockUpstream
from tests.conftest import RunningGateway, mock_config, run_gateway
from tollhouse.accounting.event import UsageEvent

MSG = [{"role": "user", "content": "measure me"}]
UPSTREAM_DELAY = 0.2  # seconds: the mock's ``delay-200`` before its response headers
CHUNK_DELAY = 0.03  # seconds: the mock's ``chunkdelay-30`` between stream chunks


@pytest.fixture(scope="module")
def up() -> Iterator[MockUpstream]:
    with MockUpstream() as upstream:
        yield upstream


def upstream_config(up: MockUpstream) -> dict[str, Any]:
    """An OpenAI backend on the HTTP mock: a plain model, a slow one and a chunk-paced one."""
    return {
        "server": {"access_log": False},
        "backends": [{"name": "up", "provider": "openai", "base_url": up.base_url + "/v1",
                      "prices": {"input": 1, "output": 2},
                      "timeouts": {"read": 5, "stream_idle": 5}}],
        "models": [{"name": "plain", "backend": "up", "model": "m"},
                   {"name": "wait", "backend": "up", "model": "m-delay-200"},
                   {"name": "paced", "backend": "up", "model": "m-chunkdelay-30"}],
    }  # fmt: skip


def post(gw: RunningGateway, model: str, **body: Any) -> httpx.Response:
    payload = {"model": model, "messages": MSG, "max_tokens": 4, **body}
    return httpx.post(gw.v1 + "/chat/completions", json=payload, timeout=10)


def scrape(gw: RunningGateway) -> str:
    """A real ``GET /metrics``: it refreshes the scrape-time gauges the registry then holds."""
    r = httpx.get(gw.url + "/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def until(predicate: Callable[[], bool], within: float = 5.0, every: float = 0.005) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)


def test_durations_overhead_and_time_per_token_in_gateway_mode(up: MockUpstream) -> None:
    """Gateway mode with memory counters (no Redis), an upstream that waits 200 ms.

    ``llm_request_duration_seconds`` and ``llm_upstream_duration_seconds`` must both
    contain the 200 ms; ``llm_gateway_overhead_seconds`` must not (it is the request
    minus the upstream wait: were the wait not subtracted, its sum would exceed the
    request sum minus 2 x 200 ms). Only the stream observes
    ``llm_time_per_output_token_seconds``, at about the mock's 30 ms per chunk.
    """
    with run_gateway(upstream_config(up)) as gw:
        assert [post(gw, "wait").status_code for _ in range(2)] == [200, 200]
        with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=10,
                          json={"model": "paced", "messages": MSG, "max_tokens": 6,
                                "stream": True}) as r:  # fmt: skip
            assert r.status_code == 200
            r.read()
        events = gw.wait_events(3)
        labels = {"model": "wait", "backend": "up", "provider": "openai"}

        req = {**labels, "outcome": "success", "stream": "false"}
        assert gw.metric("llm_request_duration_seconds_count", **req) == 2
        request_sum = gw.metric("llm_request_duration_seconds_sum", **req)
        assert request_sum >= 2 * UPSTREAM_DELAY
        assert gw.metric("llm_request_duration_seconds_bucket", **req, le="0.16") == 0
        assert gw.metric("llm_request_duration_seconds_bucket", **req, le="+Inf") == 2
        assert request_sum == pytest.approx(sum(e.duration for e in events[:2]))

        assert gw.metric("llm_upstream_duration_seconds_count", **labels) == 2
        upstream_sum = gw.metric("llm_upstream_duration_seconds_sum", **labels)
        assert 2 * UPSTREAM_DELAY <= upstream_sum <= request_sum

        # one observation per request served, by stream flag
        assert gw.metric("llm_gateway_overhead_seconds_count", stream="false") == 2
        assert gw.metric("llm_gateway_overhead_seconds_count", stream="true") == 1
        overhead = gw.metric("llm_gateway_overhead_seconds_sum", stream="false")
        assert 0 < overhead < request_sum - 2 * UPSTREAM_DELAY
        all_overhead = gw.total("llm_gateway_overhead_seconds_sum")
        assert 0 < all_overhead < gw.total("llm_request_duration_seconds_sum")

        paced = {"model": "paced", "backend": "up", "provider": "openai"}
        assert gw.metric("llm_time_per_output_token_seconds_count", **paced) == 1
        tpot = gw.metric("llm_time_per_output_token_seconds_sum", **paced)
        assert CHUNK_DELAY * 0.6 <= tpot < CHUNK_DELAY * 4  # 5 gaps of ~30 ms after the first
        assert tpot == pytest.approx(events[2].time_per_output_token)
        assert gw.metric("llm_time_per_output_token_seconds_count", **labels) == 0  # not a stream


def mock_remaining(up: MockUpstream) -> tuple[float, float]:
    """The mock's current quota, from the headers of a free ``GET /v1/models`` (it consumes
    nothing, so these are the values the last answer carried)."""
    r = httpx.get(up.base_url + "/v1/models", timeout=5)
    return (
        float(r.headers["x-ratelimit-remaining-requests"]),
        float(r.headers["x-ratelimit-remaining-tokens"]),
    )


def test_upstream_ratelimit_gauges_follow_the_last_answers_headers(up: MockUpstream) -> None:
    """After each answer the gauges equal that answer's ``x-ratelimit-remaining-*`` headers
    (the mock counts down per request and per token, so each answer's values differ)."""
    up.reset()
    labels = {"backend": "up", "upstream_model": "m"}
    with run_gateway(upstream_config(up)) as gw:
        used_tokens = 0
        for n, max_tokens in enumerate((3, 11, 7), start=1):
            r = post(gw, "plain", max_tokens=max_tokens)
            assert r.status_code == 200
            used_tokens += r.json()["usage"]["total_tokens"]
            gw.wait_events(n)
            requests_left, tokens_left = mock_remaining(up)
            assert (requests_left, tokens_left) == (
                RATELIMIT_REQUESTS - n,
                RATELIMIT_TOKENS - used_tokens,
            )
            assert gw.metric("llm_upstream_ratelimit_remaining_requests", **labels) == requests_left
            assert gw.metric("llm_upstream_ratelimit_remaining_tokens", **labels) == tokens_left


def test_store_and_limits_latency_are_measured_at_scrape() -> None:
    """SQLite store: a real ``SELECT 1`` round trip, so above zero, and only after a scrape
    measured it; memory counters: exactly 0, as documented (no round trip to make)."""
    with run_gateway(mock_config()) as gw:
        assert gw.registry.get_sample_value("tollhouse_store_latency_seconds") is None
        text = scrape(gw)
        store = gw.registry.get_sample_value("tollhouse_store_latency_seconds")
        assert store is not None and 0 < store < 1
        assert "tollhouse_store_latency_seconds " in text
        limits = gw.registry.get_sample_value(
            "tollhouse_limits_latency_seconds", {"backend": "memory"}
        )
        assert limits == 0.0
        assert 'tollhouse_limits_latency_seconds{backend="memory"} 0.0' in text


BLOCK = 0.7  # seconds a sink holds the event loop; longer than the lag probe's 0.5 s period
PROBE_INTERVAL = 0.5  # AdminSettings.lag_interval, the default run_gateway uses


def test_event_loop_lag_shows_a_loop_blocked_on_purpose() -> None:
    """A sink that sleeps synchronously blocks the loop for 0.7 s. At least one of the
    probe's 0.5 s wake-ups falls inside the block, so it wakes at least 0.2 s late and the
    gauge reports that; the next measurement on a free loop brings it back near 0 (the
    gauge is the last measurement, not a maximum)."""

    def blocking_sink(event: UsageEvent) -> None:
        if event.model == "chat":
            time.sleep(BLOCK)

    with run_gateway(mock_config(), extra_sinks=[blocking_sink]) as gw:
        time.sleep(PROBE_INTERVAL * 1.5)  # the probe has run at least once
        idle = gw.registry.get_sample_value("tollhouse_event_loop_lag_seconds")
        assert idle is not None and 0 <= idle < BLOCK / 2
        worker = threading.Thread(target=lambda: post(gw, "chat"))
        worker.start()
        until(lambda: gw.metric("tollhouse_event_loop_lag_seconds") >= 0.1, within=5)
        assert gw.metric("tollhouse_event_loop_lag_seconds") <= BLOCK + 0.5
        worker.join()
        until(lambda: gw.metric("tollhouse_event_loop_lag_seconds") < 0.1, within=5)


def rename_table(db: Path, old: str, new: str) -> None:
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


def test_ledger_write_errors_count_refused_batches(tmp_path: Path) -> None:
    """The ledger table is renamed away under the running gateway: each batch write fails,
    is counted in ``tollhouse_ledger_write_errors_total`` and retried; the row waits in the
    backlog and is written once the table is back."""
    db = tmp_path / "store.db"
    config = mock_config()
    config["store"] = {"url": f"sqlite+aiosqlite:///{db}"}
    config["ledger"] = {"flush_interval": 0.05, "retry_interval": 0.05}
    with run_gateway(config) as gw:
        assert post(gw, "chat").status_code == 200
        gw.wait_events(1)

        def written() -> float:
            scrape(gw)
            return gw.metric("tollhouse_ledger_rows_written_total")

        until(lambda: written() == 1)
        assert gw.metric("tollhouse_ledger_write_errors_total") == 0
        rename_table(db, "ledger", "ledger_offline")
        assert post(gw, "chat").status_code == 200
        gw.wait_events(2)

        def errors() -> float:
            scrape(gw)
            return gw.metric("tollhouse_ledger_write_errors_total")

        until(lambda: errors() >= 2)  # refused, retried, refused again
        assert gw.metric("tollhouse_ledger_backlog") == 1
        assert gw.metric("tollhouse_ledger_rows_written_total") == 1
        rename_table(db, "ledger_offline", "ledger")
        until(lambda: written() == 2)
        assert gw.metric("tollhouse_ledger_backlog") == 0
        assert gw.metric("tollhouse_ledger_write_errors_total") >= 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (2,)


def test_budget_reserved_while_a_request_is_in_flight() -> None:
    """A backend budget and a request held 500 ms by the upstream: while it runs the
    budget holds its worst-case cost (1000 output tokens at 2.5 USD per million at least),
    and remaining is limit minus reserved; once it ends the reservation is released
    (back to 0) and the actual cost is spent (the echo mock writes all 1000 tokens, so the
    worst case was exact)."""
    config = mock_config()
    config["models"].append({"name": "wait", "backend": "mock", "model": "echo-delay-500"})
    config["budgets"] = [{"scope": "backend", "name": "mock", "max_usd": "10", "period": "daily"}]
    budget = {"scope": "backend", "entity": "mock", "period": "daily"}
    with run_gateway(config) as gw:
        result: list[int] = []
        worker = threading.Thread(
            target=lambda: result.append(post(gw, "wait", max_tokens=1000).status_code)
        )
        worker.start()

        def reserved() -> float:
            scrape(gw)
            return gw.metric("llm_budget_reserved_usd", **budget)

        until(lambda: reserved() > 0, within=3, every=0.02)
        held = gw.metric("llm_budget_reserved_usd", **budget)
        assert held >= 1000 * 2.5 / 1e6
        assert gw.metric("llm_budget_spend_usd", **budget) == 0
        assert gw.metric("llm_budget_remaining_usd", **budget) == pytest.approx(10 - held)
        worker.join()
        assert result == [200]
        event = gw.wait_events(1)[0]
        scrape(gw)
        assert gw.metric("llm_budget_reserved_usd", **budget) == 0
        spent = gw.metric("llm_budget_spend_usd", **budget)
        assert spent == pytest.approx(float(event.cost)) and 0 < spent <= held * (1 + 1e-9)
