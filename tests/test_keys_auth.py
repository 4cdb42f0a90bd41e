"""Virtual keys at the gate: 401 for missing, unknown, expired or blocked keys, 403 for a model
the key may not use, OpenAI-style rate limits with headers — against SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import mid_minute_clock, run_gateway
from tests.keyhelpers import gateway_config, manage
from tollhouse.identity import keys as keygen
from tollhouse.identity.manage import LimitsInput, Manager
from tollhouse.store.models import ModelLimit

MSG = [{"role": "user", "content": "hi there"}]


def chat(
    http: httpx.Client, key: str | None, model: str = "chat", **headers: str
) -> httpx.Response:
    auth = {"authorization": f"Bearer {key}"} if key else {}
    return http.post("/chat/completions", json={"model": model, "messages": MSG, "max_tokens": 2},
                     headers={**auth, **headers})  # fmt: skip


def test_key_errors_are_401_with_reasons_and_counted(store_url: str) -> None:
    async def setup(m: Manager) -> dict[str, str]:
        good = await m.create_key("good")
        blocked = await m.create_key("blocked")
        await m.block_key("blocked")
        secret, key_hash, prefix = keygen.generate()
        await m.keys.create(key_hash=key_hash, key_prefix=prefix, alias="old",
                            expires_at=datetime.now(UTC) - timedelta(seconds=1))  # fmt: skip
        return {"good": good.secret, "blocked": blocked.secret, "old": secret}

    secrets = manage(store_url, setup)
    with run_gateway(gateway_config(store_url)) as gw, httpx.Client(base_url=gw.v1) as http:
        assert chat(http, secrets["good"]).status_code == 200
        cases = [(None, "missing_api_key"), ("sk-th-not-a-real-key", "invalid_api_key"),
                 (secrets["blocked"], "blocked_api_key"), (secrets["old"], "expired_api_key")]  # fmt: skip
        for key, code in cases:
            r = chat(http, key)
            assert r.status_code == 401 and r.json()["error"]["code"] == code
            assert key is None or key not in r.text
        # Anthropic-style clients send x-api-key
        assert chat(http, None, **{"x-api-key": secrets["good"]}).status_code == 200
        gw.wait_events(6)
        assert gw.metric("llm_rejections_total", reason="auth", scope="none") == 4
        assert gw.total("llm_requests_total", status_class="4xx", outcome="error") == 4
        assert gw.total("llm_requests_total", key="good", team="none") == 2
        scrape = httpx.get(gw.url + "/metrics").text
    assert all(s not in scrape for s in secrets.values())


def test_models_the_key_may_not_use_are_403(store_url: str) -> None:
    async def setup(m: Manager) -> str:
        await m.create_team("ml", LimitsInput(), models=["chat", "embed"])
        return (await m.create_key("narrow", team="ml", models=["chat", "slow"])).secret

    secret = manage(store_url, setup)
    with run_gateway(gateway_config(store_url)) as gw, httpx.Client(base_url=gw.v1) as http:
        assert chat(http, secret, "chat").status_code == 200
        for model in ("slow", "embed", "cached"):  # not in both the key's and the team's lists
            r = chat(http, secret, model)
            assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
        gw.wait_events(4)
        assert gw.metric("llm_rejections_total", reason="permission", scope="key") == 3
        assert gw.total("llm_requests_total", key="narrow", team="ml") == 4


def test_a_key_never_reaches_a_model_outside_its_list_by_fallback_or_cache(
    store_url: str,
) -> None:
    """The allow-list held only for the model a client named: a fallback to a model the
    key may not use served it, and so did a cached answer another key had paid for."""

    async def setup(m: Manager) -> tuple[str, str]:
        narrow = await m.create_key("narrow", models=["spill", "chat"])
        return narrow.secret, (await m.create_key("wide")).secret

    config = gateway_config(store_url, cache={"enabled": True, "scope": "global"})
    config["models"] += [
        {"name": "spill", "backend": "mock", "model": "fail-429",
         "fallbacks": [{"when": ["rate_limit"], "to": ["premium", "chat"]}]},
        {"name": "premium", "backend": "mock", "model": "echo"},
    ]  # fmt: skip
    narrow, wide = manage(store_url, setup)
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        r = chat(http, narrow, "spill")  # premium is skipped, chat is allowed
        assert r.status_code == 200 and r.headers["x-tollhouse-model"] == "chat"
        assert gw.wait_events(1)[0].fallbacks == (("spill", "chat"),)

        secret_question = {"model": "premium", "messages": [{"role": "user", "content": "?"}]}
        first = http.post("/chat/completions", json=secret_question,
                          headers={"authorization": f"Bearer {wide}"})  # fmt: skip
        assert first.status_code == 200 and first.headers["x-tollhouse-cache"] == "miss"
        again = http.post("/chat/completions", json=secret_question,
                          headers={"authorization": f"Bearer {narrow}"})  # fmt: skip
        assert again.status_code == 403 and again.json()["error"]["code"] == "model_not_allowed"
        assert "choices" not in again.text
        gw.wait_events(3)
        assert gw.metric("llm_rejections_total", reason="permission", scope="key") == 1


def test_a_fallback_is_held_to_the_keys_limit_for_the_model_it_reaches(store_url: str) -> None:
    """Key + model limits are per public model, however the request got there: a key
    with 1 rpm on ``premium`` was served by it any number of times through a fallback.
    Its refusal does not take ``premium``'s deployment out of rotation for other keys."""

    async def setup(m: Manager) -> tuple[str, str]:
        limited = await m.create_key("limited", limits=LimitsInput(rpm=100),
                                     model_limits={"premium": ModelLimit(rpm=1)})  # fmt: skip
        return limited.secret, (await m.create_key("other")).secret

    config = gateway_config(store_url)
    config["models"] += [
        {"name": "spill", "backend": "mock", "model": "fail-429",
         "fallbacks": [{"when": ["rate_limit"], "to": ["premium"]}]},
        {"name": "premium", "backend": "mock", "model": "echo"},
    ]  # fmt: skip
    limited, other = manage(store_url, setup)
    with run_gateway(config, clock=mid_minute_clock()) as gw, httpx.Client(base_url=gw.v1) as http:
        first = chat(http, limited, "spill")
        assert first.status_code == 200 and first.headers["x-tollhouse-model"] == "premium"
        second = chat(http, limited, "spill")
        assert second.status_code == 429
        assert "key_model 'limited'" in second.json()["error"]["message"]
        # the key's 100 rpm headers would name a limit that did not refuse it
        assert not any(h.startswith("x-ratelimit") for h in second.headers)
        assert chat(http, other, "premium").status_code == 200
        gw.wait_events(3)
        assert gw.metric("llm_rejections_total", reason="rate_limit", scope="key_model") == 1
        assert gw.total("llm_cooldowns_total", reason="budget") == 0


