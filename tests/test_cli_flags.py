"""The management CLI's documented flags each change what the gateway does.

``tests/test_cli_manage.py`` covers the common path through a subprocess; here
every remaining flag of ``tollhouse migrate|keys|teams|users|end-users|usage``
(README.md, docs/budgets-and-limits.md "Command reference", docs/admin-api.md)
is run through the real argument parser (``tollhouse.cli.main``, in process to
keep the file fast) and its effect is read back: from ``keys show``, the admin
API, ``/metrics``, or the answers of a gateway serving the same SQLite store.
The gateway runs on a frozen clock, so "two requests in one minute" cannot
straddle a minute boundary.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway, run_gateway, run_sync
from tests.keyhelpers import gateway_config
from tests.test_ledger_writer import EVENT
from tollhouse.accounting.ledger import event_row
from tollhouse.cli import main
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate

ADMIN_KEY = "cli-flags-admin-key"


def cli(*args: str) -> tuple[int, Any, str]:
    """``tollhouse ARGS`` in process: exit status, parsed JSON stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse refusing the arguments
            code = int(exit_.code or 0)
    text = out.getvalue()
    return code, orjson.loads(text) if text.strip() else None, err.getvalue()


def ok(*args: str) -> Any:
    code, out, err = cli(*args)
    assert code == 0, (args, err)
    return out


def store_of(tmp_path: Path, name: str = "cli.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/{name}"


def frozen_gateway(store: str, **extra: Any) -> Any:
    """The mock gateway on ``store`` (auth required, no key cache) with a frozen clock."""
    now = time.time()
    return run_gateway(gateway_config(store, **extra), environ={"TOLLHOUSE_ADMIN_KEY": ADMIN_KEY},
                       clock=lambda: now)  # fmt: skip


def chat(gw: RunningGateway, secret: str, model: str = "chat", **body: Any) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
               **body}  # fmt: skip
    return httpx.post(gw.v1 + "/chat/completions", json=payload, timeout=10,
                      headers={"authorization": f"Bearer {secret}"})  # fmt: skip


def statuses(gw: RunningGateway, secret: str, *models: str, **body: Any) -> list[int]:
    return [chat(gw, secret, m, **body).status_code for m in models]


def gauges(gw: RunningGateway) -> dict[str, float]:
    """One real scrape, as ``name{sorted labels}`` → value."""
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def budget(samples: dict[str, float], name: str, scope: str, entity: str, period: str) -> float:
    labels = {"scope": scope, "entity": entity, "period": period}
    return samples[f"{name}{sorted(labels.items())}"]


