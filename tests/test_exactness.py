"""Exactness: the gateway's numbers equal the upstream's own ledger.

A mock upstream HTTP server (OpenAI and Anthropic wire formats) records the usage
it returned for every request. After a few hundred randomized requests —
streamed and not, some failing, some cancelled by the client, some broken
mid-stream — every UsageEvent equals its ledger entry, and the Prometheus
token, cost and request counters equal the ledger's totals (cost to 1e-9).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from bench.mock_upstream import MockUpstream
from tests.conftest import RunningGateway, run_gateway
from tollhouse.accounting.pricing import Price, cost
from tollhouse.accounting.usage import Usage

PRICES = {"input": "1.37", "output": "2.91", "cached_input": "0.41", "cache_write_input": "1.73"}

# public name -> (backend, upstream model, streams only?)
MODELS: dict[str, tuple[str, str]] = {
    "o-ok": ("oa", "m"),
    "o-cache": ("oa", "m-cache"),
    "o-reason": ("oa", "m-reason-2"),
    "o-fail-500": ("oa", "m-fail-500"),
    "o-fail-429": ("oa", "m-fail-429"),
    "o-malformed": ("oa", "m-malformed"),
    "o-cancel": ("oa", "m-hang-after-3"),
    "o-drop": ("oa", "m-drop-after-2"),
    "a-ok": ("an", "claude-x"),
    "a-cache": ("an", "claude-x-cache"),
    "a-fail-529": ("an", "claude-x-fail-529"),
    "a-cancel": ("an", "claude-x-hang-after-3"),
}
STREAM_ONLY = {"o-cancel", "o-drop", "a-cancel"}
CANCEL_AFTER = 3


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[MockUpstream, RunningGateway]]:
    with MockUpstream() as up:
        config = {
            "server": {"access_log": False},
            "backends": [
                {"name": "oa", "provider": "openai", "base_url": up.base_url + "/v1",
                 "prices": PRICES, "timeouts": {"read": 5, "stream_idle": 5}},
                {"name": "an", "provider": "anthropic", "base_url": up.base_url,
                 "prices": PRICES, "timeouts": {"read": 5, "stream_idle": 5}},
            ],
            "models": [{"name": n, "backend": b, "model": m} for n, (b, m) in MODELS.items()],
        }  # fmt: skip
        with run_gateway(config) as gw:
            yield up, gw


def plan(rng: random.Random, n: int) -> list[dict[str, Any]]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    out = []
    for i in range(n):
        model = rng.choice(list(MODELS))
        stream = model in STREAM_ONLY or rng.random() < 0.5
        messages = [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "be brief " * rng.randint(1, 5)})
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream,
                                "max_tokens": rng.randint(1, 24)}  # fmt: skip
        if model.endswith("-cancel"):
            body["max_tokens"] = rng.randint(CANCEL_AFTER + 1, 24)  # enough to reach the hang
        if stream and rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
        out.append({"id": f"req-{i:04d}", "body": body})
    return out


async def send_one(http: aiohttp.ClientSession, url: str, item: dict[str, Any]) -> int:
    body = item["body"]
    headers = {"x-request-id": item["id"]}
    async with http.post(url, json=body, headers=headers) as resp:
        if not body["stream"] or resp.status != 200:
            await resp.read()
            return resp.status
        if body["model"].endswith("-cancel"):
            seen = 0
            async for line in resp.content:
                chunk = orjson.loads(line[6:]) if line.startswith(b"data: {") else {}
                assert "error" not in chunk, (item, chunk)
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    seen += 1
                    if seen == CANCEL_AFTER:
                        resp.close()  # the client goes away mid-stream
                        return 499
        await resp.read()
        return resp.status


async def drive(gw: RunningGateway, items: list[dict[str, Any]]) -> list[int]:
    limit = asyncio.Semaphore(16)
    url = gw.v1 + "/chat/completions"
    async with aiohttp.ClientSession() as http:

        async def one(item: dict[str, Any]) -> int:
            async with limit:
                return await send_one(http, url, item)

        return await asyncio.gather(*(one(i) for i in items))


def test_gateway_numbers_equal_the_upstream_ledger(
    setup: tuple[MockUpstream, RunningGateway],
) -> None:
    up, gw = setup
    items = plan(random.Random(20261123), 320)
    statuses = asyncio.run(drive(gw, items))
    events = {e.request_id: e for e in gw.wait_events(len(items), timeout=20)}
    ledger = {entry.request_id: entry for entry in up.ledger()}
    assert len(events) == len(items) == len(ledger)

    price = gw.app.gateway.router.resolve("o-ok").deployments[0].price if gw.app.gateway else None
    assert isinstance(price, Price)

    # request by request: the event's usage is what the upstream says it served
    for item, status in zip(items, statuses, strict=True):
        event, entry = events[item["id"]], ledger[item["id"]]
        assert event.usage == entry.usage, (item, event, entry)
        assert event.cost == cost(entry.usage, price)
        if item["body"]["model"].endswith("-cancel"):
            assert status == 499 and event.outcome.value == "cancelled"
        elif status == 200 and not item["body"]["model"].endswith("-drop"):
            assert event.outcome.value == "success"

    # the counters equal the ledger's totals, type by type
    total = sum((e.usage for e in ledger.values()), Usage())
    for kind in ("input", "output", "cached_input", "cache_write_input", "reasoning"):
        assert gw.total("llm_tokens_total", type=kind) == getattr(total, kind), kind
    exact = sum((cost(e.usage, price) for e in ledger.values()), Decimal(0))
    assert gw.total("llm_cost_usd_total") == pytest.approx(float(exact), abs=1e-9)
    assert sum((e.cost or Decimal(0) for e in events.values()), Decimal(0)) == exact

    # request counts by outcome match what the clients saw
    outcomes = Counter(e.outcome.value for e in events.values())
    assert gw.total("llm_requests_total") == len(items)
    for outcome, count in outcomes.items():
        assert gw.total("llm_requests_total", outcome=outcome) == count
    assert outcomes["cancelled"] == sum(1 for s in statuses if s == 499) > 10
    assert outcomes["error"] > 10 and outcomes["success"] > 100
    cancelled = [e for e in ledger.values() if e.outcome == "cancelled"]
    assert len(cancelled) == outcomes["cancelled"]
