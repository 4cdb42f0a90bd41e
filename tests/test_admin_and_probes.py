"""Active health probes against a real slow upstream, and the admin API's documented results.

Part one (docs/configuration.md "backends[].health_check", docs/metrics.md `llm_backend_up`,
docs/routing.md "Active health probes"): a tiny aiohttp upstream in a thread answers the
probe (the provider's model list) as slowly as the test says, and counts every probe, so
``timeout`` and ``interval`` are each seen doing their job, and a down backend is seen
leaving rotation.

Part two (docs/admin-api.md): the list endpoints' filters and paging, checked item by item
rather than by shape, and the documented admin behaviours no other test exercised.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import RunningGateway, free_port, mid_minute_clock, run_gateway
from tests.keyhelpers import gateway_config
from tests.test_admin_analytics import settle
from tests.test_admin_api import (
    ADMIN_KEY,
    admin_client,
    admin_gateway,
    chat,
    local_config,
    ok,
)
from tests.test_backend_wiring import Recorder
from tests.test_config_effects import block_in_store
from tollhouse import __version__
from tollhouse.admin.settings import AdminSettings

MSG = [{"role": "user", "content": "probe me"}]


# --- a slow-probe upstream --------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSeen:
    at: float  # time.monotonic() when the probe arrived
    prefix: str  # first path segment: which backend probed
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    delay: float  # how long this probe's answer was held back


class ProbeUpstream(Recorder):
    """The recording upstream of test_backend_wiring, plus: every GET (a probe: the model
    list) is written down with its arrival time and held back ``probe_delay[prefix]``
    seconds, where ``prefix`` is the first path segment (one per backend); chat answers
    carry ``answer_headers``."""

    def __init__(self) -> None:
        super().__init__()
        self.probe_delay: dict[str, float] = {}
        self.probes: list[ProbeSeen] = []
        self.answer_headers: dict[str, str] = {}

    def probes_of(self, prefix: str, slow: bool | None = None) -> list[ProbeSeen]:
        """``prefix``'s probes (only the held-back ones, or only the others, if ``slow``)."""
        return [p for p in list(self.probes)
                if p.prefix == prefix and slow in (None, p.delay > 0)]  # fmt: skip

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            prefix = request.path.strip("/").split("/")[0]
            delay = self.probe_delay.get(prefix, 0.0)
            seen = ProbeSeen(time.monotonic(), prefix, request.path, dict(request.query),
                             CIMultiDict(request.headers), delay)  # fmt: skip
            self.probes.append(seen)
            if delay:
                await asyncio.sleep(delay)
            return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})
        resp = await super()._handle(request)
        if not resp.prepared:
            resp.headers.update(self.answer_headers)
        return resp


def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Poll ``check`` until it holds; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def backend_up(gw: RunningGateway, name: str) -> float | None:
    """``llm_backend_up{backend=name}``, ``None`` when the series does not exist."""
    return gw.registry.get_sample_value("llm_backend_up", {"backend": name})


def post(gw: RunningGateway, model: str) -> httpx.Response:
    body = {"model": model, "messages": MSG, "max_tokens": 3}
    return httpx.post(gw.v1 + "/chat/completions", json=body, timeout=10)


def openai_backend(up: ProbeUpstream, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "base_url": f"{up.url}/{name}/v1", **extra}


def priority_group(name: str, *backends: str) -> dict[str, Any]:
    return {"name": name, "strategy": "priority", "retries": {"attempts": 0},
            "deployments": [{"backend": b, "model": f"{b}-model", "priority": i}
                            for i, b in enumerate(backends)]}  # fmt: skip


@contextmanager
def probed_gateway(config: dict[str, Any]) -> Iterator[tuple[RunningGateway, httpx.Client]]:
    raw = {"auth": {"required": False}, **config}
    with admin_gateway(raw) as gw, admin_client(gw) as api:
        yield gw, api


def backend_state(api: httpx.Client, name: str) -> str:
    return {b["name"]: b["state"] for b in ok(api.get("/backends"))}[name]


# --- health_check.timeout ----------------------------------------------------------------


def test_a_probe_slower_than_timeout_fails_and_a_fast_one_brings_the_backend_back() -> None:
    """Both backends' model lists answer in 0.8 s. ``short`` (timeout 0.2) counts that as a
    failed probe about 0.2 s after the probe arrived, long before the answer; ``long``
    (timeout 2) stays up with the very same upstream. Were ``timeout`` ignored (default 5 s)
    ``short`` would stay up as well. While it is down its deployments leave rotation
    (state 2, `cooled_down` in the admin API) and the group is served by ``long``; a group
    with no other deployment still serves from it (docs/routing.md "What is skipped").
    Once the list is fast again, ``short`` is back within about ``interval``."""
    timeout, interval, delay = 0.2, 1.0, 0.8
    with ProbeUpstream() as up:
        config = {
            "backends": [
                openai_backend(up, "short",
                               health_check={"interval": interval, "timeout": timeout}),
                openai_backend(up, "long", health_check={"interval": interval, "timeout": 2.0}),
            ],
            "models": [priority_group("g", "short", "long"), priority_group("solo", "short")],
        }  # fmt: skip
        with probed_gateway(config) as (gw, api):
            wait_for(lambda: backend_up(gw, "short") == 1 and backend_up(gw, "long") == 1, 3)
            assert post(gw, "g").headers["x-tollhouse-backend"] == "short"
            assert backend_state(api, "short") == "healthy"

            up.probe_delay.update(short=delay, long=delay)
            down_at = wait_for(lambda: backend_up(gw, "short") == 0, interval + 2)
            probe = up.probes_of("short", slow=True)[0]
            took = down_at - probe.at
            assert timeout - 0.05 <= took < delay, f"failed {took:.3f} s after the probe arrived"
            assert gw.metric("llm_deployment_state", model="g", backend="short",
                             upstream_model="short-model") == 2  # fmt: skip
            assert backend_state(api, "short") == "cooled_down"
            r = post(gw, "g")
            assert r.status_code == 200 and r.headers["x-tollhouse-backend"] == "long"
            solo = post(gw, "solo")
            assert solo.status_code == 200 and solo.headers["x-tollhouse-backend"] == "short"

            # the long-timeout backend's slow probe completes: still up
            slow_long = up.probes_of("long", slow=True)[0]
            wait_for(lambda: time.monotonic() > slow_long.at + delay + 0.15, 2)
            assert backend_up(gw, "long") == 1

            fast_at = time.monotonic()
            up.probe_delay["short"] = 0.0
            back_at = wait_for(lambda: backend_up(gw, "short") == 1, interval + timeout + 2)
            assert back_at - fast_at <= interval + timeout + 0.4
            assert post(gw, "g").headers["x-tollhouse-backend"] == "short"
            assert backend_state(api, "short") == "healthy"


