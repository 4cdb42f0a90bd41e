"""The admin API round trip: every route, its errors, its audit rows, its limits."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import RunningGateway, serve_app
from tests.keyhelpers import gateway_config
from tollhouse.accounting.event import UsageEvent
from tollhouse.admin.settings import AdminSettings
from tollhouse.app import App
from tollhouse.config import parse_config

ADMIN_KEY = "adm-test-0123456789abcdefghijklmnopqrstuv"
MSG = [{"role": "user", "content": "hello admin"}]
FAST = AdminSettings(rate=1000, burst=1000, rollup_interval=0.05, lag_interval=0.05)


@contextmanager
def admin_gateway(
    raw: dict[str, Any],
    settings: AdminSettings = FAST,
    admin_key: str | None = ADMIN_KEY,
    clock: Callable[[], float] | None = None,
) -> Iterator[RunningGateway]:
    """The real gateway with an admin key in its environment and the given admin settings
    (and ``clock``, the app's wall clock, when given)."""
    environ = {"TOLLHOUSE_ADMIN_KEY": admin_key} if admin_key else {}
    with tempfile.TemporaryDirectory(prefix="tollhouse-admin-") as tmp:
        raw = {**raw}
        raw.setdefault("store", {"url": f"sqlite+aiosqlite:///{tmp}/store.db"})
        config = parse_config(raw, environ=environ)
        registry = CollectorRegistry()
        events: list[UsageEvent] = []
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        app = App(config, registry=registry, environ=environ, extra_sinks=[events.append],
                  admin=settings, **extra)  # fmt: skip
        with serve_app(app) as url:
            yield RunningGateway(app, url, registry, events)


def local_config() -> dict[str, Any]:
    """``gateway_config`` with the store in the gateway's own temporary directory."""
    config = gateway_config("")
    del config["store"]
    return config


def admin_client(gw: RunningGateway, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(base_url=gw.url + "/admin/v1", timeout=10,
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip


def chat(gw: RunningGateway, secret: str | None, model: str = "chat") -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    body = {"model": model, "messages": MSG, "max_tokens": 3}
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers, timeout=10)


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def test_keys_teams_users_round_trip(store_url: str) -> None:
    """Create, read, list, update, block, unblock and delete each kind; keys work at the gate."""
    with admin_gateway(gateway_config(store_url)) as gw, admin_client(gw) as api:
        limits = {"max_budget_usd": "5", "budget_period": "daily", "rpm": 100}
        team = ok(api.post("/teams", json={"alias": "ml", "limits": limits,
                                           "models": ["chat", "slow"]}), 201)  # fmt: skip
        assert team["limits"]["max_budget_usd"] == "5" and team["models"] == ["chat", "slow"]
        assert ok(api.get("/teams/ml"))["id"] == team["id"]
        assert [t["alias"] for t in ok(api.get("/teams"))] == ["ml"]
        patched = ok(api.patch("/teams/ml", json={"limits": {"rpm": 7}, "metadata": {"cc": "42"}}))
        assert patched["limits"]["rpm"] == 7 and patched["limits"]["max_budget_usd"] == "5"
        assert patched["metadata"] == {"cc": "42"}

        user = ok(api.post("/users", json={"alias": "ann", "team": "ml",
                                           "email": "ann@example.com"}), 201)  # fmt: skip
        assert user["team_id"] == team["id"]
        assert [u["alias"] for u in ok(api.get("/users", params={"team": "ml"}))] == ["ann"]
        assert ok(api.patch("/users/ann", json={"email": None}))["email"] is None
        assert ok(api.get("/users/ann"))["alias"] == "ann"

        created = ok(api.post("/keys", json={
            "alias": "svc", "team": "ml", "user": "ann", "models": ["chat"],
            "model_limits": {"chat": {"rpm": 50}}, "limits": {"max_budget_usd": 1.25},
            "expires_in": "30d", "metadata": {"owner": "ann"},
        }), 201)  # fmt: skip
        secret = created["secret"]
        assert secret.startswith("sk-th-") and created["prefix"] == secret[:12]
        assert "secret" not in ok(api.get("/keys/svc"))
        assert [k["alias"] for k in ok(api.get("/keys", params={"team": "ml"}))] == ["svc"]
        assert chat(gw, secret).status_code == 200

        updated = ok(api.patch("/keys/svc", json={"models": ["chat", "slow"],
                                                   "limits": {"tpm": 5000}}))  # fmt: skip
        assert updated["models"] == ["chat", "slow"] and updated["limits"]["tpm"] == 5000
        assert updated["limits"]["max_budget_usd"] == "1.25"
        assert ok(api.post("/keys/svc/block"))["blocked"] is True
        assert chat(gw, secret).json()["error"]["code"] == "blocked_api_key"  # at once
        assert ok(api.post("/keys/svc/unblock"))["blocked"] is False
        assert chat(gw, secret).status_code == 200
        assert ok(api.post("/teams/ml/block"))["blocked"] is True
        assert chat(gw, secret).json()["error"]["code"] == "blocked_api_key"
        assert ok(api.post("/teams/ml/unblock"))["blocked"] is False
        assert ok(api.post("/users/ann/block"))["blocked"] is True
        assert ok(api.post("/users/ann/unblock"))["blocked"] is False

        refused = api.delete("/teams/ml")
        assert refused.status_code == 409 and "still has" in refused.json()["error"]["message"]
        assert ok(api.delete("/keys/svc")) == {"deleted": True, "kind": "key", "alias": "svc"}
        assert chat(gw, secret).json()["error"]["code"] == "invalid_api_key"
        assert ok(api.delete("/users/ann"))["deleted"] is True
        assert ok(api.delete("/teams/ml"))["deleted"] is True
        assert api.get("/teams/ml").status_code == 404


def test_end_users_budgets_backends_models_and_health(store_url: str) -> None:
    config = gateway_config(store_url)
    config["budgets"] = [{"scope": "backend", "name": "mock", "max_usd": "10", "period": "daily"}]
    with admin_gateway(config) as gw, admin_client(gw) as api:
        limits = {"max_budget_usd": "2", "budget_period": "daily", "rpm": 5}
        assert ok(api.put("/end-users/customer-42", json={"limits": limits}))["limits"]["rpm"] == 5
        assert ok(api.get("/end-users/customer-42"))["limits"]["max_budget_usd"] == "2"
        assert [e["id"] for e in ok(api.get("/end-users"))] == ["customer-42"]
        ok(api.post("/keys", json={"alias": "k", "limits": {"max_budget_usd": "3"}}), 201)

        budgets = {(b["scope"], b["entity"]): b for b in ok(api.get("/budgets"))}
        assert budgets[("backend", "mock")]["limit_usd"] == "10"
        assert budgets[("key", "k")]["remaining_usd"] == "3"
        assert budgets[("key", "k")]["period"] == "monthly"

        backends = ok(api.get("/backends"))
        assert [b["name"] for b in backends] == ["mock"] and "chat" in backends[0]["models"]
        models = {m["name"]: m for m in ok(api.get("/models"))}
        assert models["chat"]["deployments"][0]["backend"] == "mock"

        health = ok(api.get("/health"))
        assert health["status"] == "ok" and health["store"]["ok"] is True
        assert health["store_dialect"] == store_url.split(":")[0].split("+")[0]
        assert health["redis"] is None and health["ledger_backlog"] == 0
        assert health["memory_rss_bytes"] > 10**6 and health["event_loop_lag_ms"] >= 0
        assert ok(api.delete("/end-users/customer-42"))["deleted"] is True
        assert api.get("/end-users/customer-42").status_code == 404


def test_health_reports_redis_when_counters_live_there(limits_config: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = gateway_config(f"sqlite+aiosqlite:///{tmp}/s.db", limits=limits_config)
        with admin_gateway(config) as gw, admin_client(gw) as api:
            health = ok(api.get("/health"))
    if limits_config["backend"] == "redis":
        assert health["redis"]["ok"] is True and health["redis"]["latency_ms"] > 0
    else:
        assert health["redis"] is None


def test_every_mutation_writes_one_audit_row_without_secrets() -> None:
    """Who, what, when, from where, in which request; the secret is never in the row."""
    with admin_gateway(local_config()) as gw, \
            admin_client(gw) as api:  # fmt: skip
        calls = [
            ("team.create", lambda: api.post("/teams", json={"alias": "t"})),
            ("team.update", lambda: api.patch("/teams/t", json={"models": ["chat"]})),
            ("team.block", lambda: api.post("/teams/t/block")),
            ("team.unblock", lambda: api.post("/teams/t/unblock")),
            ("user.create", lambda: api.post("/users", json={"alias": "u", "team": "t"})),
            ("user.update", lambda: api.patch("/users/u", json={"limits": {"rpm": 3}})),
            ("user.block", lambda: api.post("/users/u/block")),
            ("user.unblock", lambda: api.post("/users/u/unblock")),
            ("key.create", lambda: api.post("/keys", json={"alias": "k", "team": "t"})),
            ("key.update", lambda: api.patch("/keys/k", json={"limits": {"tpm": 9}})),
            ("key.block", lambda: api.post("/keys/k/block")),
            ("key.unblock", lambda: api.post("/keys/k/unblock")),
            ("key.delete", lambda: api.delete("/keys/k")),
            ("end_user.set", lambda: api.put("/end-users/e1", json={"limits": {"rpm": 1}})),
            ("end_user.delete", lambda: api.delete("/end-users/e1")),
            ("user.delete", lambda: api.delete("/users/u")),
            ("team.delete", lambda: api.delete("/teams/t")),
        ]
        request_ids, secret = [], None
        for _, call in calls:
            r = call()
            assert r.status_code < 300, r.text
            request_ids.append(r.headers["x-request-id"])
            secret = r.json().get("secret", secret)
        refused = api.post("/users", json={"alias": "x", "team": "gone"})
        assert refused.status_code == 404  # a refused change is not audited
        rows = ok(api.get("/audit", params={"limit": 100}))["data"]
        assert [r["action"] for r in reversed(rows)] == [name for name, _ in calls]
        assert [r["request_id"] for r in reversed(rows)] == request_ids
        assert {(r["actor"], r["address"]) for r in rows} == {("admin", "127.0.0.1")}
        assert secret and secret not in str(rows)
        key_rows = ok(api.get("/audit", params={"target_type": "key", "target": "k"}))["data"]
        assert [r["action"] for r in key_rows][-1] == "key.create"
        page = ok(api.get("/audit", params={"limit": 5}))
        older = ok(api.get("/audit", params={"limit": 5, "before_id": page["next_before_id"]}))
        assert older["data"][0]["id"] == page["data"][-1]["id"] - 1
        assert ok(api.get("/audit", params={"action": "key.update"}))["data"][0]["changes"] == {
            "limits": {"tpm": 9}
        }


@pytest.mark.parametrize(
    ("key", "code", "reason"),
    [(None, "missing_admin_key", "missing"), ("wrong", "invalid_admin_key", "invalid")],
)
def test_admin_auth_failures_are_401_and_counted(key: str | None, code: str, reason: str) -> None:
    with admin_gateway(local_config()) as gw:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(gw.url + "/admin/v1/keys", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == code
        assert gw.metric("tollhouse_auth_failures_total", surface="admin", reason=reason) == 1
        assert gw.metric("tollhouse_admin_requests_total", route="/admin/v1/keys",
                         method="GET", status_class="4xx") == 1  # fmt: skip


def test_admin_api_is_disabled_without_an_admin_key() -> None:
    with admin_gateway(local_config(), admin_key=None) as gw:
        r = httpx.get(gw.url + "/admin/v1/health", headers={"authorization": "Bearer x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "disabled_admin_key"


def test_errors_are_openai_style() -> None:
    with admin_gateway(local_config()) as gw, \
            admin_client(gw) as api:  # fmt: skip
        cases = [
            (api.get("/keys/nobody"), 404, "not_found"),
            (api.get("/nothing-here"), 404, "not_found"),
            (api.post("/teams", json={"alias": "bad alias!"}), 400, "invalid_request"),
            (api.post("/teams", json={"alias": "t", "limits": {"rpm": 0}}), 400, "invalid_request"),
            (api.post("/teams", content=b"{not json", headers={"content-type": "application/json"}),
             400, "invalid_request"),
            (api.post("/keys", json={"alias": "k", "team": "missing"}), 404, "not_found"),
            (api.get("/usage", params={"start": "yesterday"}), 400, "invalid_request"),
            (api.get("/usage", params={"start": "2", "end": "1"}), 400, "invalid_request"),
            (api.put("/keys"), 405, "method_not_allowed"),
        ]  # fmt: skip
        ok(api.post("/teams", json={"alias": "dup"}), 201)
        ok(api.post("/keys", json={"alias": "k-a"}), 201)
        ok(api.post("/keys", json={"alias": "k-b"}), 201)
        taken = [api.post("/teams", json={"alias": "dup"}),
                 api.patch("/keys/k-b", json={"alias": "k-a"})]  # fmt: skip
        # named in the API's words, not SQLite's or PostgreSQL's constraint text
        assert [r.json()["error"]["message"] for r in taken] == [
            "a team with alias 'dup' already exists", "a key with alias 'k-a' already exists"]  # fmt: skip
        cases += [(r, 409, "conflict") for r in taken]
        soft = {"limits": {"soft_budget_usd": "2", "max_budget_usd": "1"}}
        cases.append((api.patch("/teams/dup", json=soft), 400, "invalid_request"))
        for r, status, code in cases:
            assert r.status_code == status, (r.request.url, r.text)
            error = r.json()["error"]
            assert error["code"] == code and error["message"] and error["type"], r.text
            assert r.headers["x-request-id"]


def test_admin_api_has_its_own_rate_limit() -> None:
    settings = AdminSettings(rate=0.5, burst=3)
    with admin_gateway(local_config(), settings) as gw, \
            admin_client(gw) as api:  # fmt: skip
        statuses = [api.get("/teams").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = api.get("/teams")
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert chat(gw, None).status_code == 401  # the proxy is not limited by it


def test_repeated_auth_failures_throttle_the_address(store_url: str) -> None:
    """After N failures in the window an address gets 429 (even with a good key), counted."""
    settings = AdminSettings(max_auth_failures=3, failure_window=60, cooloff=30)
    with admin_gateway(gateway_config(store_url), settings) as gw, admin_client(gw) as api:
        secret = ok(api.post("/keys", json={"alias": "good"}), 201)["secret"]
        assert [chat(gw, s).status_code for s in ("sk-bad-1", None, "sk-bad-3")] == [401] * 3
        throttled = chat(gw, secret)
        assert throttled.status_code == 429
        assert throttled.json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(throttled.headers["retry-after"]) <= 30
        r = api.get("/keys")  # the admin API refuses the same address too
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
        assert gw.metric("tollhouse_auth_failures_total", surface="proxy", reason="invalid") == 2
        assert gw.metric("tollhouse_auth_failures_total", surface="proxy", reason="missing") == 1
        assert gw.metric("tollhouse_auth_throttled_total", surface="proxy") == 1
        assert gw.metric("tollhouse_auth_throttled_total", surface="admin") == 1
        gw.wait_events(4)
        assert gw.metric("llm_rejections_total", reason="auth_throttled", scope="none") == 1


def test_openapi_schema_is_served_and_lists_every_route() -> None:
    with admin_gateway(local_config()) as gw:
        schema = httpx.get(gw.url + "/admin/v1/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/admin/v1/keys", "/admin/v1/keys/{alias}", "/admin/v1/keys/{alias}/block",
            "/admin/v1/teams", "/admin/v1/users", "/admin/v1/end-users/{end_user}",
            "/admin/v1/usage", "/admin/v1/usage/series", "/admin/v1/audit", "/admin/v1/health",
            "/admin/v1/budgets", "/admin/v1/backends", "/admin/v1/models"} <= paths  # fmt: skip
    for path in schema["paths"].values():
        for op in path.values():
            assert "422" not in op["responses"] and "400" in op["responses"]


def test_two_patches_at_once_both_take_effect() -> None:
    """Each update read the row, merged its change and wrote the whole row back, so of
    two PATCHes at the same moment one was lost (15 trials of 15), though both answered
    200 and were audited."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api, \
            ThreadPoolExecutor(max_workers=2) as pool:  # fmt: skip
        ok(api.post("/keys", json={"alias": "rp"}), 201)
        for trial in range(1, 6):
            patches = [{"limits": {"rpm": trial}}, {"limits": {"tpm": 100 * trial}}]
            answers = list(pool.map(lambda body: api.patch("/keys/rp", json=body), patches))
            assert [r.status_code for r in answers] == [200, 200]
            limits = ok(api.get("/keys/rp"))["limits"]
            assert (limits["rpm"], limits["tpm"]) == (trial, 100 * trial), trial
