"""The documented knobs of routing and the response cache, each shown to change what happens.

Covers ``models[].retries`` (``when``, ``max_backoff``, ``max_retry_after``),
``models[].cooldown`` (``on_rate_limit``, ``window``, ``enabled``), a backend budget taking a
deployment out of rotation, and ``cache`` (``scope`` and the per-key ``--cache`` override).
Each test contrasts the option with its default (or the opposite setting), or, where that
would be too slow (``max_backoff``), says why it would fail if the option were ignored. Faults come from the HTTP ``MockUpstream`` (its ledger is
what the upstream really saw) or the in-process ``mock`` provider.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.mock_upstream import MockUpstream
from tests.conftest import RunningGateway, mock_config, run_gateway
from tests.keyhelpers import gateway_config, manage
from tests.test_cli_manage import tollhouse
from tests.test_routing import backends, group, post
from tollhouse.identity.manage import LimitsInput, Manager


@pytest.fixture(scope="module")
def up() -> Iterator[MockUpstream]:
    with MockUpstream() as upstream:
        yield upstream


def upstream_calls(up: MockUpstream, since: int, at_least: int) -> Counter[str]:
    """What the upstream served since ``since``: waits for ``at_least`` ledger rows, then a
    moment more so that an unexpected extra call would show up too."""
    deadline = time.monotonic() + 3
    while len(up.ledger()) - since < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    return Counter(e.model for e in up.ledger()[since:])


def state(gw: RunningGateway, backend: str, upstream_model: str, model: str = "g") -> float:
    return gw.metric(
        "llm_deployment_state", model=model, backend=backend, upstream_model=upstream_model
    )


# --- retries.when ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failing", "when", "retried"),
    [
        # an explicit list: only those classes are retried
        ("a-fail-429", ["server_error"], False),
        ("a-fail-500", ["server_error"], True),
        ("a-malformed", ["invalid_response"], True),
        ("a-fail-500", ["invalid_response"], False),
        ("a-fail-400-ctx", ["context_length"], True),
        # the default list: rate_limit, timeout, network, server_error, and nothing else
        ("a-fail-429", None, True),
        ("a-fail-500", None, True),
        ("a-hang", None, True),
        ("DEAD", None, True),
        ("a-malformed", None, False),
        ("a-fail-400-ctx", None, False),
        # `any` is a documented error class for `when`; client errors are never retried
        ("a-malformed", ["any"], True),
        ("a-fail-500", ["any"], True),
        ("a-fail-400", ["any"], False),
    ],
    ids=lambda v: "default" if v is None else ",".join(v) if isinstance(v, list) else str(v),
)
def test_retries_when_lists_the_error_classes_that_are_retried(
    up: MockUpstream, failing: str, when: list[str] | None, retried: bool
) -> None:
    """``retries.when`` picks which failures move on to the next deployment. Each case pairs
    with another that differs only in ``when`` (429 retried by default, not with
    ``[server_error]``; malformed retried only when listed), so ignoring the option flips
    one of each pair."""
    first = ("dead", "m") if failing == "DEAD" else ("a", failing)
    model = group("g", first, ("b", "b-ok"), retries=1)
    if when is not None:
        model["retries"]["when"] = when
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        r = post(gw, "g")
        event = gw.wait_events(1)[0]
        upstream_seen = 0 if failing == "DEAD" else 1
        if retried:
            assert r.status_code == 200 and r.headers["x-tollhouse-backend"] == "b"
            assert len(event.attempts) == 2
            expected = Counter({"b-ok": 1}) + Counter({failing: upstream_seen})
        else:
            assert r.status_code != 200
            assert len(event.attempts) == 1 and event.attempts[0].retried is False
            expected = Counter({failing: upstream_seen})
        assert upstream_calls(up, since, sum(expected.values())) == expected
        assert gw.total("llm_retries_total") == (1 if retried else 0)


# --- retries.max_backoff and retries.max_retry_after -------------------------------------------


def test_max_backoff_caps_the_exponential_backoff(up: MockUpstream) -> None:
    """Five retries with ``backoff: 2`` would sleep up to 2+4+5+5+5 s (the default cap is 5 s):
    with full jitter the chance that this sums below 1 s is about 1e-5. ``max_backoff: 0.05``
    bounds every sleep at 50 ms, so six calls finish well within a second."""
    model = group("g", ("a", "a-fail-500"), retries=5, cooldown={"enabled": False})
    model["retries"].update(backoff=2.0, max_backoff=0.05)
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        started = time.monotonic()
        r = post(gw, "g")
        elapsed = time.monotonic() - started
        assert r.status_code == 502
        assert len(gw.wait_events(1)[0].attempts) == 6
        assert upstream_calls(up, since, 6) == Counter({"a-fail-500": 6})
        assert elapsed < 1.0
        assert gw.metric("llm_retries_total", backend="a", error_type="server_error") == 5


@pytest.mark.parametrize(("max_retry_after", "low", "high"), [(0.2, 0.2, 0.8), (None, 1.0, 3.0)])
def test_max_retry_after_caps_the_upstream_retry_after(
    up: MockUpstream, max_retry_after: float | None, low: float, high: float
) -> None:
    """The mock's 429 says ``retry-after: 1``. Retrying the same deployment waits for it,
    but no longer than ``max_retry_after``: 0.2 s with the cap, the full second with the
    default cap of 10 s. Without the option both cases would take at least 1 s."""
    model = group("g", ("a", "a-fail-429"), retries=1, cooldown={"enabled": False})
    if max_retry_after is not None:
        model["retries"]["max_retry_after"] = max_retry_after
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        started = time.monotonic()
        r = post(gw, "g")
        elapsed = time.monotonic() - started
        assert r.status_code == 429
        assert upstream_calls(up, since, 2) == Counter({"a-fail-429": 2})
        assert low <= elapsed < high


@pytest.mark.parametrize("retries", [0, 2])
def test_attempts_header_of_a_failed_request_counts_the_upstream_calls(
    up: MockUpstream, retries: int
) -> None:
    """routing.md: ``x-tollhouse-attempts`` is the number of upstream calls made. Found while
    checking ``max_backoff``: on a request that failed, the header must still equal what the
    upstream's ledger saw (and the event's attempts), not one more."""
    model = group("g", ("a", "a-fail-500"), retries=retries, cooldown={"enabled": False})
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        r = post(gw, "g")
        assert r.status_code == 502
        calls = upstream_calls(up, since, retries + 1)
        assert calls == Counter({"a-fail-500": retries + 1})
        assert len(gw.wait_events(1)[0].attempts) == retries + 1
        assert r.headers["x-tollhouse-attempts"] == str(retries + 1)


# --- cooldown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_rate_limit", [True, False])
def test_cooldown_on_rate_limit_decides_whether_one_429_cools_down(
    up: MockUpstream, on_rate_limit: bool
) -> None:
    """With ``on_rate_limit: true`` a single 429 takes the deployment out of rotation, so the
    next request goes straight to the other one; with ``false`` one 429 is just one failed
    call (far from ``min_calls: 5``), and the next request tries it again first."""
    model = group("g", ("a", "a-fail-429"), ("b", "b-ok"), retries=1,
                  cooldown={"on_rate_limit": on_rate_limit, "period": 30})  # fmt: skip
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        assert post(gw, "g").headers["x-tollhouse-attempts"] == "2"
        second = post(gw, "g")
        assert second.status_code == 200 and second.headers["x-tollhouse-backend"] == "b"
        if on_rate_limit:
            assert second.headers["x-tollhouse-attempts"] == "1"
            assert state(gw, "a", "a-fail-429") == 2
            assert gw.metric("llm_cooldowns_total", backend="a", reason="rate_limit") == 1
            expected = Counter({"a-fail-429": 1, "b-ok": 2})
        else:
            assert second.headers["x-tollhouse-attempts"] == "2"
            assert state(gw, "a", "a-fail-429") == 1  # degraded, still in rotation
            assert gw.total("llm_cooldowns_total", backend="a") == 0
            expected = Counter({"a-fail-429": 2, "b-ok": 2})
        assert upstream_calls(up, since, sum(expected.values())) == expected


@pytest.mark.parametrize(("window", "cools_down"), [(0.3, False), (60.0, True)])
def test_cooldown_window_forgets_failures_older_than_it(
    up: MockUpstream, window: float, cools_down: bool
) -> None:
    """Two failures, a pause longer than the short window, then a third failure. With
    ``min_calls: 3`` the third failure cools the deployment down only if the first two still
    count: they do within a 60 s window and do not within a 0.3 s one. (The health window
    runs on the monotonic clock, which ``run_gateway``'s ``clock=`` does not reach, so the
    test waits.)"""
    model = group("g", ("a", "a-fail-500"), ("b", "b-ok"), retries=1,
                  cooldown={"failure_rate": 0.5, "min_calls": 3, "window": window,
                            "period": 30})  # fmt: skip
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        for _ in range(2):
            assert post(gw, "g").headers["x-tollhouse-attempts"] == "2"
        assert state(gw, "a", "a-fail-500") == 1
        time.sleep(0.45)
        assert post(gw, "g").headers["x-tollhouse-attempts"] == "2"  # a's third failure
        assert gw.metric("llm_cooldowns_total", backend="a", reason="failure_rate") == (
            1 if cools_down else 0
        )
        fourth = post(gw, "g")
        assert fourth.headers["x-tollhouse-attempts"] == ("1" if cools_down else "2")
        assert state(gw, "a", "a-fail-500") == (2 if cools_down else 1)
        a_calls = 3 if cools_down else 4
        expected = Counter({"a-fail-500": a_calls, "b-ok": 4})
        assert upstream_calls(up, since, a_calls + 4) == expected


@pytest.mark.parametrize("failing", ["a-fail-500", "a-fail-429"])
@pytest.mark.parametrize("enabled", [True, False])
def test_cooldown_disabled_keeps_a_failing_deployment_in_rotation(
    up: MockUpstream, enabled: bool, failing: str
) -> None:
    """A group of two where the first always fails. Enabled, the failing deployment leaves
    rotation (after one 429, or after ``min_calls: 2`` failed calls) and later requests go
    straight to the healthy one; with ``enabled: false`` it is tried first every time."""
    model = group("g", ("a", failing), ("b", "b-ok"), retries=1,
                  cooldown={"enabled": enabled, "min_calls": 2, "period": 30})  # fmt: skip
    n = 5
    with run_gateway({"backends": backends(up), "models": [model]}) as gw:
        since = len(up.ledger())
        attempts = []
        for _ in range(n):
            r = post(gw, "g")
            assert r.status_code == 200 and r.headers["x-tollhouse-backend"] == "b"
            attempts.append(r.headers["x-tollhouse-attempts"])
        if enabled:
            tried = 1 if failing == "a-fail-429" else 2
            assert attempts == ["2"] * tried + ["1"] * (n - tried)
            assert gw.total("llm_cooldowns_total", backend="a") == 1
            assert state(gw, "a", failing) == 2
        else:
            tried = n
            assert attempts == ["2"] * n
            assert gw.total("llm_cooldowns_total", backend="a") == 0
            assert state(gw, "a", failing) == 1
        expected = Counter({failing: tried, "b-ok": n})
        assert upstream_calls(up, since, tried + n) == expected


# --- a backend whose budget is spent is skipped ------------------------------------------------


def test_a_deployment_whose_backend_budget_is_spent_is_skipped(up: MockUpstream) -> None:
    """Backend ``a`` costs 9 mUSD a request (5 prompt + 4 output tokens at 1000 USD/M) under a
    12 mUSD budget: one request fits. Afterwards the group serves from ``b`` instead of
    refusing, ``a`` is cooled down with reason ``budget``, and no retry is spent on it. The
    single-deployment model ``only-a`` shows that ``a``'s budget really is spent."""
    bs = backends(up)
    bs[0]["prices"] = {"input": 1000, "output": 1000}
    config = {
        "backends": bs,
        "budgets": [{"scope": "backend", "name": "a", "max_usd": "0.012", "period": "daily"}],
        "models": [
            group("g", ("a", "a-ok"), ("b", "b-ok"), retries=0),
            group("only-a", ("a", "only-a-ok"), retries=0),
        ],
    }
    with run_gateway(config) as gw:
        since = len(up.ledger())
        first = post(gw, "g")
        assert first.status_code == 200 and first.headers["x-tollhouse-backend"] == "a"
        assert gw.wait_events(1)[0].cost == Decimal("0.009")
        for _ in range(3):
            r = post(gw, "g")
            assert r.status_code == 200 and r.headers["x-tollhouse-backend"] == "b"
            assert r.headers["x-tollhouse-attempts"] == "1"
        assert gw.metric("llm_cooldowns_total", backend="a", reason="budget") == 1
        assert state(gw, "a", "a-ok") == 2
        assert gw.total("llm_retries_total") == 0
        refused = post(gw, "only-a")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert upstream_calls(up, since, 4) == Counter({"a-ok": 1, "b-ok": 3})