# --- health_check.interval ---------------------------------------------------------------


def test_interval_sets_how_often_the_model_list_is_asked_for() -> None:
    """With ``interval: 0.2`` the upstream sees about 5 probes a second; with ``interval:
    30`` (same gateway, same upstream) only the first one in the same second."""
    with ProbeUpstream() as up:
        config = {
            "backends": [openai_backend(up, "often", health_check={"interval": 0.2}),
                         openai_backend(up, "rarely", health_check={"interval": 30})],
            "models": [priority_group("g", "often", "rarely")],
        }  # fmt: skip
        with probed_gateway(config) as (gw, _):
            wait_for(lambda: bool(up.probes_of("often")) and bool(up.probes_of("rarely")), 3)
            first = up.probes_of("often")[0].at
            wait_for(lambda: time.monotonic() > first + 1.02, 3)
            often = up.probes_of("often")
            in_one_second = [p for p in often if p.at <= first + 1.0]
            assert 4 <= len(in_one_second) <= 7, [round(p.at - first, 3) for p in often]
            assert len(up.probes_of("rarely")) == 1
            assert backend_up(gw, "often") == backend_up(gw, "rarely") == 1


# --- what the probe asks for -------------------------------------------------------------

PROBES = {  # provider: (base URL suffix, probe path, probe query, key header, its value)
    "openai": ("/oa/v1", "/oa/v1/models", {}, "authorization", "Bearer sk-up-probe"),
    "azure": ("/az", "/az/openai/models", {"api-version": "2024-10-21"}, "api-key", "sk-up-probe"),
    "anthropic": ("/an", "/an/v1/models", {}, "x-api-key", "sk-up-probe"),
}


@pytest.mark.parametrize("provider", sorted(PROBES))
def test_the_probe_is_the_providers_model_list_with_the_backends_credentials(
    provider: str,
) -> None:
    """docs/configuration.md: the probe is ``GET {base_url}/models`` (Azure
    ``/openai/models?api-version=…``, Anthropic ``/v1/models``) with the credentials
    requests use. A second backend without ``health_check`` is never probed and has no
    ``llm_backend_up`` series (probes are off when absent)."""
    suffix, path, query, header, value = PROBES[provider]
    with ProbeUpstream() as up:
        probed = {"name": "probed", "provider": provider, "base_url": up.url + suffix,
                  "api_key_env": "UP_KEY", "health_check": {"interval": 0.1}}  # fmt: skip
        if provider == "azure":
            probed["api_version"] = "2024-10-21"
        config = {
            "auth": {"required": False},
            "backends": [probed, openai_backend(up, "unprobed")],
            "models": [{"name": "p", "backend": "probed", "model": "dep"},
                       {"name": "u", "backend": "unprobed", "model": "dep"}],
        }  # fmt: skip
        environ = {"TOLLHOUSE_ADMIN_KEY": ADMIN_KEY, "UP_KEY": "sk-up-probe"}
        with run_gateway(config, environ=environ) as gw:
            wait_for(lambda: len(up.probes_of(suffix.split("/")[1])) >= 2, 3)
            assert backend_up(gw, "probed") == 1
            time.sleep(0.15)
            assert backend_up(gw, "unprobed") is None
        seen = up.probes_of(suffix.split("/")[1])
        assert {(p.path, tuple(p.query.items())) for p in seen} == {(path, tuple(query.items()))}
        assert all(p.headers.getall(header) == [value] for p in seen)
        assert up.probes_of("unprobed") == []


# --- admin list endpoints: filters and paging --------------------------------------------

TEAMS = ("alpha", "beta")
USERS = {"ann": "alpha", "bob": "alpha", "cid": "beta"}
# created in this (non-alphabetical) order: alias, team, user
KEYS = [("k-g", "alpha", "ann"), ("k-a", "alpha", "bob"), ("k-e", "beta", "cid"),
        ("k-c", None, None), ("k-f", "alpha", None), ("k-b", None, "ann"),
        ("k-d", "beta", None)]  # fmt: skip


@dataclass
class Populated:
    gw: RunningGateway
    api: httpx.Client
    secrets: list[str]
    actions: list[tuple[str, str]]  # (action, target) in the order they happened


