"""No raw key anywhere: logs, access lines, metrics, audit rows, ledger rows, the store's bytes.

A full run through the proxy and the admin API (create, use, update, block,
delete; wrong keys; the CLI), captured at DEBUG, then every place a key could
leak is searched for every secret, the admin key included.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.keyhelpers import gateway_config
from tests.test_admin_api import ADMIN_KEY, admin_client, admin_gateway, chat, ok


def _cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse.cli", *args, "--store", store],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip


def test_no_raw_key_in_logs_metrics_audit_ledger_or_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    store = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    secrets = [ADMIN_KEY]
    with admin_gateway(gateway_config(store)) as gw, admin_client(gw) as api:
        ok(api.post("/teams", json={"alias": "t"}), 201)
        for alias in ("a", "b"):
            secrets.append(ok(api.post("/keys", json={"alias": alias, "team": "t"}), 201)["secret"])
        a, b = secrets[1:]
        assert chat(gw, a).status_code == 200
        stream = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        httpx.post(gw.v1 + "/chat/completions", json=stream, headers={"x-api-key": b})
        ok(api.patch("/keys/a", json={"limits": {"rpm": 9}}))
        ok(api.post("/keys/b/block"))
        assert chat(gw, b).status_code == 401
        ok(api.delete("/keys/a"))
        assert chat(gw, a).status_code == 401
        assert chat(gw, a[:-1] + "x").status_code == 401
        wrong_admin = ADMIN_KEY[:-1] + "x"
        with admin_client(gw, wrong_admin) as intruder:
            assert intruder.get("/keys").status_code == 401
        assert api.get("/keys/" + a).status_code in (400, 404)  # a secret in a path
        gw.wait_events(5)
        time.sleep(0.3)  # ledger flush
        scraped = httpx.get(gw.url + "/metrics").text
        audit = api.get("/audit", params={"limit": 1000}).text
        usage = api.get("/usage").text
        secrets.append(wrong_admin)
    cli = _cli(store, "keys", "create", "--alias", "from-cli").stdout
    secrets.append(cli.split('"secret": "')[1].split('"')[0])
    _cli(store, "keys", "block", "from-cli")
    out, err = capfd.readouterr()
    places = {
        "log records": "\n".join(  # the gateway's, not the test client's (httpx logs its URLs)
            r.getMessage() + str(r.args) for r in caplog.records if not r.name.startswith("httpx")
        ),
        "stdout and stderr": out + err,
        "metrics": scraped,
        "audit rows": audit,
        "usage": usage,
        "store file": b"".join(p.read_bytes() for p in tmp_path.glob("store.db*")).decode(
            "latin-1"
        ),
    }
    assert len(caplog.records) > 10 and "admin_audit" in places["log records"]
    for secret in secrets:
        for where, text in places.items():
            assert secret not in text, f"a raw key appears in the {where}"
            assert secret[6:30] not in text, f"part of a raw key appears in the {where}"
