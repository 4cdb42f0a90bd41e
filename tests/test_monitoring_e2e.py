"""End to end: a real Prometheus scrapes a gateway under mixed traffic every second, and
every dashboard query and rule expression evaluates through its HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import mock_config, need, run_gateway, run_sync
from tests.gateway_process import free_port
from tests.test_monitoring import RULES, Query, dashboard_queries, rule_queries, rules
from tollhouse.store.engine import Store

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# What Grafana would substitute: every template variable set to "All" (``.*``).
SUBSTITUTIONS = {"$__rate_interval": "20s", "$__range": "5m", "$model": ".*", "$backend": ".*", "$key": ".*"}  # fmt: skip


def gateway_config(store_url: str) -> dict[str, Any]:
    """The mock backend plus: retries, a fallback, a cooling-down model and a tiny budget."""
    cfg = mock_config(access_log=False)
    cfg["store"] = {"url": store_url}
    cfg["ledger"] = {"flush_interval": 0.05}
    cfg["backends"].append({**cfg["backends"][0], "name": "capped"})
    for model in cfg["models"]:
        if model["name"] == "fail-500":
            model["retries"] = {"attempts": 1, "backoff": 0}
    cfg["models"] += [
        {"name": "rescued", "backend": "mock", "model": "fail-500",
         "fallbacks": [{"when": ["server_error"], "to": ["chat"]}]},
        {"name": "budgeted", "backend": "capped", "model": "echo"},
    ]  # fmt: skip
    cfg["budgets"] = [
        {"scope": "backend", "name": "capped", "max_usd": "0.0002", "period": "daily"}
    ]
    cfg["rate_limits"] = [{"scope": "backend", "name": "mock", "rpm": 100000}]
    return cfg


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """A real Prometheus scraping ``target`` every second, with our rule files loaded."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULES],
        "scrape_configs": [{"job_name": "tollhouse", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: targets_up(url), 30, lambda: (tmp_path / "prometheus.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def wait_for(check: Any, timeout: float, explain: Any = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out\n{explain()[-3000:]}")
        time.sleep(0.2)


def targets_up(url: str) -> bool:
    """True once every target is scraped; a Prometheus still starting answers 503, not JSON."""
    response = httpx.get(url + "/api/v1/targets")
    if response.status_code != 200:
        return False
    active = response.json()["data"]["activeTargets"]
    return bool(active) and all(t["health"] == "up" for t in active)


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
    body = httpx.get(url + "/api/v1/query", params=params).json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(url: str, expr: str) -> float:
    result = query(url, expr)
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


def ledger_usd(store_url: str) -> Decimal:
    async def read() -> dict[str, int]:
        async with Store(store_url) as store:
            return await store.ledger.spend_since("backend", 0)

    spend: dict[str, int] = run_sync(read())
    return Decimal(sum(spend.values())) / Decimal(10**12)


def drive(base: str) -> int:
    """Successes, streams, errors, retries, a fallback, a cooldown and a budget running out."""
    sent = 0
    with httpx.Client(base_url=base + "/v1", timeout=10) as http:

        def chat(model: str, stream: bool = False) -> None:
            nonlocal sent
            body = {"model": model, "messages": [{"role": "user", "content": "hi there"}],
                    "max_tokens": 10, "stream": stream}  # fmt: skip
            with http.stream("POST", "/chat/completions", json=body) as response:
                response.read()
            sent += 1

        for _ in range(6):
            chat("chat")
            chat("slow", stream=True)
        for model in ("fail-500", "fail-429", "rescued", "fail-429"):
            chat(model)
        for _ in range(8):
            chat("budgeted")
    return sent


def settle(url: str, store_url: str, requests: int) -> None:
    """Wait until Prometheus has scraped every request and the ledger holds every row."""
    wait_for(lambda: query(url, "sum(llm_requests_total)")[0]["value"][1] == str(requests), 20)
    wait_for(lambda: float(ledger_usd(store_url)) == scalar(url, "sum(llm_cost_usd_total)"), 20)
    time.sleep(3)  # a few more scrapes and rule evaluations (rates need two samples)


def test_dashboards_and_rules_evaluate_against_a_real_prometheus(tmp_path: Path) -> None:
    """Every dashboard query and rule expression evaluates; the populated ones return data."""
    need(Path(PROMETHEUS).exists(), "prometheus is not installed (apt-get install prometheus)")
    store_url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    with run_gateway(gateway_config(store_url)) as gw, prometheus(tmp_path, gw.url[7:]) as prom:
        sent = drive(gw.url)
        settle(prom, store_url, sent)

        failures = []
        for q in dashboard_queries() + rule_queries():
            result = query(prom, q.expr)
            if q.populated and not result and not q.where.startswith("Tollhouse"):
                failures.append(f"{q.where}: no data for {q.expr}")
        for rule in rules():
            if "record" in rule and not query(prom, rule["record"]):
                failures.append(f"recorded series {rule['record']} has no data")
        assert failures == []

        assert scalar(prom, 'max(llm_deployment_state{model="fail-429"})') == 2
        assert scalar(prom, 'sum(llm_rejections_total{reason="budget"})') > 0
        assert scalar(prom, 'llm:budget_spend:ratio{entity="capped"}') > 0.5
        assert scalar(prom, "sum(llm_retries_total)") >= 1
        assert scalar(prom, "sum(llm_fallbacks_total)") == 1
        assert scalar(prom, 'sum(llm_requests_total{model="slow",outcome="success"})') == 6

        # An exact increase: cost between two instants equals what the ledger gained.
        before_usd, t0 = ledger_usd(store_url), time.time()
        assert float(before_usd) == pytest.approx(
            scalar(prom, "sum(llm_cost_usd_total)"), rel=1e-12
        )
        time.sleep(1.5)  # t0 is scraped before new traffic arrives
        t0 = time.time()
        with httpx.Client(timeout=10) as http:
            for _ in range(4):
                body = {"model": "chat", "messages": [{"role": "user", "content": "more"}]}
                assert http.post(gw.v1 + "/chat/completions", json=body).status_code == 200
        settle(prom, store_url, sent + 4)
        gained = ledger_usd(store_url) - before_usd
        assert gained > 0
        at_t0 = query(prom, "sum(llm_cost_usd_total)", at=t0)[0]["value"][1]
        increase = scalar(prom, "sum(llm_cost_usd_total)") - float(at_t0)
        assert increase == pytest.approx(float(gained), rel=1e-9)


def test_queries_with_a_concrete_template_value_still_parse(tmp_path: Path) -> None:
    """Selecting one model/backend/key in Grafana yields valid PromQL (no gateway needed)."""
    need(shutil.which("promtool") is not None, "promtool is not installed")
    exprs = [
        Query(q.where, q.expr.replace("$model", "chat").replace("$backend", "mock")
              .replace("$key", "k1").replace("$__rate_interval", "1m")
              .replace("$__range", "1h"))
        for q in dashboard_queries()
    ]  # fmt: skip
    groups = [{"name": "check", "rules": [
        {"record": f"check:query:n{i}", "expr": q.expr} for i, q in enumerate(exprs)]}]  # fmt: skip
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