@pytest.mark.parametrize("limit", ["budget", "tpm"])
def test_one_request_too_big_for_a_backends_limit_does_not_take_it_out_of_rotation(
    up: MockUpstream, limit: str
) -> None:
    """A request whose own worst case is more than backend ``a``'s whole budget (or tpm)
    is served by ``b``; ``a`` is not cooled down, since the limit is not spent, and the
    next ordinary request goes to ``a`` again. Before, ``a`` stayed out of rotation until
    the window's end: the rest of the day (or minute) for one oversized request."""
    bs = backends(up)
    bs[0]["prices"] = {"input": 1000, "output": 1000}  # 1 mUSD a token
    config: dict[str, Any] = {"backends": bs, "models": [group("g", ("a", "a-ok"), ("b", "b-ok"),
                                                             retries=0)]}  # fmt: skip
    if limit == "budget":
        config["budgets"] = [{"scope": "backend", "name": "a", "max_usd": "1", "period": "daily"}]
    else:
        config["rate_limits"] = [{"scope": "backend", "name": "a", "tpm": 500}]
    with run_gateway(config) as gw:
        since = len(up.ledger())
        big = post(gw, "g", max_tokens=100_000)  # 100 USD / 100,005 tokens at worst
        assert big.status_code == 200 and big.headers["x-tollhouse-backend"] == "b"
        for _ in range(2):
            r = post(gw, "g")
            assert r.status_code == 200 and r.headers["x-tollhouse-backend"] == "a"
        assert gw.total("llm_cooldowns_total", backend="a") == 0
        assert state(gw, "a", "a-ok") == 0
        assert upstream_calls(up, since, 3) == Counter({"a-ok": 2, "b-ok": 1})


