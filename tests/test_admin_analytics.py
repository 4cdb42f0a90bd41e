"""Usage analytics: equal to the Prometheus counters, exact across roll-up edges, top-N series."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.keyhelpers import gateway_config
from tests.test_admin_api import admin_client, admin_gateway, ok
from tests.test_store_engine import BACKENDS, open_store
from tollhouse.admin import usage
from tollhouse.store import rollup
from tollhouse.store.analytics import Agg, Query, aggregate
from tollhouse.store.engine import Store

MSG = [{"role": "user", "content": "count this exactly"}]
TOKEN_TYPES = ("input", "output", "cached_input", "cache_write_input", "reasoning")


def drive_mixed_traffic(gw: Any, api: httpx.Client) -> int:
    """Several keys, models, streams, failures, refusals and an unpriced model; returns count."""
    secrets = [ok(api.post("/keys", json={"alias": f"k{i}"}), 201)["secret"] for i in range(3)]
    ok(api.post("/keys", json={"alias": "narrow", "models": ["chat"]}), 201)
    plan = [("chat", False), ("cached", False), ("slow", True), ("fail-500", False),
            ("fail-429", False), ("embed", None), ("unpriced", False), ("drop", True),
            ("nope", False)]  # fmt: skip
    sent = 0
    with httpx.Client(base_url=gw.v1, timeout=10) as http:
        for i, (model, stream) in enumerate(plan * 2):
            auth = {"authorization": f"Bearer {secrets[i % 3]}"}
            if stream is None:
                http.post("/embeddings", json={"model": model, "input": "x y z"}, headers=auth)
            else:
                body = {"model": model, "messages": MSG, "max_tokens": 4, "stream": stream,
                        "user": f"end-{i % 2}"}  # fmt: skip
                http.post("/chat/completions", json=body, headers=auth)
            sent += 1
        bad = {"authorization": "Bearer sk-th-not-a-real-key"}
        http.post("/chat/completions", json={"model": "chat", "messages": MSG}, headers=bad)
    return sent + 1


def settle(gw: Any, api: httpx.Client, count: int, folded: bool) -> None:
    """Wait for every event, the ledger's backlog and (if ``folded``) the roll-up to drain."""
    gw.wait_events(count)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = ok(api.get("/health"))
        if (
            h["ledger_backlog"] == 0
            and h["ledger_rows_written"] >= count
            and (not folded or h["rollup_pending_rows"] == 0)
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"ledger or roll-up did not drain: {h}")


def compare(gw: Any, api: httpx.Client) -> None:
    everything = ok(api.get("/usage"))
    assert everything["requests"] == gw.total("llm_requests_total") > 0
    for t in TOKEN_TYPES:
        assert everything["tokens"][t] == gw.total("llm_tokens_total", type=t), t
    assert Decimal(everything["cost_usd"]) > 0
    assert float(everything["cost_usd"]) == pytest.approx(gw.total("llm_cost_usd_total"), rel=1e-9)
    assert everything["unpriced_requests"] == gw.total("llm_unpriced_requests_total")
    errors = Counter(
        {s: gw.total("llm_errors_total", error_type=s) for s in everything["errors_by_type"]}
    )
    assert everything["errors_by_type"] == {k: int(v) for k, v in errors.items()}
    assert sum(everything["errors_by_type"].values()) == gw.total("llm_errors_total")
    assert everything["successes"] == gw.total("llm_requests_total", outcome="success")
    for key in ("k0", "k1", "k2", "anonymous"):
        one = ok(api.get("/usage", params={"key": key}))
        assert one["requests"] == gw.total("llm_requests_total", key=key), key
        assert float(one["cost_usd"]) == pytest.approx(gw.total("llm_cost_usd_total", key=key))
        assert one["tokens"]["output"] == gw.total("llm_tokens_total", key=key, type="output")
    for model in ("chat", "slow", "unpriced", "none"):
        one = ok(api.get("/usage", params={"model": model}))
        assert one["requests"] == gw.total("llm_requests_total", model=model), model
    assert ok(api.get("/usage", params={"provider": "mock"}))["requests"] == gw.total(
        "llm_requests_total", provider="mock")  # fmt: skip
    end_user = ok(api.get("/usage", params={"end_user": "end-0"}))
    assert end_user["requests"] == sum(1 for e in gw.events if e.end_user == "end-0")
    series = ok(api.get("/usage/series", params={"metric": "requests", "step": "1m",
                                                  "group_by": "key", "top": 2}))  # fmt: skip
    assert sum(s["total"] for s in series["series"]) == everything["requests"]
    assert len(series["series"]) == 3 and series["series"][-1]["group"] == "__other__"