@pytest.fixture(scope="module")
def populated() -> Iterator[Populated]:
    """Two teams, three users and seven keys, made through the admin API; read-only after."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        actions: list[tuple[str, str]] = []
        for team in TEAMS:
            ok(api.post("/teams", json={"alias": team}), 201)
            actions.append(("team.create", team))
        for user, team in USERS.items():
            ok(api.post("/users", json={"alias": user, "team": team}), 201)
            actions.append(("user.create", user))
        secrets = []
        for alias, team, user in KEYS:
            body = {"alias": alias, **({"team": team} if team else {}),
                    **({"user": user} if user else {})}  # fmt: skip
            secrets.append(ok(api.post("/keys", json=body), 201)["secret"])
            actions.append(("key.create", alias))
        yield Populated(gw, api, secrets, actions)


def aliases(r: httpx.Response) -> list[str]:
    return [item["alias"] for item in ok(r)]


def expect_400(r: httpx.Response, param: str) -> None:
    assert r.status_code == 400, (r.request.url, r.text)
    error = r.json()["error"]
    assert (error["code"], error["type"], error["param"]) == (
        "invalid_request", "invalid_request_error", param), error  # fmt: skip
    assert error["message"] and r.headers["x-request-id"]


def test_key_list_filters_return_exactly_the_matching_keys(populated: Populated) -> None:
    """``GET /keys?team=&user=``: each filter keeps exactly the keys of that team or user,
    both together combine with AND; the list is ordered by alias (not by creation) and never
    holds a secret. An unknown team is a 404, not an empty list."""
    api = populated.api
    everything = ok(api.get("/keys"))
    assert [k["alias"] for k in everything] == sorted(alias for alias, _, _ in KEYS)
    assert all("secret" not in k for k in everything)
    assert not any(secret in api.get("/keys").text for secret in populated.secrets)

    def want(team: str | None = None, user: str | None = None) -> list[str]:
        return sorted(a for a, t, u in KEYS if (team in (None, t)) and (user in (None, u)))

    for team in TEAMS:
        assert aliases(api.get("/keys", params={"team": team})) == want(team=team)
    for user in USERS:
        assert aliases(api.get("/keys", params={"user": user})) == want(user=user)
    assert aliases(api.get("/keys", params={"team": "alpha", "user": "ann"})) == ["k-g"]
    assert aliases(api.get("/keys", params={"team": "beta", "user": "ann"})) == []
    missing = api.get("/keys", params={"team": "nobody"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_key_list_pages_with_limit_and_offset_without_gaps_or_repeats(
    populated: Populated, size: int
) -> None:
    """``limit``/``offset`` cut the alias-ordered list into consecutive pages: page by
    page, every key exactly once, in order; past the end an empty page. The same with a
    filter applied first."""
    api = populated.api
    full = aliases(api.get("/keys"))
    for params, expected in (({}, full), ({"team": "alpha"}, ["k-a", "k-f", "k-g"])):
        seen: list[str] = []
        offset = 0
        while True:
            page = aliases(api.get("/keys", params={**params, "limit": size, "offset": offset}))
            assert len(page) <= size
            if not page:
                break
            assert page == expected[offset : offset + size]
            seen += page
            offset += size
        assert seen == expected


@pytest.mark.parametrize(
    ("param", "value"),
    [("limit", "0"), ("limit", "-1"), ("limit", "1001"), ("limit", "ten"),
     ("offset", "-1"), ("offset", str(10**6 + 1))],
)  # fmt: skip
@pytest.mark.parametrize("route", ["/keys", "/teams", "/users", "/end-users"])
def test_out_of_range_paging_values_are_openai_style_400s(
    populated: Populated, route: str, param: str, value: str
) -> None:
    """docs/admin-api.md "Errors": a bad field is 400 ``invalid_request`` naming it in
    ``param``. ``limit`` must be 1..1000 (the OpenAPI schema's bounds), ``offset`` ≥ 0."""
    expect_400(populated.api.get(route, params={param: value}), param)


def test_the_largest_limit_is_accepted(populated: Populated) -> None:
    """``limit=1000`` is the top of the range: accepted, everything returned."""
    assert len(ok(populated.api.get("/keys", params={"limit": 1000}))) == len(KEYS)


def test_user_and_team_lists_filter_and_page(populated: Populated) -> None:
    """``GET /users?team=`` keeps the team's users; teams and users page like keys."""
    api = populated.api
    assert aliases(api.get("/users")) == sorted(USERS)
    for team in TEAMS:
        assert aliases(api.get("/users", params={"team": team})) == sorted(
            u for u, t in USERS.items() if t == team
        )
    assert aliases(api.get("/users", params={"limit": 2})) == ["ann", "bob"]
    assert aliases(api.get("/users", params={"limit": 2, "offset": 2})) == ["cid"]
    assert aliases(api.get("/users", params={"team": "alpha", "offset": 1})) == ["bob"]
    assert aliases(api.get("/teams", params={"limit": 1})) == ["alpha"]
    assert aliases(api.get("/teams", params={"limit": 1, "offset": 1})) == ["beta"]
    assert aliases(api.get("/teams", params={"offset": 2})) == []


# --- the audit log: filters and paging ----------------------------------------------------


def test_audit_pages_newest_first_through_next_before_id(populated: Populated) -> None:
    """``GET /audit`` returns rows newest first; following ``next_before_id`` page by page
    yields every row once, in order, and the last page has ``next_before_id: null``."""
    api = populated.api
    full = ok(api.get("/audit", params={"limit": 1000}))
    assert full["next_before_id"] is None
    rows = full["data"]
    assert [(r["action"], r["target"]) for r in reversed(rows)] == populated.actions
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    collected: list[int] = []
    params: dict[str, Any] = {"limit": 5}
    pages = 0
    while True:
        page = ok(api.get("/audit", params=params))
        pages += 1
        assert len(page["data"]) <= 5
        collected += [r["id"] for r in page["data"]]
        if page["next_before_id"] is None:
            break
        assert page["next_before_id"] == page["data"][-1]["id"]
        params["before_id"] = page["next_before_id"]
    assert collected == ids
    assert pages == -(-len(ids) // 5)


def test_audit_filters_keep_exactly_the_matching_rows(populated: Populated) -> None:
    """``actor``, ``action``, ``target_type``, ``target``, ``start`` and ``end`` (window
    ``[start, end)``, unix seconds or RFC 3339) each keep exactly the matching rows, and
    combine with AND."""
    api = populated.api
    rows = ok(api.get("/audit", params={"limit": 1000}))["data"]

    def got(**params: Any) -> list[int]:
        return [r["id"] for r in ok(api.get("/audit", params={"limit": 1000, **params}))["data"]]

    def where(keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        return [r["id"] for r in rows if keep(r)]

    assert got(actor="admin") == where(lambda r: True) and got(actor="cli") == []
    assert got(action="key.create") == where(lambda r: r["action"] == "key.create")
    assert len(got(action="key.create")) == len(KEYS)
    assert got(target_type="user") == where(lambda r: r["target_type"] == "user")
    assert len(got(target_type="user")) == len(USERS)
    assert got(target="k-g") == where(lambda r: r["target"] == "k-g") != []
    assert got(action="team.create", target="beta") == where(
        lambda r: r["action"] == "team.create" and r["target"] == "beta")  # fmt: skip
    assert got(action="team.create", target="k-g") == []

    stamps = sorted({datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) for r in rows})
    middle = stamps[len(stamps) // 2]
    assert middle.tzinfo is not None
    as_text = middle.isoformat()
    after = where(lambda r: datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) >= middle)
    before = where(lambda r: datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) < middle)
    assert after and before
    assert got(start=as_text) == after
    assert got(end=as_text) == before
    assert got(start=str(middle.timestamp())) == after
    assert got(start=as_text, action="key.create") == [i for i in after if i in got(
        action="key.create")]  # fmt: skip


@pytest.mark.parametrize(
    ("param", "value"), [("limit", "0"), ("limit", "1001"), ("before_id", "0")]
)
def test_audit_refuses_out_of_range_paging(populated: Populated, param: str, value: str) -> None:
    expect_400(populated.api.get("/audit", params={param: value}), param)


def test_audit_refuses_a_bad_time(populated: Populated) -> None:
    r = populated.api.get("/audit", params={"start": "last tuesday"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


# --- PATCH semantics, money in and out ----------------------------------------------------


def test_patch_changes_only_what_is_sent_and_null_removes() -> None:
    """docs/admin-api.md "Management": in a PATCH only the fields sent change; inside
    ``limits`` only the limits sent change and ``null`` removes one; ``"limits": null``
    removes them all. Money is a decimal number or string in, a decimal string out (and is
    a decimal string in the audit row's ``changes``). An alias can be changed; changing it
    to a taken one is 409 ``conflict``."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        limits = {"max_budget_usd": 0.1, "soft_budget_usd": "0.05", "budget_period": "weekly",
                  "rpm": 10, "tpm": 1000}  # fmt: skip
        team = ok(api.post("/teams", json={"alias": "t", "limits": limits, "models": ["chat"],
                                           "metadata": {"cc": "7"}}), 201)  # fmt: skip
        assert team["limits"] == {"max_budget_usd": "0.1", "soft_budget_usd": "0.05",
                                  "budget_period": "weekly", "rpm": 10, "tpm": 1000}  # fmt: skip
        one = ok(api.patch("/teams/t", json={"limits": {"rpm": None, "max_budget_usd": 2.5}}))
        assert one["limits"] == {"max_budget_usd": "2.5", "soft_budget_usd": "0.05",
                                 "budget_period": "weekly", "rpm": None, "tpm": 1000}  # fmt: skip
        assert one["models"] == ["chat"] and one["metadata"] == {"cc": "7"}  # not sent: kept
        cleared = ok(api.patch("/teams/t", json={"limits": None, "metadata": None,
                                                 "models": None}))  # fmt: skip
        assert set(cleared["limits"].values()) == {None}
        assert cleared["metadata"] == {} and cleared["models"] is None

        ok(api.post("/users", json={"alias": "u", "email": "u@example.com",
                                    "limits": {"rpm": 5, "tpm": 50}}), 201)  # fmt: skip
        user = ok(api.patch("/users/u", json={"team": "t", "limits": {"tpm": None}}))
        assert user["team_id"] == team["id"] and user["email"] == "u@example.com"
        assert (user["limits"]["rpm"], user["limits"]["tpm"]) == (5, None)

        precise = {"max_budget_usd": "12.345678901"}
        key = ok(api.post("/keys", json={"alias": "k", "models": ["chat"], "limits": precise}),
                 201)  # fmt: skip
        assert key["limits"]["max_budget_usd"] == "12.345678901"
        renamed = ok(api.patch("/keys/k", json={"alias": "k2", "limits": {"tpm": 9}}))
        assert renamed["alias"] == "k2" and renamed["id"] == key["id"]
        assert renamed["models"] == ["chat"] and renamed["limits"]["max_budget_usd"] == (
            "12.345678901")  # fmt: skip
        assert api.get("/keys/k").status_code == 404 and ok(api.get("/keys/k2"))["id"] == key["id"]
        ok(api.post("/keys", json={"alias": "other"}), 201)
        taken = api.patch("/keys/other", json={"alias": "k2"})
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "conflict"
        too_precise = api.post("/teams", json={"alias": "p", "limits": {"max_budget_usd": 1e-10}})
        assert too_precise.status_code == 400 and too_precise.json()["error"]["param"] == (
            "limits.max_budget_usd")  # fmt: skip

        update = ok(api.get("/audit", params={"action": "team.update", "limit": 1}))["data"][0]
        every_limit = dict.fromkeys(("max_budget_usd", "soft_budget_usd", "budget_period",
                                     "rpm", "tpm"))  # fmt: skip
        assert update["changes"] == {"limits": every_limit, "metadata": {}, "models": None}
        first = ok(api.get("/audit", params={"action": "team.update", "limit": 2}))["data"][1]
        assert first["changes"] == {"limits": {"rpm": None, "max_budget_usd": "2.5"}}


# --- every change drops the cached key lookups ------------------------------------------


def test_admin_changes_apply_to_the_next_request_despite_the_key_cache(tmp_path: Path) -> None:
    """docs/admin-api.md: "Every change drops the process's cached key lookups, so a block
    or a new limit applies to the next request". With ``auth.cache_ttl: 60`` a change made
    behind the gateway's back (plain SQL) is not seen (the cache is in effect), yet a new
    budget, a model restriction and a user block made through the admin API each apply to
    the very next request — and the SQL change shows up too once the API dropped the cache."""
    db = tmp_path / "store.db"
    config = gateway_config(f"sqlite+aiosqlite:///{db}")
    config["auth"]["cache_ttl"] = 60
    with admin_gateway(config) as gw, admin_client(gw) as api:
        ok(api.post("/users", json={"alias": "u"}), 201)
        k = ok(api.post("/keys", json={"alias": "k", "user": "u"}), 201)["secret"]
        side = ok(api.post("/keys", json={"alias": "side"}), 201)["secret"]
        assert chat(gw, k).status_code == 200 and chat(gw, side).status_code == 200  # cached
        block_in_store(db, "side")
        assert chat(gw, side).status_code == 200  # the stale cached lookup still admits it

        ok(api.patch("/keys/k", json={"limits": {"max_budget_usd": "0.000000001"}}))
        refused = chat(gw, k)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        assert chat(gw, side).json()["error"]["code"] == "blocked_api_key"  # cache dropped

        ok(api.patch("/keys/k", json={"limits": {"max_budget_usd": None}, "models": ["slow"]}))
        assert chat(gw, k).status_code == 403
        ok(api.patch("/keys/k", json={"models": None}))
        assert chat(gw, k).status_code == 200
        ok(api.post("/users/u/block"))
        assert chat(gw, k).json()["error"]["code"] == "blocked_api_key"
        ok(api.post("/users/u/unblock"))
        assert chat(gw, k).status_code == 200


# --- deletes: refusals, and the ledger keeps the alias -----------------------------------


def test_delete_refuses_owners_of_keys_or_users_and_the_ledger_keeps_the_alias() -> None:
    """A user with keys cannot be deleted (409), nor a team that still has users (even with
    no keys); once emptied both go. A deleted key's ledger rows keep its alias: usage by
    that key still counts its requests."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        ok(api.post("/teams", json={"alias": "t"}), 201)
        ok(api.post("/users", json={"alias": "u", "team": "t"}), 201)
        secret = ok(api.post("/keys", json={"alias": "gone", "user": "u"}), 201)["secret"]
        for _ in range(2):
            assert chat(gw, secret).status_code == 200
        for path in ("/users/u", "/teams/t"):
            r = api.delete(path)
            assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", path
        assert ok(api.delete("/keys/gone"))["deleted"] is True
        assert chat(gw, secret).json()["error"]["code"] == "invalid_api_key"
        r = api.delete("/teams/t")  # the user is still in it
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        assert ok(api.delete("/users/u"))["kind"] == "user"
        assert ok(api.delete("/teams/t"))["kind"] == "team"
        settle(gw, api, 3, folded=False)
        assert ok(api.get("/usage", params={"key": "gone"}))["requests"] == 2


# --- expiry -------------------------------------------------------------------------------


def test_expires_in_and_expires_at_set_when_a_key_stops_working() -> None:
    """``expires_in`` (``30d``) sets ``expires_at`` that far ahead; a key whose
    ``expires_at`` has passed is refused (401 ``expired_api_key``); PATCH ``expires_at:
    null`` removes the expiry and the key works again."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        before = datetime.now(UTC)
        soon = ok(api.post("/keys", json={"alias": "soon", "expires_in": "2h"}), 201)
        at = datetime.fromisoformat(soon["expires_at"].replace("Z", "+00:00"))
        assert timedelta(hours=2) - timedelta(seconds=5) <= at - before <= timedelta(
            hours=2, seconds=5)  # fmt: skip
        assert chat(gw, soon["secret"]).status_code == 200
        past = ok(api.post("/keys", json={"alias": "past",
                                          "expires_at": "2001-01-01T00:00:00Z"}), 201)  # fmt: skip
        r = chat(gw, past["secret"])
        assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
        assert ok(api.patch("/keys/past", json={"expires_at": None}))["expires_at"] is None
        assert chat(gw, past["secret"]).status_code == 200
        ok(api.patch("/keys/soon", json={"expires_at": "2001-01-01T00:00:00+02:00"}))
        assert chat(gw, soon["secret"]).json()["error"]["code"] == "expired_api_key"


# --- backends and models: live state -----------------------------------------------------


def test_backends_and_models_report_live_state() -> None:
    """``GET /backends``: base URL without credentials or query, models, state (`healthy`,
    `degraded` after a failed call, `unknown` with no deployment) and the upstream's last
    remaining requests and tokens. ``GET /models``: each group's deployments with their
    state, in-flight requests (seen while a slow answer is pending) and latency."""
    with ProbeUpstream() as up:
        up.answer_headers = {"x-ratelimit-remaining-requests": "42",
                             "x-ratelimit-remaining-tokens": "4242"}  # fmt: skip
        dead = f"http://127.0.0.1:{free_port()}/v1"
        config = {
            "backends": [
                openai_backend(up, "live"),
                {"name": "dead", "provider": "openai", "base_url": dead,
                 "timeouts": {"connect": 0.5, "read": 0.5}},
                {"name": "idle", "provider": "openai",
                 "base_url": "https://user:pw@example.invalid:8443/v1?api-key=sekrit"},
            ],
            "models": [priority_group("g", "live"), priority_group("d", "dead")],
        }  # fmt: skip
        with probed_gateway(config) as (gw, api):
            assert post(gw, "g").status_code == 200
            assert post(gw, "d").status_code >= 500
            backends = {b["name"]: b for b in ok(api.get("/backends"))}
            live = backends["live"]
            assert live["base_url"] == f"{up.url}/live/v1" and live["models"] == ["g"]
            assert live["state"] == "healthy"
            assert live["upstream_remaining_requests"] == {"live-model": 42}
            assert live["upstream_remaining_tokens"] == {"live-model": 4242}
            assert backends["dead"]["state"] == "degraded"
            idle = backends["idle"]
            assert idle["base_url"] == "https://example.invalid:8443/v1"
            assert (idle["models"], idle["state"]) == ([], "unknown")
            assert "sekrit" not in api.get("/backends").text and "pw@" not in api.get(
                "/backends").text  # fmt: skip

            fast_ms = ok(api.get("/models"))[0]["deployments"][0]["latency_ms"]
            up.delay = 0.6
            pending = threading.Thread(target=post, args=(gw, "g"))
            pending.start()

            def flying() -> bool:
                g = {m["name"]: m for m in ok(api.get("/models"))}["g"]
                return g["in_flight"] == 1 and g["deployments"][0]["in_flight"] == 1

            wait_for(flying, 3, step=0.05)
            pending.join(5)
            models = {m["name"]: m for m in ok(api.get("/models"))}
            g = models["g"]
            assert g["in_flight"] == 0 and g["deployments"][0]["in_flight"] == 0
            dep = g["deployments"][0]
            assert (dep["backend"], dep["upstream_model"], dep["state"]) == (
                "live", "live-model", "healthy")  # fmt: skip
            # a moving average: the slow call pulled it up by at least a fifth of 600 ms
            assert fast_ms < 100 and dep["latency_ms"] >= fast_ms + 0.2 * 600 - 20
            assert models["d"]["deployments"][0]["state"] == "degraded"


# --- budgets: live spend ------------------------------------------------------------------


def test_budgets_report_spend_remaining_and_reset_from_live_counters() -> None:
    """``GET /budgets`` lists the budgets on keys, teams and users with their spend (exactly
    the priced requests' cost), reservations, remaining amount and the seconds to the
    period's reset, read from the live counters in the windows the gate charged: both read
    the app's clock, here held in the middle of an hour three hours ago (so no real hour
    boundary can split the test, and a report read on the machine's time finds nothing)."""
    then = (time.time() // 3600 - 3) * 3600 + 1800
    with admin_gateway(local_config(), clock=lambda: then) as gw, admin_client(gw) as api:
        team = {"max_budget_usd": "5", "budget_period": "monthly"}
        user = {"max_budget_usd": "3", "soft_budget_usd": "1", "budget_period": "hourly"}
        key = {"max_budget_usd": "1", "budget_period": "daily"}
        ok(api.post("/teams", json={"alias": "t", "limits": team}), 201)
        ok(api.post("/users", json={"alias": "u", "team": "t", "limits": user}), 201)
        created = api.post("/keys", json={"alias": "k", "team": "t", "user": "u", "limits": key})
        secret = ok(created, 201)["secret"]
        for _ in range(3):
            assert chat(gw, secret).status_code == 200
        events = gw.wait_events(3)
        spent = sum((e.cost or Decimal(0) for e in events), Decimal(0))
        assert spent > 0
        budgets = {(b["scope"], b["entity"]): b for b in ok(api.get("/budgets"))}
        now = datetime.fromtimestamp(then, UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        hour = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        month = (now.replace(day=28) + timedelta(days=4)).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0)  # fmt: skip
        for scope, limit, soft, period, reset in (("key", "1", None, "daily", midnight),
                                                   ("team", "5", None, "monthly", month),
                                                   ("user", "3", "1", "hourly", hour)):  # fmt: skip
            b = budgets[(scope, {"key": "k", "team": "t", "user": "u"}[scope])]
            assert (b["limit_usd"], b["soft_limit_usd"], b["period"]) == (limit, soft, period)
            assert Decimal(b["spend_usd"]) == spent, scope
            assert Decimal(b["reserved_usd"]) == 0
            assert Decimal(b["remaining_usd"]) == Decimal(limit) - spent
            assert b["resets_in_seconds"] == (reset - now).total_seconds(), scope


# --- detailed health ------------------------------------------------------------------------


def test_admin_health_reports_ledger_rollup_and_loop_details() -> None:
    """``GET /admin/v1/health``: ``ledger_rows_written`` counts the rows written, the
    roll-up's watermark moves and ``rollup_pending_rows`` drains to 0 with no
    ``rollup_error``; ``backends`` is ``GET /backends``; the loop's max lag is at least
    its last lag."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        before = ok(api.get("/health"))
        assert before["ledger_rows_written"] == 0 and before["version"] == __version__
        for _ in range(3):
            chat(gw, None)  # refused (no key) yet one ledger row each
        settle(gw, api, 3, folded=True)
        h = ok(api.get("/health"))
        assert h["ledger_rows_written"] == 3 and h["ledger_write_errors"] == 0
        assert h["rollup_pending_rows"] == 0 and h["rollup_error"] is None
        assert h["rollup_watermark"] is not None and h["rollup_watermark"] >= 3
        assert h["event_loop_max_lag_ms"] >= h["event_loop_lag_ms"] >= 0
        assert h["uptime_seconds"] > 0 and h["status"] == "ok"
        assert h["backends"] == ok(api.get("/backends"))


# --- the order of the checks, and their default numbers -----------------------------------


def test_rate_limit_is_checked_before_the_admin_key() -> None:
    """Step 2 before step 3: once the bucket is empty a wrong key gets 429
    ``rate_limit_exceeded``, not 401, and is not counted as an auth failure."""
    with admin_gateway(local_config(), AdminSettings(rate=0.01, burst=2)) as gw, \
            admin_client(gw, "wrong-key") as intruder:  # fmt: skip
        assert [intruder.get("/keys").status_code for _ in range(2)] == [401, 401]
        r = intruder.get("/keys")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert gw.metric("tollhouse_auth_failures_total", surface="admin", reason="invalid") == 2


def test_a_throttled_address_is_refused_before_the_rate_limit() -> None:
    """Step 1 before step 2: a throttled address gets ``too_many_auth_failures`` on every
    request without spending its rate-limit tokens (burst 4: after two failures and three
    refusals the good key would be rate limited if the bucket were charged)."""
    settings = AdminSettings(rate=0.01, burst=4, max_auth_failures=2, cooloff=60)
    with admin_gateway(local_config(), settings) as gw, admin_client(gw) as api, \
            admin_client(gw, "wrong-key") as intruder:  # fmt: skip
        assert [intruder.get("/keys").status_code for _ in range(2)] == [401, 401]
        codes = [api.get("/keys").json()["error"]["code"] for _ in range(3)]
        assert codes == ["too_many_auth_failures"] * 3
        assert gw.metric("tollhouse_auth_throttled_total", surface="admin") == 3


def test_default_admin_numbers_are_the_documented_ones() -> None:
    """docs/admin-api.md: 20 requests per second with bursts of 60, and 20 failed
    authentications within 60 s throttle an address for 60 s. The defaults are checked
    both as values and at work (the burst: about 60 requests pass back to back; the
    throttle: the 21st request after 20 failures is refused with ``Retry-After`` ≈ 60)."""
    d = AdminSettings()
    assert (d.rate, d.burst, d.max_auth_failures, d.failure_window, d.cooloff) == (
        20.0, 60, 20, 60.0, 60.0)  # fmt: skip
    with admin_gateway(local_config(), d) as gw, admin_client(gw) as api:
        started = time.monotonic()
        passed = 0
        while (r := api.get("/teams")).status_code == 200:
            passed += 1
            assert passed < 500
        elapsed = time.monotonic() - started
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 60 <= passed <= 60 + 20 * elapsed + 1, (passed, elapsed)
    with admin_gateway(local_config(), d) as gw, admin_client(gw, "wrong") as intruder:
        assert {intruder.get("/teams").status_code for _ in range(20)} == {401}
        r = intruder.get("/teams")
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
        assert 58 <= int(r.headers["retry-after"]) <= 60


# --- tollhouse_admin_requests_total labels ------------------------------------------------


def test_admin_requests_are_counted_by_route_template_not_raw_path() -> None:
    """docs/admin-api.md "Metrics": requests are counted by route template
    (``/admin/v1/keys/{alias}``): two different aliases make one series, no alias appears as a
    label, and an unrouted path is not a label either."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        ok(api.post("/keys", json={"alias": "one"}), 201)
        ok(api.get("/keys/one"))
        assert api.get("/keys/two").status_code == 404
        assert api.get("/no/such/route").status_code == 404
        # A trailing slash was a 307 to anyone, before the admin key was checked, and its
        # raw path (whatever the caller put in it) became a label value.
        pasted = "/keys/sk-th-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/"
        unauthenticated = httpx.get(gw.url + "/admin/v1" + pasted, headers={"host": "evil.example"})
        assert (
            unauthenticated.status_code in (401, 404) and "location" not in unauthenticated.headers
        )
        assert api.get("/keys/").status_code == 404
        template = "/admin/v1/keys/{alias}"
        assert gw.metric("tollhouse_admin_requests_total", route=template, method="GET",
                         status_class="2xx") == 1  # fmt: skip
        assert gw.metric("tollhouse_admin_requests_total", route=template, method="GET",
                         status_class="4xx") == 1  # fmt: skip
        assert gw.metric("tollhouse_admin_requests_total", route="/admin/v1/keys",
                         method="POST", status_class="2xx") == 1  # fmt: skip
        routes = {s.labels["route"] for f in gw.registry.collect() for s in f.samples
                  if s.name == "tollhouse_admin_requests_total"}  # fmt: skip
        assert not any(a in r for r in routes for a in ("/one", "/two", "/no/such", "sk-th-"))
        assert routes <= {template, "/admin/v1/keys", "unmatched"}


# --- audit: no secrets, and a log line per change -----------------------------------------


def test_audit_redacts_secret_names_and_key_shaped_strings_and_logs_each_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/admin-api.md "Audit log": values under secret-looking names are replaced, any
    string shaped like a whole key is masked, and each row is also logged
    (``tollhouse.audit``, event ``admin_audit``)."""
    caplog.set_level(logging.INFO, logger="tollhouse.audit")
    pasted = "sk-th-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
    metadata = {"api_key": "plain-value", "password": "hunter2", "note": f"see {pasted}",
                "owner": "ann", pasted: "pasted as a name"}  # fmt: skip
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        r = ok(api.post("/teams", json={"alias": "t", "metadata": metadata}), 201)
        rid = api.patch("/teams/t", json={"metadata": {"owner": "bob"}}).headers["x-request-id"]
        rows = ok(api.get("/audit"))["data"]
    assert r["metadata"]["owner"] == "ann"
    created = rows[1]["changes"]["metadata"]
    assert created == {"api_key": "[redacted]", "password": "[redacted]",
                       "note": "see [redacted]", "owner": "ann",
                       "[redacted]": "pasted as a name"}  # fmt: skip
    assert rows[0]["request_id"] == rid
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "tollhouse.audit"]
    assert len(lines) == 2 and all(line.startswith("admin_audit ") for line in lines)
    assert "action=team.create" in lines[0] and "action=team.update" in lines[1]
    assert "hunter2" not in "".join(lines) and pasted not in "".join(lines)


# --- usage totals: the fields no other test reads ------------------------------------------


def test_usage_totals_rates_latency_ttft_and_last_request() -> None:
    """``GET /usage``: ``successes``, ``errors``, ``cancelled`` and ``success_rate``,
    ``latency.avg_ms`` and ``avg_ttft_ms`` (means of the recorded values, TTFT from streams
    only) and ``last_request_at`` all equal what the requests' own events say; and
    ``provider=none`` selects the requests refused before reaching a model."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        secret = ok(api.post("/keys", json={"alias": "k"}), 201)["secret"]
        auth = {"authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=gw.v1, headers=auth, timeout=10) as http:
            for model, stream in (("chat", False), ("chat", False), ("slow", True),
                                  ("fail-500", False), ("nope", False)):  # fmt: skip
                body = {"model": model, "messages": MSG, "max_tokens": 4, "stream": stream}
                http.post("/chat/completions", json=body)
            body = {"model": "slow", "messages": MSG, "max_tokens": 60, "stream": True}
            with http.stream("POST", "/chat/completions", json=body) as r:
                next(r.iter_raw())  # the first chunk, then hang up
        chat(gw, None)  # no key: refused before any model
        settle(gw, api, 7, folded=False)
        events = list(gw.events)
        totals = ok(api.get("/usage"))
        outcomes = [e.outcome for e in events]
        assert totals["requests"] == 7
        assert totals["successes"] == outcomes.count("success") == 3
        assert totals["errors"] == outcomes.count("error")
        assert totals["cancelled"] == outcomes.count("cancelled") == 1
        assert totals["success_rate"] == pytest.approx(3 / 7)
        assert totals["latency"]["avg_ms"] == pytest.approx(
            sum(e.duration for e in events) * 1000 / 7, rel=1e-6)  # fmt: skip
        ttfts = [e.ttft for e in events if e.ttft is not None]
        assert ttfts and all(e.stream for e in events if e.ttft is not None)
        assert totals["avg_ttft_ms"] == pytest.approx(sum(ttfts) * 1000 / len(ttfts), rel=1e-6)
        last = datetime.fromisoformat(totals["last_request_at"].replace("Z", "+00:00"))
        assert abs(last.timestamp() - max(e.started_at for e in events)) < 0.002
        refused = [e for e in events if e.provider == "none"]
        assert len(refused) == 2  # the unknown model and the missing key
        assert ok(api.get("/usage", params={"provider": "none"}))["requests"] == len(refused)


# --- usage series: metrics, alignment, bounds ---------------------------------------------


def test_usage_series_metrics_alignment_and_bounds() -> None:
    """``GET /usage/series``: ``tokens`` is input + output, ``input_tokens``,
    ``output_tokens`` and ``errors`` equal the events' sums; timestamps are multiples of the
    step since the epoch (``7m``, which does not divide an hour); more than 2,000 points, an
    unknown metric or group, a bad step and ``top`` outside 1..100 are 400s."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        secret = ok(api.post("/keys", json={"alias": "k"}), 201)["secret"]
        for model in ("chat", "cached", "fail-500", "chat"):
            chat(gw, secret, model)
        settle(gw, api, 4, folded=False)
        events = list(gw.events)
        want = {"input_tokens": sum(e.usage.input for e in events),
                "output_tokens": sum(e.usage.output for e in events),
                "errors": sum(e.outcome == "error" for e in events)}  # fmt: skip
        want["tokens"] = want["input_tokens"] + want["output_tokens"]
        assert want["errors"] == 1 and want["output_tokens"] > 0
        for metric, total in want.items():
            out = ok(api.get("/usage/series", params={"metric": metric, "step": "7m"}))
            (series,) = out["series"]
            assert series["total"] == total and sum(series["values"]) == total, metric
            stamps = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in out["timestamps"]]
            assert all(int(t.timestamp()) % 420 == 0 for t in stamps)
            start = datetime.fromisoformat(out["start"].replace("Z", "+00:00"))
            assert stamps[0] <= start < stamps[0] + timedelta(minutes=7)
            assert len(stamps) == len(series["values"])
        now = int(time.time())
        two_days = {"start": str(now - 2 * 86400), "end": str(now)}
        r = api.get("/usage/series", params={"step": "1m", **two_days})  # 2,880 points
        assert r.status_code == 400 and "2000" in r.json()["error"]["message"]
        assert ok(api.get("/usage/series", params={"step": "2m", **two_days}))  # 1,440
        expect_400(api.get("/usage/series", params={"metric": "bytes"}), "metric")
        expect_400(api.get("/usage/series", params={"group_by": "colour"}), "group_by")
        expect_400(api.get("/usage/series", params={"top": 0}), "top")
        expect_400(api.get("/usage/series", params={"top": 101}), "top")
        bad_step = api.get("/usage/series", params={"step": "1s"})
        assert bad_step.status_code == 400 and bad_step.json()["error"]["code"] == "invalid_request"
        # An offset that carries year 9999 (or year 1) past what a datetime holds was a 500.
        for edge in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"):
            for path in ("/usage", "/usage/series", "/audit"):
                r = api.get(path, params={"end": edge})
                assert r.status_code == 400, (path, edge, r.text)
            r = api.post("/keys", json={"alias": "edge", "expires_at": edge})
            assert r.status_code == 400, (edge, r.text)


# --- end users ------------------------------------------------------------------------------


def test_an_end_users_new_limits_apply_to_its_next_request() -> None:
    """``PUT``/``DELETE /end-users/{id}`` cleared the cached key lookups but not the cached
    end-user overrides, so the change waited for ``auth.cache_ttl`` (30 s)."""
    config = local_config()
    config["auth"]["cache_ttl"] = 300
    with admin_gateway(config, clock=mid_minute_clock()) as gw, admin_client(gw) as api:
        secret = ok(api.post("/keys", json={"alias": "svc"}), 201)["secret"]

        def ask() -> int:
            body = {"model": "chat", "messages": MSG, "max_tokens": 3, "user": "cust-9"}
            return httpx.post(gw.v1 + "/chat/completions", json=body, timeout=10,
                              headers={"authorization": f"Bearer {secret}"}).status_code  # fmt: skip

        assert [ask(), ask()] == [200, 200]  # looked up (no overrides) and cached
        ok(api.put("/end-users/cust-9", json={"limits": {"rpm": 1}}))
        assert [ask(), ask()] == [200, 429]
        ok(api.delete("/end-users/cust-9"))
        assert ask() == 200


def test_end_user_put_replaces_its_limits_and_the_list_pages() -> None:
    """``PUT /end-users/{id}`` gives an end user its own limits, replacing any it had (a
    limit not sent again is gone); ``GET /end-users`` lists them by id and pages."""
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        for who in ("cust-3", "cust-1", "cust-2"):
            ok(api.put(f"/end-users/{who}", json={"limits": {"rpm": 5}}))
        replaced = ok(api.put("/end-users/cust-1", json={"limits": {"max_budget_usd": "2"}}))
        assert replaced["limits"]["rpm"] is None and replaced["limits"]["max_budget_usd"] == "2"
        ids = [e["id"] for e in ok(api.get("/end-users"))]
        assert ids == ["cust-1", "cust-2", "cust-3"]
        assert [e["id"] for e in ok(api.get("/end-users", params={"limit": 2, "offset": 1}))] == [
            "cust-2", "cust-3"]  # fmt: skip
        assert ok(api.get("/audit", params={"action": "end_user.set"}))["data"][0][
            "changes"] == {"limits": {"max_budget_usd": "2"}}  # fmt: skip


def test_the_usage_examples_in_the_admin_guide_answer() -> None:
    """docs/admin-api.md's usage commands, as a shell expands them, answer 200: one had a
    start date that aged past the 400-day window and got a 400."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "admin-api.md").read_text()
    urls = re.findall(r'curl -s "localhost:4000/admin/v1(/usage[^"]*)"', doc)
    assert len(urls) >= 2
    with admin_gateway(local_config()) as gw, admin_client(gw) as api:
        for url in urls:
            expanded = subprocess.run(["bash", "-c", f'printf %s "{url}"'], check=True,
                                      capture_output=True, text=True).stdout  # fmt: skip
            r = api.get(expanded)
            assert r.status_code == 200, (url, r.text)