def test_a_request_too_big_for_the_callers_budget_gets_no_retry_after(store_url: str) -> None:
    """Its worst case is more than the whole budget: no reset makes room, so no
    Retry-After (it said ~27 days for a monthly budget) and the message says what to do."""

    async def setup(m: Manager) -> str:
        limits = LimitsInput(max_budget_usd=Decimal("0.001"), budget_period="monthly")
        return (await m.create_key("small", limits=limits)).secret

    secret = manage(store_url, setup)
    with run_gateway(gateway_config(store_url)) as gw:
        r = httpx.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {secret}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                             "max_tokens": 10**9})  # fmt: skip
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
        assert "retry-after" not in r.headers and "Send a smaller max_tokens" in r.text
        ok = httpx.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {secret}"},
                        json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 3})  # fmt: skip
        assert ok.status_code == 200


# --- cache.scope ---------------------------------------------------------------------------------


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "scope me"}], "max_tokens": 4}


def cache_header(gw: RunningGateway, secret: str, body: dict[str, Any] = CHAT) -> str | None:
    r = httpx.post(gw.v1 + "/chat/completions", json=body,
                   headers={"authorization": f"Bearer {secret}"}, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.headers.get("x-tollhouse-cache")


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (None, ["miss", "hit", "miss", "hit"]),  # the default is team
        ("team", ["miss", "hit", "miss", "hit"]),
        ("key", ["miss", "miss", "miss", "hit"]),
        ("global", ["miss", "hit", "hit", "hit"]),
    ],
)
def test_cache_scope_decides_who_shares_answers(
    tmp_path: Path, scope: str | None, expected: list[str]
) -> None:
    """Keys ``red-1`` and ``red-2`` are in team red, ``blue-1`` in team blue; all ask the
    same question, then ``red-1`` asks again. ``team`` shares within red only, ``key`` shares
    nothing across keys, ``global`` shares with everyone. The three outcome lists differ,
    so a gateway that ignored ``scope`` would fail two of the three cases."""
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"

    async def setup(m: Manager) -> dict[str, str]:
        for team in ("red", "blue"):
            await m.create_team(team, LimitsInput(), None)
        keys = {}
        for alias, team in (("red-1", "red"), ("red-2", "red"), ("blue-1", "blue")):
            keys[alias] = (await m.create_key(alias, team=team)).secret
        return keys

    keys = manage(url, setup)
    cache: dict[str, Any] = {"enabled": True, "ttl": 60}
    if scope is not None:
        cache["scope"] = scope
    with run_gateway(gateway_config(url, cache=cache)) as gw:
        seen = [cache_header(gw, keys[k]) for k in ("red-1", "red-2", "blue-1", "red-1")]
        assert seen == expected
        events = gw.wait_events(4)
        assert [e.team for e in events] == ["red", "red", "blue", "red"]
        assert [e.cache for e in events] == expected