def test_usage_totals_equal_the_prometheus_counters(store_url: str) -> None:
    """The same mixed traffic, counted by /metrics and by the ledger, before and after roll-up."""
    from tollhouse.admin.settings import AdminSettings

    config = gateway_config(store_url)
    config["backends"].append({"name": "free", "provider": "mock"})
    config["models"].append({"name": "unpriced", "backend": "free", "model": "echo"})
    slow_fold = AdminSettings(rollup_interval=3600, rate=1000, burst=1000)
    with admin_gateway(config, slow_fold) as gw, admin_client(gw) as api:
        count = drive_mixed_traffic(gw, api)
        settle(gw, api, count, folded=False)
        assert ok(api.get("/health"))["rollup_pending_rows"] == count  # all read raw
        compare(gw, api)
        assert asyncio.run(_fold(store_url)) >= count
        assert ok(api.get("/health"))["rollup_pending_rows"] == 0
        hour = int(time.time()) // 3600 * 3600  # whole hours only: all from the roll-up
        week = {"start": str(hour - 7 * 86400), "end": str(hour + 3600)}
        with_rollup = ok(api.get("/usage", params=week))
        assert with_rollup["requests"] == gw.total("llm_requests_total")
        assert float(with_rollup["cost_usd"]) == pytest.approx(gw.total("llm_cost_usd_total"))
        assert with_rollup["tokens"]["input"] == gw.total("llm_tokens_total", type="input")
        compare(gw, api)


async def _fold(url: str) -> int:
    async with Store(url) as store:
        return await rollup.fold_all(store.engine)


def _row(i: int, ts: datetime, rng: random.Random) -> dict[str, Any]:
    outcome = rng.choice(["success", "success", "error", "cancelled"])
    return {
        "request_id": f"r{i}", "ts": ts, "operation": "chat", "key_alias": rng.choice("abc"),
        "team": "t", "user": "u", "end_user": rng.choice(["e1", "e2"]),
        "model": rng.choice(["m1", "m2", "m3"]), "backend": "b", "provider": "p",
        "upstream_model": "x", "stream": False, "outcome": outcome, "status": 200,
        "error_type": "timeout" if outcome == "error" else None,
        "input_tokens": rng.randint(0, 50), "output_tokens": rng.randint(0, 50),
        "cached_input_tokens": rng.randint(0, 5), "cache_write_input_tokens": 0,
        "reasoning_tokens": rng.randint(0, 3), "token_source": "reported",
        "cost_pusd": rng.choice([None, rng.randint(0, 10**15)]), "price_source": None,
        "duration_ms": rng.uniform(1, 5000), "upstream_ms": None,
        "ttft_ms": rng.choice([None, rng.uniform(1, 100)]),
        "event_id": uuid.uuid4().hex,  # unique, as the ledger writer makes them
    }  # fmt: skip


def _expected(rows: list[dict[str, Any]], start: datetime, end: datetime, **f: str) -> Any:
    """(requests, pico-USD, input tokens, outcomes, TTFT count) of the matching rows."""
    hits = [r for r in rows if start <= r["ts"] < end and all(r[k] == v for k, v in f.items())]
    outcomes = Counter({"success": 0, "error": 0, "cancelled": 0})
    outcomes.update(r["outcome"] for r in hits)
    return (len(hits), sum(r["cost_pusd"] or 0 for r in hits),
            sum(r["input_tokens"] for r in hits), dict(outcomes),
            sum(r["ttft_ms"] is not None for r in hits))  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
