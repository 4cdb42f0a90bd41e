"""``tollhouse usage`` and the key commands run the admin API's code, audited as ``cli``."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.keyhelpers import gateway_config
from tests.test_admin_api import admin_client, admin_gateway, ok
from tests.test_cli_manage import tollhouse


def test_usage_and_key_commands_match_the_api(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    s = ("--store", store)
    code, created, _ = tollhouse("keys", "create", *s, "--alias", "svc")
    assert code == 0
    code, updated, _ = tollhouse("keys", "update", "svc", *s, "--rpm", "9", "--max-budget", "2")
    assert code == 0 and updated["rpm"] == 9 and updated["max_budget_usd"] == "2"
    assert tollhouse("keys", "update", "svc", *s)[0] == 1  # nothing to change
    with admin_gateway(gateway_config(store)) as gw, admin_client(gw) as api:
        msg = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"authorization": f"Bearer {created['secret']}"}
        for _ in range(3):
            assert httpx.post(gw.v1 + "/chat/completions", json=msg, headers=auth).is_success
        gw.wait_events(3)
        time.sleep(0.3)
        from_api = ok(api.get("/usage", params={"key": "svc"}))
        series_api = ok(api.get("/usage/series", params={"metric": "cost", "step": "1d",
                                                         "group_by": "model"}))  # fmt: skip
    code, from_cli, _ = tollhouse("usage", *s, "--key", "svc", "--start", from_api["start"],
                                  "--end", from_api["end"])  # fmt: skip
    assert code == 0 and from_cli == from_api and from_cli["requests"] == 3
    code, series, _ = tollhouse("usage", *s, "--series", "cost", "--step", "1d", "--group-by",
                                "model", "--start", series_api["start"], "--end", series_api["end"])  # fmt: skip
    assert code == 0 and series == series_api
    assert tollhouse("usage", *s, "--start", "soon")[0] == 1
    blocked = tollhouse("keys", "block", "svc", *s)
    assert blocked[1]["blocked"] is True, blocked
    assert tollhouse("keys", "show", "svc", *s)[1]["blocked"] is True
    assert tollhouse("keys", "delete", "svc", *s)[1] == {"deleted": True, "alias": "svc"}
    code, _, err = tollhouse("keys", "show", "svc", *s)
    assert code == 1 and "no key" in err
    with admin_gateway(gateway_config(store)) as gw, admin_client(gw) as api:
        rows = ok(api.get("/audit", params={"actor": "cli"}))["data"]
    assert [r["action"] for r in rows] == ["key.delete", "key.block", "key.update", "key.create"]
    assert {r["address"] for r in rows} == {"local"}
