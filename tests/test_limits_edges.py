"""Edges of keys and limits: per-model counters, user limits, a shared store that is down,
end-user spend after a restart, and config that names what does not exist."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.conftest import mid_minute_clock, mock_config, run_gateway
from tests.keyhelpers import gateway_config, manage
from tollhouse.config import ConfigError, parse_config
from tollhouse.identity.manage import LimitsInput, Manager
from tollhouse.identity.principal import BudgetRule, RateRule
from tollhouse.limits.memory import MemoryLimits
from tollhouse.metrics.snapshot import MAX_TRACKED, LimitsSnapshot
from tollhouse.store.models import ModelLimit

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 10}
COST = Decimal("0.0000325")


def post(
    http: httpx.Client, secret: str | None, model: str = "chat", **extra: object
) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    return http.post("/chat/completions", json={**BODY, "model": model, **extra}, headers=headers)


def test_per_model_limits_count_each_model_separately(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    limits = {"chat": ModelLimit(rpm=1), "slow": ModelLimit(rpm=1)}
    secret = manage(url, lambda m: m.create_key("pm", model_limits=limits)).secret
    clock = mid_minute_clock()
    with run_gateway(gateway_config(url), clock=clock) as gw, httpx.Client(base_url=gw.v1) as http:
        assert [post(http, secret, "chat").status_code, post(http, secret, "slow").status_code,
                post(http, secret, "chat").status_code] == [200, 200, 429]  # fmt: skip


def test_user_rate_limits_apply_to_all_their_keys(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"

    async def setup(m: Manager) -> list[str]:
        await m.create_user("ann", LimitsInput(rpm=2))
        return [(await m.create_key(f"k{i}", user="ann")).secret for i in range(2)]

    a, b = manage(url, setup)
    clock = mid_minute_clock()
    with run_gateway(gateway_config(url), clock=clock) as gw, httpx.Client(base_url=gw.v1) as http:
        codes = [post(http, a).status_code, post(http, b).status_code]
        refused = post(http, a)
        assert codes == [200, 200] and refused.status_code == 429
        assert "user 'ann'" in refused.json()["error"]["message"]


def test_limits_store_down_is_a_clear_503_and_metrics_still_serve(tmp_path: Path) -> None:
    config = mock_config()
    config["store"] = {"url": f"sqlite+aiosqlite:///{tmp_path}/s.db"}
    config["limits"] = {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}
    config["rate_limits"] = [{"scope": "backend", "name": "mock", "rpm": 100}]
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        r = post(http, None)
        assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
        gw.wait_events(1)
        assert gw.metric("llm_errors_total", model="chat", backend="mock", provider="mock",
                         error_type="server_error") == 1  # fmt: skip
        assert httpx.get(gw.url + "/metrics").status_code == 200


def test_end_user_spend_is_recovered_after_a_restart(tmp_path: Path) -> None:
    config = mock_config()
    config["store"] = {"url": f"sqlite+aiosqlite:///{tmp_path}/s.db"}
    config["ledger"] = {"flush_interval": 0.05}
    config["budgets"] = [
        {"scope": "end_user", "max_usd": str(COST * Decimal("2.5")), "period": "daily"}
    ]
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        assert post(http, None, user="eve").status_code == 200
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        assert [post(http, None, user="eve").status_code for _ in range(2)] == [200, 429]


def test_an_end_users_own_budget_is_recovered_after_a_restart(store_url: str) -> None:
    """``end-users set`` budgets are rebuilt from the ledger too, with no default end-user
    budget in the config to rebuild a counter for that end user."""
    url = store_url
    own = LimitsInput(max_budget_usd=COST * Decimal("2.5"), budget_period="daily")
    manage(url, lambda m: m.set_end_user("eve", own))
    config = mock_config()
    config["store"] = {"url": url}
    config["ledger"] = {"flush_interval": 0.05}
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        assert post(http, None, user="eve").status_code == 200
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        codes = [post(http, None, user="eve").status_code for _ in range(2)]
        assert codes == [200, 429]
        assert post(http, None, user="bob").status_code == 200


def test_init_gauges_show_an_end_users_own_budget_instead_of_the_default(tmp_path: Path) -> None:
    """At start, eve's own weekly budget is shown with her recovered spend; the config's
    daily default for end users does not apply to her, so it is not shown for her."""
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    own = LimitsInput(max_budget_usd=Decimal(5), budget_period="weekly")
    manage(url, lambda m: m.set_end_user("eve", own))
    config = mock_config()
    config["store"] = {"url": url}
    config["ledger"] = {"flush_interval": 0.05}
    config["limits"] = {"backend": "memory", "init_gauges": True}
    config["budgets"] = [{"scope": "end_user", "max_usd": "3", "period": "daily"}]
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        assert post(http, None, user="eve").status_code == 200
        assert post(http, None, user="bob").status_code == 200
    with run_gateway(config) as gw:
        httpx.get(gw.url + "/metrics")  # a scrape refreshes the gauges
        spend = "llm_budget_spend_usd"
        assert gw.metric(spend, scope="end_user", entity="eve", period="weekly") == float(COST)
        assert gw.metric(spend, scope="end_user", entity="bob", period="daily") == float(COST)
        assert (
            gw.metric("llm_budget_limit_usd", scope="end_user", entity="eve", period="daily") == 0
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"budgets": [{"scope": "backend", "name": "ghost", "max_usd": 1}]}, "backend 'ghost' is not defined"),
        ({"budgets": [{"scope": "provider", "name": "anthropic", "max_usd": 1}]}, "no backend uses provider"),
        ({"budgets": [{"scope": "end_user", "name": "x", "max_usd": 1}]}, "drop 'name'"),
        ({"budgets": [{"scope": "end_user", "max_usd": 1}, {"scope": "end_user", "max_usd": 2}]},
         "only one end_user budget"),
        ({"rate_limits": [{"scope": "backend", "name": "ghost", "rpm": 1}]}, "backend 'ghost' is not defined"),
        ({"rate_limits": [{"scope": "backend", "name": "mock"}]}, "set rpm, tpm or both"),
    ],
)  # fmt: skip
def test_limits_config_must_name_what_exists(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**mock_config(), **extra})
    assert any(message in p for p in info.value.problems), info.value.problems


def test_manager_rejects_impossible_limits(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    for bad, text in [(LimitsInput(max_budget_usd=Decimal(1), soft_budget_usd=Decimal(2)), "soft budget"),
                      (LimitsInput(rpm=0), "rpm must be at least 1")]:  # fmt: skip
        with pytest.raises(ValueError, match=text):
            manage(url, lambda m, bad=bad: m.create_key("x", limits=bad))  # type: ignore[misc]


async def test_end_users_cannot_crowd_other_budgets_out_of_the_gauges() -> None:
    """Gauges are capped (cardinality), and end users, one per distinct ``user`` a client
    sends, have a cap of their own: 10,000 of them used to fill the only cap, so a key
    created afterwards never got its budget gauges."""
    snapshot = LimitsSnapshot(MemoryLimits())
    crowd = [BudgetRule("end_user", f"u{i}", 10**9, "daily") for i in range(MAX_TRACKED + 5)]
    snapshot.track(crowd, [RateRule("end_user", f"u{i}", "rpm", 5) for i in range(MAX_TRACKED)])
    snapshot.track([BudgetRule("key", "late", 10**9, "daily")], [RateRule("key", "late", "rpm", 5)])
    await snapshot.refresh()
    scopes = Counter(rule.scope for rule, _, _ in snapshot.current.budgets)
    assert scopes == {"end_user": MAX_TRACKED, "key": 1}
    assert [r.entity for r, _ in snapshot.current.rates if r.scope == "key"] == ["late"]