async def test_rollup_and_ledger_agree_for_any_window(backend: str, tmp_path: Path) -> None:
    """Partly folded, windows cutting hours at odd seconds: totals equal the rows' own sums."""
    rng = random.Random(7)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    # rows at random instants, plus some within a millisecond of an hour's end
    stamps = [base + timedelta(seconds=rng.uniform(0, 3 * 86400)) for _ in range(3000)]
    stamps += [base + timedelta(hours=h, microseconds=-rng.randint(1, 900)) for h in range(1, 60)]
    rows = [_row(i, ts, rng) for i, ts in enumerate(stamps)]
    async with open_store(backend, tmp_path) as store:
        await store.ledger.insert(rows[:2000])
        await rollup.fold_all(store.engine, batch=700)
        await store.ledger.insert(rows[2000:])
        await rollup.fold(store.engine, batch=500)  # the rest stays above the watermark
        for _ in range(12):
            start = base + timedelta(seconds=rng.uniform(-3600, 2 * 86400))
            end = start + timedelta(seconds=rng.uniform(1, 2 * 86400))
            for api, filters in (({}, {}), ({"key": "a"}, {"key_alias": "a"}),
                                 ({"end_user": "e2"}, {"end_user": "e2"})):  # fmt: skip
                got = Agg()
                for part in (await aggregate(store.engine, Query(start, end, api))).values():
                    got.merge(part)
                seen = (got.requests, got.cost_pusd, got.tokens["input"], got.outcomes,
                        got.get("ttft_count"))  # fmt: skip
                assert seen == _expected(rows, start, end, **filters), (start, end, filters)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_series_top_n_and_the_rest(backend: str, tmp_path: Path) -> None:
    rng = random.Random(3)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [_row(i, base + timedelta(seconds=rng.uniform(0, 86400)), rng) for i in range(900)]
    async with open_store(backend, tmp_path) as store:
        await store.ledger.insert(rows)
        await rollup.fold_all(store.engine)
        end = base + timedelta(days=1)
        out = await usage.series(store.engine, "requests", base, end, "6h", "model", 2, {})
        assert [t.hour for t in out.timestamps] == [0, 6, 12, 18]
        counts = Counter(r["model"] for r in rows)
        top = [m for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]]
        assert [s.group for s in out.series] == [*top, "__other__"]
        for s in out.series:
            assert s.total == sum(v or 0 for v in s.values)
        assert sum(s.total or 0 for s in out.series) == 900
        cost = await usage.series(store.engine, "cost", base, end, "1d", None, 5, {})
        want = sum(r["cost_pusd"] or 0 for r in rows) / 10**12
        assert cost.series[0].values == [pytest.approx(want)]
        p95 = await usage.series(store.engine, "latency_p95", base, end, "1h", "key", 1, {})
        assert all(v is None or 0 < v <= 327680 for s in p95.series for v in s.values)


async def test_two_folders_never_count_a_row_twice(tmp_path: Path) -> None:
    """Concurrent folds (two replicas) serialize on the watermark row."""
    rng = random.Random(5)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [_row(i, base + timedelta(seconds=rng.uniform(0, 86400)), rng) for i in range(5000)]
    async with open_store("postgresql", tmp_path) as store:
        await store.ledger.insert(rows)
        await asyncio.gather(*(rollup.fold_all(store.engine, batch=300) for _ in range(4)))
        total = await usage.totals(store.engine, base, base + timedelta(days=1), {})
        assert total.requests == 5000


def test_quantile_interpolates_like_histogram_quantile() -> None:
    cumulative = [0] * 4 + [100] * 12  # 100 observations, all in (80 ms, 160 ms]
    assert usage.quantile(0.5, 100, cumulative) == pytest.approx(120.0)
    assert usage.quantile(0.95, 100, cumulative) == pytest.approx(156.0)
    assert usage.quantile(0.5, 0, [0] * 16) is None
    assert usage.quantile(0.99, 10, [0] * 16) == 327680.0  # all above the last bound: that bound


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1732406400", datetime(2024, 11, 24, tzinfo=UTC)),
     ("1732406400.5", datetime(2024, 11, 24, 0, 0, 0, 500000, tzinfo=UTC)),
     ("2024-11-24T00:00:00Z", datetime(2024, 11, 24, tzinfo=UTC)),
     ("2024-11-24T02:00:00+02:00", datetime(2024, 11, 24, tzinfo=UTC))],
)  # fmt: skip
def test_times_are_unix_seconds_or_rfc3339(text: str, expected: datetime) -> None:
    assert usage.parse_time(text, datetime.now(UTC)) == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-11-24T00:00:00", "nan", "1e300"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|out of range"):
        usage.parse_time(text, datetime.now(UTC))


def test_default_window_is_the_last_24_hours() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert usage.window(None, None, now) == (datetime(2026, 1, 1, tzinfo=UTC), now)
    with pytest.raises(ValueError, match="at most"):
        usage.window("0", None, now)