def test_models_list_needs_a_key_and_shows_only_the_keys_models(store_url: str) -> None:
    """GET /v1/models answered anyone with every model, whatever auth.required said."""

    async def setup(m: Manager) -> str:
        await m.create_team("ml", LimitsInput(), models=["chat", "embed"])
        return (await m.create_key("narrow", team="ml", models=["chat", "slow"])).secret

    secret = manage(store_url, setup)
    with run_gateway(gateway_config(store_url)) as gw, httpx.Client(base_url=gw.v1) as http:
        assert http.get("/models").status_code == 401
        r = http.get("/models", headers={"authorization": "Bearer sk-th-not-a-key"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "sk-th-not-a-key" not in r.text
        r = http.get("/models", headers={"authorization": f"Bearer {secret}"})
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["chat"]
        assert gw.metric("tollhouse_auth_failures_total", surface="proxy", reason="invalid") == 1


def test_admin_key_from_environment_is_a_principal(store_url: str) -> None:
    config = gateway_config(store_url)
    with run_gateway(config, environ={"TOLLHOUSE_ADMIN_KEY": "sk-admin-test-1"}) as gw, \
            httpx.Client(base_url=gw.v1) as http:  # fmt: skip
        assert chat(http, "sk-admin-test-1").status_code == 200
        assert gw.wait_events(1)[0].key == "admin"


def test_key_expiry_follows_the_gateways_clock(store_url: str) -> None:
    """Expiry is read on the same wall clock as budget and rate windows, so a gateway whose
    clock is past a key's ``expires_at`` refuses it, whatever the machine's time says."""
    secret = manage(store_url, lambda m: m.create_key("short", expires_in="2h")).secret
    for hours, status in [(1, 200), (3, 401)]:
        later = time.time() + hours * 3600
        with run_gateway(gateway_config(store_url), clock=lambda t=later: t) as gw, \
                httpx.Client(base_url=gw.v1) as http:  # fmt: skip
            r = chat(http, secret)
            assert r.status_code == status, r.text
            assert status == 200 or r.json()["error"]["code"] == "expired_api_key"


def test_key_rpm_with_openai_style_headers_and_retry_after(store_url: str) -> None:
    secret = manage(
        store_url, lambda m: m.create_key("rpm3", limits=LimitsInput(rpm=3, tpm=10_000))
    )
    clock = mid_minute_clock()
    with run_gateway(gateway_config(store_url), clock=clock) as gw, \
            httpx.Client(base_url=gw.v1) as http:  # fmt: skip
        seen = [chat(http, secret.secret) for _ in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in seen[:3]] == ["2", "1", "0"]
        assert seen[0].headers["x-ratelimit-limit-requests"] == "3"
        assert seen[0].headers["x-ratelimit-limit-tokens"] == "10000"
        # worst case reserved: 5 prompt tokens + max_tokens 2
        assert seen[0].headers["x-ratelimit-remaining-tokens"] == str(10_000 - 7)
        assert seen[0].headers["x-ratelimit-reset-requests"].endswith("s")
        refused = seen[3]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        gw.wait_events(4)
        assert gw.metric("llm_rejections_total", reason="rate_limit", scope="key") == 1


def test_tpm_counts_tokens_and_settles_to_actual(store_url: str) -> None:
    """The worst case (prompt + max_tokens) is charged first, then corrected to real usage."""
    secret = manage(store_url, lambda m: m.create_key("tpm", limits=LimitsInput(tpm=40)))
    clock = mid_minute_clock()
    with run_gateway(gateway_config(store_url), clock=clock) as gw, \
            httpx.Client(base_url=gw.v1) as http:  # fmt: skip
        body: dict[str, Any] = {"model": "chat", "messages": MSG, "max_tokens": 30}
        auth = {"authorization": f"Bearer {secret.secret}"}
        first = http.post("/chat/completions", json=body, headers=auth)
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "5"
        # 5 + 30 reserved; the mock answers 30 tokens, so the next worst case (35) no longer fits
        assert http.post("/chat/completions", json=body, headers=auth).status_code == 429


def test_key_model_team_and_backend_rate_limits(store_url: str) -> None:
    async def setup(m: Manager) -> list[str]:
        await m.create_team("shared", LimitsInput(rpm=4), models=None)
        a = await m.create_key("a", team="shared", model_limits={"slow": ModelLimit(rpm=1)})
        b = await m.create_key("b", team="shared")
        return [a.secret, b.secret]

    a, b = manage(store_url, setup)
    config = gateway_config(
        store_url, rate_limits=[{"scope": "backend", "name": "mock", "rpm": 100}]
    )
    with run_gateway(config, clock=mid_minute_clock()) as gw, httpx.Client(base_url=gw.v1) as http:
        assert chat(http, a, "slow").status_code == 200
        per_model = chat(http, a, "slow")
        assert per_model.status_code == 429 and "key_model" in per_model.json()["error"]["message"]
        assert chat(http, a, "chat").status_code == 200  # other models are not limited
        assert chat(http, b, "chat").status_code == 200
        assert chat(http, b, "chat").status_code == 200  # team: 4 admitted in this minute
        team = chat(http, b, "chat")
        assert team.status_code == 429 and "team 'shared'" in team.json()["error"]["message"]
        gw.wait_events(6)
        assert gw.metric("llm_rejections_total", reason="rate_limit", scope="key_model") == 1
        assert gw.metric("llm_rejections_total", reason="rate_limit", scope="team") == 1


def test_a_backend_refusal_counts_nothing_against_the_callers_limits(store_url: str) -> None:
    """Admission is all-or-nothing: the caller's limits are reserved on arrival and the
    backend's when a deployment is chosen. A request the backend then refuses reached no
    upstream, yet kept its key's rpm count: a 2 rpm key was refused by its own limit on
    a third request although only one had been served. Its refusal showed the key's
    x-ratelimit headers too."""

    async def setup(m: Manager) -> str:
        return (await m.create_key("k2", limits=LimitsInput(rpm=2))).secret

    secret = manage(store_url, setup)
    config = gateway_config(store_url, budgets=[
        {"scope": "backend", "name": "mock", "max_usd": "0.00002", "period": "daily"}])  # fmt: skip
    config["backends"].append({**config["backends"][0], "name": "spare"})
    config["models"].append({"name": "elsewhere", "backend": "spare", "model": "echo"})
    with run_gateway(config, clock=mid_minute_clock()) as gw, httpx.Client(base_url=gw.v1) as http:
        assert chat(http, secret).status_code == 200  # ~13 µUSD of mock's 20
        gw.wait_events(1)
        for _ in range(3):
            refused = chat(http, secret)
            assert refused.status_code == 429
            assert "backend 'mock'" in refused.json()["error"]["message"]
            assert not any(h.startswith("x-ratelimit") for h in refused.headers)
        served = chat(http, secret, "elsewhere")
        assert served.status_code == 200
        assert served.headers["x-ratelimit-remaining-requests"] == "0"  # 2 served, 2 allowed
        gw.wait_events(5)
        assert gw.metric("llm_ratelimit_remaining", scope="key", entity="k2", kind="requests") == 0
        assert gw.metric("llm_rejections_total", reason="budget", scope="backend") == 3


@pytest.mark.parametrize("blocked_by", ["team", "user"])
def test_blocking_a_team_or_user_blocks_its_keys(store_url: str, blocked_by: str) -> None:
    async def setup(m: Manager) -> str:
        team = await m.create_team("t", LimitsInput(), None)
        user = await m.create_user("u", LimitsInput(), team="t")
        key = await m.create_key("k", team="t", user="u")
        if blocked_by == "team":
            await m.teams.block(team.id)
        else:
            await m.users.block(user.id)
        return key.secret

    secret = manage(store_url, setup)
    with run_gateway(gateway_config(store_url)) as gw, httpx.Client(base_url=gw.v1) as http:
        assert chat(http, secret).json()["error"]["code"] == "blocked_api_key"