# --- the per-key cache override ------------------------------------------------------------------


def test_a_keys_cache_setting_overrides_cache_enabled(tmp_path: Path) -> None:
    """``tollhouse keys create --cache on|off`` overrides ``cache.enabled`` for that key: a key
    with ``off`` never gets the cache (no header, both requests reach the upstream) even with
    the cache on; one with ``on`` gets hits even with it off; a key without the flag follows
    ``enabled``. Each key asks its own question so no answer is shared between them; each
    gateway starts with an empty memory cache."""
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    secrets = {}
    for flag in ("on", "off"):
        code, out, err = tollhouse("keys", "create", "--store", url, "--alias", flag,
                                   "--cache", flag)  # fmt: skip
        assert code == 0, err
        secrets[flag] = out["secret"]
    secrets["default"] = manage(url, lambda m: m.create_key("default")).secret
    for enabled in (True, False):
        config = gateway_config(url, cache={"enabled": enabled, "ttl": 60})
        default = ["miss", "hit"] if enabled else [None, None]
        expected = {"on": ["miss", "hit"], "off": [None, None], "default": default}
        with run_gateway(config) as gw:
            for alias, secret in secrets.items():
                content = f"question from {alias}"
                body = {**CHAT, "messages": [{"role": "user", "content": content}]}
                seen = [cache_header(gw, secret, body) for _ in range(2)]
                assert seen == expected[alias], (enabled, alias)
            events = gw.wait_events(6)
            hits = Counter(e.key for e in events if e.cache == "hit")
            assert hits == Counter({"on": 1, **({"default": 1} if enabled else {})}), enabled


def test_a_cache_hit_saves_exactly_what_the_answer_cost() -> None:
    """The cached record kept the cost rounded up to the nano-USD, so with prices of many
    digits each hit's saving was ~1e-10 USD more than the answer had cost."""
    config = mock_config()
    config["backends"][0]["prices"] = {"input": "0.1234567", "output": "0.7654321",
                                       "cached_input": "0.0617283"}  # fmt: skip
    config["cache"] = {"enabled": True, "scope": "global"}
    with run_gateway(config) as gw:
        body = {"model": "cached", "messages": [{"role": "user", "content": "save me exactly"}]}
        for expected in ("miss", "hit"):
            r = httpx.post(gw.v1 + "/chat/completions", json=body)
            assert r.headers["x-tollhouse-cache"] == expected
        miss, hit = gw.wait_events(2)
    assert miss.cost is not None and miss.cost.as_tuple().exponent < -9  # finer than nano
    assert hit.saved_cost == miss.cost and hit.saved_usage == miss.usage