def admin_get(gw: RunningGateway, path: str) -> Any:
    r = httpx.get(gw.url + "/admin/v1" + path, timeout=10,
                  headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def about(expires_at: str | None, delta: timedelta) -> bool:
    assert expires_at is not None
    left = datetime.fromisoformat(expires_at) - datetime.now(UTC)
    return delta - timedelta(minutes=1) < left <= delta


def test_config_file_names_the_store_and_store_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--config FILE`` makes every command use that file's ``store.url``; ``--store``
    wins over it. Run from an empty directory: a command that ignored ``--config``
    would use the embedded default store, ``./tollhouse.db``, and the checks on the
    configured store would find nothing."""
    monkeypatch.chdir(tmp_path)
    configured, other = store_of(tmp_path, "configured.db"), store_of(tmp_path, "other.db")
    config_file = tmp_path / "tollhouse.yaml"
    config_file.write_text(json.dumps(gateway_config(configured)))  # JSON is YAML
    c = ("--config", str(config_file))
    assert ok("migrate", *c) == {"migrated": True}
    assert (tmp_path / "configured.db").exists()
    ok("teams", "create", *c, "--alias", "t")
    ok("users", "create", *c, "--alias", "u")
    ok("keys", "create", *c, "--alias", "k", "--team", "t", "--user", "u")
    ok("keys", "create", *c, "--alias", "gone")
    ok("keys", "delete", *c, "gone")
    ok("keys", "update", *c, "k", "--rpm", "7")
    ok("keys", "block", *c, "k")
    ok("keys", "unblock", *c, "k")
    ok("end-users", "set", *c, "eu", "--rpm", "3")
    assert ok("keys", "show", *c, "k")["rpm"] == 7
    assert ok("usage", *c)["requests"] == 0
    assert [k["alias"] for k in ok("keys", "list", *c)] == ["k"]
    assert not (tmp_path / "tollhouse.db").exists()

    # the same store read by URL has what the commands wrote through the config
    s = ("--store", configured)
    shown = ok("keys", "show", *s, "k")
    assert shown["rpm"] == 7 and shown["blocked"] is False and shown["team_id"] is not None
    # --store wins over --config
    ok("keys", "create", *c, "--store", other, "--alias", "elsewhere")
    assert [k["alias"] for k in ok("keys", "list", *c)] == ["k"]
    assert [k["alias"] for k in ok("keys", "list", "--store", other)] == ["elsewhere"]
    # an invalid config file: exit status 2, as documented
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {url: 12, nope: true}\n")
    code, _, err = cli("keys", "list", "--config", str(bad))
    assert code == 2 and "invalid config" in err


def test_key_create_update_and_unblock_flags_through_a_gateway(tmp_path: Path) -> None:
    """``keys create --rpm --expires-in``, ``keys unblock`` and ``keys update --models
    --model-limit --expires-in --soft-budget --budget-period --tpm``, each shown by what
    the gateway then does with the key (a key without the flag is the contrast)."""
    store = store_of(tmp_path)
    s = ("--store", store)

    def create(alias: str, *flags: str) -> str:
        return str(ok("keys", "create", *s, "--alias", alias, *flags)["secret"])

    rpm1 = create("rpm1", "--rpm", "1", "--expires-in", "2h")
    plain = create("plain")
    models = create("models")
    limited = create("limited", "--model-limit", "slow=1")
    tpm = create("tpm")
    budgeted = create("budgeted", "--max-budget", "1")

    shown = ok("keys", "show", *s, "rpm1")
    assert shown["rpm"] == 1 and about(shown["expires_at"], timedelta(hours=2))
    assert ok("keys", "show", *s, "plain")["expires_at"] is None

    with frozen_gateway(store) as gw:
        # --rpm 1: the second request in the minute is refused; no --rpm: both served
        assert statuses(gw, rpm1, "chat", "chat") == [200, 429]
        assert statuses(gw, plain, "chat", "chat") == [200, 200]

        # keys block, then keys unblock: the key is served again
        assert ok("keys", "block", *s, "plain")["blocked"] is True
        refused = chat(gw, plain)
        assert refused.status_code == 401 and "blocked_api_key" in refused.text
        assert ok("keys", "unblock", *s, "plain")["blocked"] is False
        assert chat(gw, plain).status_code == 200

        # update --models: a model outside the list is now refused
        assert statuses(gw, models, "slow") == [200]
        assert ok("keys", "update", *s, "models", "--models", "chat")["models"] == ["chat"]
        forbidden = chat(gw, models, "slow")
        assert forbidden.status_code == 403 and "model_not_allowed" in forbidden.text
        assert statuses(gw, models, "chat") == [200]

        # update --model-limit replaces the key's per-model set: chat limited, slow freed
        updated = ok("keys", "update", *s, "limited", "--model-limit", "chat=1")
        assert updated["model_limits"] == {"chat": {"rpm": 1, "tpm": None}}
        assert statuses(gw, limited, "chat", "chat", "slow", "slow") == [200, 429, 200, 200]

        # update --expires-in: a key that never expired now expires in 3 h
        assert about(ok("keys", "update", *s, "plain", "--expires-in", "3h")["expires_at"],
                     timedelta(hours=3))  # fmt: skip
        assert about(ok("keys", "show", *s, "plain")["expires_at"], timedelta(hours=3))

        # update --tpm: a request whose worst case exceeds 50 tokens is now refused
        assert statuses(gw, tpm, "chat", max_tokens=500) == [200]
        assert ok("keys", "update", *s, "tpm", "--tpm", "50")["tpm"] == 50
        too_big = chat(gw, tpm, max_tokens=500)
        assert too_big.status_code == 429 and "Send a smaller max_tokens" in too_big.text
        assert statuses(gw, tpm, "chat", max_tokens=5) == [200]

        # update --soft-budget and --budget-period: the key's budget gauges follow
        assert chat(gw, budgeted).status_code == 200
        before = gauges(gw)
        assert budget(before, "llm_budget_limit_usd", "key", "budgeted", "monthly") == 1
        assert not any(k.startswith("llm_budget_soft_limit_usd") and "budgeted" in k
                       for k in before)  # fmt: skip
        changed = ok("keys", "update", *s, "budgeted", "--soft-budget", "0.5",
                     "--budget-period", "weekly")  # fmt: skip
        assert changed["budget_period"] == "weekly"
        assert chat(gw, budgeted).status_code == 200
        after = gauges(gw)
        assert budget(after, "llm_budget_limit_usd", "key", "budgeted", "weekly") == 1
        assert budget(after, "llm_budget_soft_limit_usd", "key", "budgeted", "weekly") == 0.5
        limits = admin_get(gw, "/keys/budgeted")["limits"]
        assert limits["soft_budget_usd"] == "0.5" and limits["budget_period"] == "weekly"
        shown = ok("keys", "show", *s, "budgeted")  # the CLI reads every setting back too
        assert shown["soft_budget_usd"] == "0.5" and shown["budget_period"] == "weekly"


def test_key_cache_flag_overrides_the_config(tmp_path: Path) -> None:
    """``keys create --cache on`` caches for that key with the cache off in the config;
    ``--cache off`` does not cache with it on. A repeated identical request is the probe:
    it is a hit only where the cache applies."""
    store = store_of(tmp_path)
    s = ("--store", store)
    on = ok("keys", "create", *s, "--alias", "on", "--cache", "on")["secret"]
    off = ok("keys", "create", *s, "--alias", "off", "--cache", "off")["secret"]
    default = ok("keys", "create", *s, "--alias", "default")["secret"]
    shown = {alias: ok("keys", "show", *s, alias)["cache"] for alias in ("on", "off", "default")}
    assert shown == {"on": "on", "off": "off", "default": None}

    def hits(gw: RunningGateway) -> float:
        return gw.metric("llm_cache_requests_total", model="chat", result="hit")

    with frozen_gateway(store) as gw:  # cache.enabled: false (the default)
        statuses(gw, default, "chat", "chat")
        gw.wait_events(2)
        assert gw.total("llm_cache_requests_total") == 0
        statuses(gw, on, "chat", "chat")
        gw.wait_events(4)
        assert hits(gw) == 1
    with frozen_gateway(store, cache={"enabled": True, "scope": "key"}) as gw:
        statuses(gw, off, "chat", "chat")
        gw.wait_events(2)
        assert gw.total("llm_cache_requests_total") == 0
        statuses(gw, default, "chat", "chat")
        gw.wait_events(4)
        assert hits(gw) == 1


def test_team_and_user_create_flags_through_a_gateway(tmp_path: Path) -> None:
    """``teams create --models --tpm --soft-budget`` and ``users create --email
    --max-budget --soft-budget --budget-period --rpm --tpm``: refusals for the models and
    rate limits, the budget gauges for the budgets, the admin API for the email."""
    store = store_of(tmp_path)
    s = ("--store", store)
    ok("teams", "create", *s, "--alias", "team", "--models", "chat", "--tpm", "100",
       "--max-budget", "5", "--soft-budget", "4", "--budget-period", "daily")  # fmt: skip
    ok("users", "create", *s, "--alias", "ann", "--email", "ann@example.com", "--max-budget",
       "3", "--soft-budget", "2", "--budget-period", "weekly", "--rpm", "1")  # fmt: skip
    ok("users", "create", *s, "--alias", "bob", "--tpm", "100")
    in_team = ok("keys", "create", *s, "--alias", "kt", "--team", "team")["secret"]
    of_ann = ok("keys", "create", *s, "--alias", "ka", "--user", "ann")["secret"]
    of_bob = ok("keys", "create", *s, "--alias", "kb", "--user", "bob")["secret"]

    with frozen_gateway(store) as gw:
        # team --models: the team's keys may use only chat (a key alone may use every model)
        assert statuses(gw, in_team, "chat", "slow") == [200, 403]
        assert statuses(gw, of_bob, "slow") == [200]
        # team --tpm 100: a 500-token worst case is refused for the team's key only
        assert statuses(gw, in_team, "chat", max_tokens=500) == [429]
        assert statuses(gw, of_ann, "chat", max_tokens=500) == [200]
        # user --rpm 1: ann's key is refused on its next request in the minute
        assert statuses(gw, of_ann, "chat") == [429]
        # user --tpm 100: bob's key refuses the 500-token worst case, serves a small one
        assert statuses(gw, of_bob, "chat", max_tokens=500) == [429]
        assert statuses(gw, of_bob, "chat") == [200]

        samples = gauges(gw)
        assert budget(samples, "llm_budget_limit_usd", "team", "team", "daily") == 5
        assert budget(samples, "llm_budget_soft_limit_usd", "team", "team", "daily") == 4
        assert budget(samples, "llm_budget_limit_usd", "user", "ann", "weekly") == 3
        assert budget(samples, "llm_budget_soft_limit_usd", "user", "ann", "weekly") == 2
        assert samples["llm_ratelimit_limit[('entity', 'ann'), ('kind', 'requests'), "
                       "('scope', 'user')]"] == 1  # fmt: skip
        assert samples["llm_ratelimit_limit[('entity', 'bob'), ('kind', 'tokens'), "
                       "('scope', 'user')]"] == 100  # fmt: skip
        assert samples["llm_ratelimit_limit[('entity', 'team'), ('kind', 'tokens'), "
                       "('scope', 'team')]"] == 100  # fmt: skip

        ann = admin_get(gw, "/users/ann")
        assert ann["email"] == "ann@example.com"
        assert ann["limits"] == {"max_budget_usd": "3", "soft_budget_usd": "2",
                                 "budget_period": "weekly", "rpm": 1, "tpm": None}  # fmt: skip
        assert admin_get(gw, "/users/bob")["email"] is None
        team = admin_get(gw, "/teams/team")
        assert team["models"] == ["chat"] and team["limits"]["soft_budget_usd"] == "4"


def test_end_user_set_flags_through_a_gateway(tmp_path: Path) -> None:
    """``end-users set --soft-budget --budget-period --tpm``: the end user's budget gauges
    and its token limit; another end user is not limited; setting it again without
    ``--tpm`` removes the limit (documented: flags left out become unset)."""
    store = store_of(tmp_path)
    s = ("--store", store)
    key = ok("keys", "create", *s, "--alias", "app")["secret"]
    printed = ok("end-users", "set", *s, "vip", "--max-budget", "2", "--soft-budget", "1",
                 "--budget-period", "weekly", "--tpm", "100")  # fmt: skip
    assert printed == {"end_user": "vip", "budget_period": "weekly", "rpm": None, "tpm": 100}

    with frozen_gateway(store) as gw:
        assert statuses(gw, key, "chat", "chat", user="vip", max_tokens=500) == [429, 429]
        assert statuses(gw, key, "chat", user="vip") == [200]
        assert statuses(gw, key, "chat", user="other", max_tokens=500) == [200]
        samples = gauges(gw)
        assert budget(samples, "llm_budget_limit_usd", "end_user", "vip", "weekly") == 2
        assert budget(samples, "llm_budget_soft_limit_usd", "end_user", "vip", "weekly") == 1
        assert admin_get(gw, "/end-users/vip")["limits"]["soft_budget_usd"] == "1"

        ok("end-users", "set", *s, "vip", "--max-budget", "2")
        assert statuses(gw, key, "chat", user="vip", max_tokens=500) == [200]
        assert admin_get(gw, "/end-users/vip")["limits"]["soft_budget_usd"] is None


def ledger_rows(count: int) -> list[dict[str, Any]]:
    """Rows where each attribute's first value covers a different number of rows: team
    ``ta`` 1, user ``ua`` 2, end user ``e1`` 3, model ``m1`` 4, backend ``b1`` 5, provider
    ``openai`` 6 (of 7), so a filter read into the wrong column gives the wrong count."""
    now = time.time() - 120
    models = ["m1"] * 4 + ["m2"] * 2 + ["m3"]
    rows = []
    for i in range(count):
        event = replace(
            EVENT, request_id=f"usage-{i}", started_at=now + i, key=f"k{i}",
            team="ta" if i < 1 else "tb", user="ua" if i < 2 else "ux",
            end_user="e1" if i < 3 else "ex", model=models[i],
            backend="b1" if i < 5 else "bx", provider="openai" if i < 6 else "anthropic",
        )  # fmt: skip
        rows.append(event_row(event, f"usage-{i}"))
    return rows


def test_usage_filters_and_top(tmp_path: Path) -> None:
    """``usage --team --user --end-user --model --backend --provider`` each keep only the
    matching ledger rows (and combine); ``--top N`` keeps the N largest groups of a
    series and sums the rest into ``__other__``."""
    store = store_of(tmp_path)

    async def seed() -> None:
        await migrate(store)
        async with Store(store) as st:
            await st.ledger.insert(ledger_rows(7))

    run_sync(seed())
    s = ("--store", store)
    assert ok("usage", *s)["requests"] == 7
    for flag, value, expected in [("--team", "ta", 1), ("--user", "ua", 2),
                                  ("--end-user", "e1", 3), ("--model", "m1", 4),
                                  ("--backend", "b1", 5), ("--provider", "openai", 6)]:  # fmt: skip
        out = ok("usage", *s, flag, value)
        assert out["requests"] == expected, flag
        assert out["filters"] == {flag.removeprefix("--").replace("-", "_"): value}
    assert ok("usage", *s, "--team", "tb", "--model", "m1")["requests"] == 3

    def groups(*top: str) -> dict[str, float]:
        out = ok("usage", *s, "--series", "requests", "--group-by", "model", *top)
        return {series["group"]: series["total"] for series in out["series"]}

    assert groups("--top", "1") == {"m1": 4, "__other__": 3}
    assert groups("--top", "2") == {"m1": 4, "m2": 2, "__other__": 1}
    assert groups() == {"m1": 4, "m2": 2, "m3": 1}  # default top 5: no rest
