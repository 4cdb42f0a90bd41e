"""Budgets hold under concurrency, spend down exactly, survive restarts, and their gauges show
what a user computes by hand — with counters in memory and in Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import httpx
import pytest

from tests.conftest import mid_minute_clock, run_gateway, run_sync
from tests.keyhelpers import gateway_config, manage
from tollhouse.accounting.tokens import estimate_prompt_tokens
from tollhouse.identity.manage import LimitsInput, Manager
from tollhouse.store.engine import Store

MSG = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens by the documented estimate
BODY = {"model": "chat", "messages": MSG, "max_tokens": 10}
# 5 input at 1.5 + 10 output at 2.5 USD per million: the mock answers exactly max_tokens
COST = Decimal("0.0000325")


def ledger_spend(url: str, scope: str) -> dict[str, Decimal]:
    async def read() -> dict[str, int]:
        async with Store(url) as store:
            return await store.ledger.spend_since(scope, 0)  # type: ignore[arg-type]

    result: dict[str, int] = run_sync(read())
    return {k: Decimal(v) / 10**12 for k, v in result.items()}


async def burst(url: str, secrets: list[str], n: int) -> Counter[str]:
    """``n`` requests at once (spread over the keys); counts outcomes by status and code."""
    out: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            headers = {"authorization": f"Bearer {secrets[i % len(secrets)]}"}
            async with http.post(url, json=BODY, headers=headers) as r:
                data = await r.json()
                out[str(r.status) if r.status == 200 else data["error"]["code"]] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


def test_500_concurrent_requests_never_overshoot_a_key_budget(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    budget = COST * Decimal("12.5")  # room for exactly 12 requests
    new = manage(store_url, lambda m: m.create_key("k", limits=LimitsInput(max_budget_usd=budget)))
    with run_gateway(gateway_config(store_url, limits_config)) as gw:
        outcomes = asyncio.run(burst(gw.v1 + "/chat/completions", [new.secret], 500))
        gw.wait_events(500, timeout=30)
        assert gw.metric("llm_rejections_total", reason="budget", scope="key") == 488
    assert outcomes == Counter({"200": 12, "budget_exceeded": 488})
    spent = ledger_spend(store_url, "key_alias")["k"]
    assert spent == 12 * COST <= budget


def test_one_after_another_a_key_spends_down_to_less_than_one_request(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    budget = Decimal("0.0005")  # 15.38 requests' worth
    new = manage(
        store_url, lambda m: m.create_key("seq", limits=LimitsInput(max_budget_usd=budget))
    )
    auth = {"authorization": f"Bearer {new.secret}"}
    with (
        run_gateway(gateway_config(store_url, limits_config)) as gw,
        httpx.Client(base_url=gw.v1) as http,
    ):
        statuses = [http.post("/chat/completions", json=BODY, headers=auth) for _ in range(20)]
        codes = [r.status_code for r in statuses]
        assert codes == [200] * 15 + [429] * 5
        refused = statuses[15].json()["error"]
        assert refused["code"] == "budget_exceeded" and refused["type"] == "insufficient_quota"
        assert int(statuses[15].headers["retry-after"]) > 0
    spent = ledger_spend(store_url, "key_alias")["seq"]
    assert budget - spent < COST  # less than one request's worth was left unused
    assert spent == 15 * COST


def test_a_team_budget_is_shared_by_its_keys_under_concurrency(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    budget = COST * Decimal("20.5")

    async def setup(m: Manager) -> list[str]:
        await m.create_team("squad", LimitsInput(max_budget_usd=budget), None)
        return [(await m.create_key(f"member{i}", team="squad")).secret for i in range(3)]

    secrets = manage(store_url, setup)
    with run_gateway(gateway_config(store_url, limits_config)) as gw:
        outcomes = asyncio.run(burst(gw.v1 + "/chat/completions", secrets, 500))
        gw.wait_events(500, timeout=30)
    assert outcomes == Counter({"200": 20, "budget_exceeded": 480})
    assert ledger_spend(store_url, "team")["squad"] == 20 * COST <= budget


def test_spend_survives_a_restart(store_url: str, limits_config: dict[str, Any]) -> None:
    """Counters are rebuilt from the ledger at start (memory) or kept (Redis), never doubled."""
    budget = COST * Decimal("10.5")
    new = manage(store_url, lambda m: m.create_key("r", limits=LimitsInput(max_budget_usd=budget)))
    auth = {"authorization": f"Bearer {new.secret}"}
    config = gateway_config(store_url, limits_config)
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        assert [http.post("/chat/completions", json=BODY, headers=auth).status_code
                for _ in range(6)] == [200] * 6  # fmt: skip
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        codes = [
            http.post("/chat/completions", json=BODY, headers=auth).status_code for _ in range(6)
        ]
    assert codes == [200] * 4 + [429] * 2
    assert ledger_spend(store_url, "key_alias")["r"] == 10 * COST


class FakeClock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def gauges(gw: Any, scope: str, entity: str, period: str) -> dict[str, float]:
    httpx.get(gw.url + "/metrics")  # a scrape refreshes the snapshot
    labels = {"scope": scope, "entity": entity, "period": period}
    names = ("limit", "soft_limit", "spend", "reserved", "remaining", "reset")
    return {n: gw.metric(f"llm_budget_{n}_usd" if n != "reset" else "llm_budget_reset_seconds",
                         **labels) for n in names}  # fmt: skip


def test_budget_and_rate_gauges_match_hand_computation_and_reset(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    clock = FakeClock(datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC))
    limits = LimitsInput(max_budget_usd=Decimal(1), soft_budget_usd=Decimal("0.5"),
                         budget_period="daily", rpm=100, tpm=5000)  # fmt: skip
    new = manage(store_url, lambda m: m.create_key("g", limits=limits))
    auth = {"authorization": f"Bearer {new.secret}"}
    config = gateway_config(store_url, limits_config)
    with run_gateway(config, clock=clock) as gw, httpx.Client(base_url=gw.v1) as http:
        for _ in range(3):
            assert http.post("/chat/completions", json=BODY, headers=auth).status_code == 200
        gw.wait_events(3)
        got = gauges(gw, "key", "g", "daily")
        assert got["limit"] == 1 and got["soft_limit"] == 0.5
        assert got["spend"] == pytest.approx(float(3 * COST), abs=1e-12)
        assert got["reserved"] == 0
        assert got["remaining"] == pytest.approx(float(1 - 3 * COST), abs=1e-12)
        assert got["reset"] == 12 * 3600  # noon to midnight UTC
        rate = {"scope": "key", "entity": "g"}
        assert gw.metric("llm_ratelimit_remaining", **rate, kind="requests") == 97
        assert gw.metric("llm_ratelimit_remaining", **rate, kind="tokens") == 5000 - 3 * 15
        clock.now += 12 * 3600 + 60  # 00:01 the next day: a new budget window and minute
        got = gauges(gw, "key", "g", "daily")
        assert (got["spend"], got["remaining"], got["reset"]) == (0, 1, 24 * 3600 - 60)
        assert gw.metric("llm_ratelimit_remaining", **rate, kind="requests") == 100
        assert http.post("/chat/completions", json=BODY, headers=auth).status_code == 200
        gw.wait_events(4)
        got = gauges(gw, "key", "g", "daily")
        assert got["spend"] == pytest.approx(float(COST), abs=1e-12)


def test_backend_and_provider_budgets_from_config(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    config = gateway_config(
        store_url, limits_config,
        budgets=[{"scope": "backend", "name": "mock", "max_usd": str(COST * Decimal("2.5"))},
                 {"scope": "provider", "name": "mock", "max_usd": "100"}],
    )  # fmt: skip
    config["auth"] = {"required": False}
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        codes = [http.post("/chat/completions", json=BODY).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        gw.wait_events(3)
        assert gw.metric("llm_rejections_total", reason="budget", scope="backend") == 1
        got = gauges(gw, "provider", "mock", "monthly")
        assert got["spend"] == pytest.approx(float(2 * COST), abs=1e-12)


def test_end_users_each_get_the_default_budget(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    config = gateway_config(
        store_url, limits_config,
        budgets=[{"scope": "end_user", "max_usd": str(COST * Decimal("1.5")), "period": "daily"}],
    )  # fmt: skip
    config["auth"] = {"required": False}
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:

        def ask(user: str) -> int:
            return http.post("/chat/completions", json={**BODY, "user": user}).status_code

        assert [ask("alice"), ask("alice"), ask("bob"), ask("bob")] == [200, 429, 200, 429]
        gw.wait_events(4)
        assert gw.metric("llm_rejections_total", reason="budget", scope="end_user") == 2


def test_an_end_user_row_overrides_the_default(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    manage(store_url, lambda m: m.set_end_user(
        "vip", LimitsInput(max_budget_usd=COST * Decimal("3.5"), budget_period="daily", rpm=100)))  # fmt: skip
    config = gateway_config(
        store_url, limits_config,
        budgets=[{"scope": "end_user", "max_usd": str(COST * Decimal("1.5")), "period": "daily"}],
    )  # fmt: skip
    config["auth"] = {"required": False}
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        codes = [http.post("/chat/completions", json={**BODY, "user": "vip"}).status_code
                 for _ in range(4)]  # fmt: skip
        assert codes == [200, 200, 200, 429]
        assert http.post("/chat/completions", json={**BODY, "user": "nobody"}).status_code == 200
        headers = http.post("/chat/completions", json={**BODY, "user": "vip"}).headers
        assert "x-ratelimit-limit-requests" not in headers  # refused: budget, not the rpm


def test_init_gauges_shows_every_budget_before_any_traffic(store_url: str) -> None:
    limits = LimitsInput(max_budget_usd=Decimal(7), budget_period="weekly", rpm=9)
    manage(store_url, lambda m: m.create_key("idle", limits=limits))
    manage(store_url, lambda m: m.create_user("uma", LimitsInput(rpm=4)))
    config = gateway_config(store_url, {"backend": "memory", "init_gauges": True})
    with run_gateway(config) as gw:
        got = gauges(gw, "key", "idle", "weekly")
        assert (got["limit"], got["spend"], got["remaining"]) == (7, 0, 7)
        remaining = "llm_ratelimit_remaining"
        assert gw.metric(remaining, scope="key", entity="idle", kind="requests") == 9
        assert gw.metric(remaining, scope="user", entity="uma", kind="requests") == 4
    with run_gateway(gateway_config(store_url, {"backend": "memory"})) as gw:
        assert gauges(gw, "key", "idle", "weekly")["limit"] == 0  # not shown until used


def test_a_backend_over_budget_comes_back_by_itself_after_reset(
    store_url: str, limits_config: dict[str, Any]
) -> None:
    clock = FakeClock(datetime(2026, 11, 23, 23, 59, 0, tzinfo=UTC))
    config = gateway_config(
        store_url, limits_config,
        budgets=[{"scope": "backend", "name": "mock", "max_usd": str(COST * Decimal("1.5")),
                  "period": "daily"}],
    )  # fmt: skip
    config["auth"] = {"required": False}
    with run_gateway(config, clock=clock) as gw, httpx.Client(base_url=gw.v1) as http:
        assert [http.post("/chat/completions", json=BODY).status_code for _ in range(2)] == [
            200,
            429,
        ]
        clock.now += 61  # past midnight UTC
        assert http.post("/chat/completions", json=BODY).status_code == 200


def _key_with_budget(store_url: str, usd: str) -> str:
    async def setup(m: Manager) -> str:
        limits = LimitsInput(max_budget_usd=Decimal(usd), budget_period="daily")
        return (await m.create_key("capped", limits=limits)).secret

    return manage(store_url, setup)


def test_the_worst_case_is_priced_at_whichever_deployment_makes_it_dearest(
    store_url: str,
) -> None:
    """The reservation priced a group at the deployment with the larger input + output
    rate, not the larger cost for this request: a long answer from a cheap-input,
    dear-output deployment was reserved at 1.05 mUSD, served at 5 mUSD, and spend went
    past the budget."""
    secret = _key_with_budget(store_url, "0.004")
    config = gateway_config(store_url)
    config["backends"] += [
        {"name": "dear-output", "provider": "mock", "prices": {"input": "1", "output": "5"}},
        {"name": "dear-input", "provider": "mock", "prices": {"input": "10", "output": "1"}},
    ]
    config["models"].append({"name": "mixed", "strategy": "priority", "deployments": [
        {"backend": "dear-output", "model": "echo", "priority": 0},
        {"backend": "dear-input", "model": "echo", "priority": 1}]})  # fmt: skip
    with run_gateway(config) as gw:
        r = httpx.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {secret}"},
                       json={"model": "mixed", "messages": MSG, "max_tokens": 1000})  # fmt: skip
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "0.005005 USD" in r.json()["error"]["message"]  # 5 + 1000 tokens at 1 / 5


def test_the_larger_of_max_tokens_and_max_completion_tokens_is_reserved(store_url: str) -> None:
    """Providers differ in which cap wins (the mock, like many servers, generates
    max_tokens); reserving only max_completion_tokens let a 1-token reservation be
    served 1,000 tokens."""
    secret = _key_with_budget(store_url, "0.001")
    with run_gateway(gateway_config(store_url)) as gw:
        r = httpx.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {secret}"},
                       json={"model": "chat", "messages": MSG, "max_tokens": 1000,
                             "max_completion_tokens": 1})  # fmt: skip
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"


def test_each_backend_is_charged_for_its_own_attempt() -> None:
    """A request whose answer on backend ``a`` could not be read (charged its prompt, as
    the upstream billed it) and that a retry served on ``b``: ``a``'s budget gets the
    prompt and its rpm the call; ``b``'s budget gets the rest. Before, ``a``'s attempt
    was given back in full and its charge booked to ``b``, so ``a``'s budget and rate
    limit never saw calls that reached it."""
    prompt = estimate_prompt_tokens(MSG)
    config = {
        "backends": [{"name": "a", "provider": "mock", "prices": {"input": 1, "output": 2}},
                     {"name": "b", "provider": "mock", "prices": {"input": 3, "output": 4}}],
        "models": [{"name": "g", "strategy": "priority",
                    "retries": {"attempts": 1, "backoff": 0, "when": ["invalid_response"]},
                    "deployments": [{"backend": "a", "model": "malformed", "priority": 0},
                                    {"backend": "b", "model": "echo", "priority": 1}]}],
        "budgets": [{"scope": "backend", "name": n, "max_usd": "1", "period": "daily"}
                    for n in ("a", "b")],
        "rate_limits": [{"scope": "backend", "name": "a", "rpm": 100}],
    }  # fmt: skip
    with run_gateway(config, clock=mid_minute_clock()) as gw:
        r = httpx.post(gw.v1 + "/chat/completions", json={**BODY, "model": "g"})
        assert r.status_code == 200 and r.headers["x-tollhouse-backend"] == "b"
        event = gw.wait_events(1)[0]
        httpx.get(gw.url + "/metrics")  # refreshes the budget gauges

        def spend(backend: str) -> Decimal:
            value = gw.metric("llm_budget_spend_usd", scope="backend", entity=backend,
                              period="daily")  # fmt: skip
            return Decimal(str(value))

        a_cost = Decimal(prompt) / 1_000_000
        assert event.cost is not None and spend("a") == a_cost
        assert spend("b") == event.cost - a_cost > 0
        assert gw.metric("llm_ratelimit_remaining", scope="backend", entity="a",
                         kind="requests") == 99  # fmt: skip
