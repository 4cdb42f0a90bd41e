"""The metrics catalog: documented, conventional, and every metric really emitted."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import mid_minute_clock, mock_config, need, run_gateway
from tollhouse.accounting.event import UsageEvent
from tollhouse.metrics import docs
from tollhouse.metrics.catalog import CATALOG

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "count me"}]


def test_docs_metrics_md_is_generated_from_the_catalog() -> None:
    """Regenerate with: python -m tollhouse.metrics.docs docs/metrics.md"""
    assert (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8") == docs.render()


@pytest.mark.parametrize("spec", CATALOG, ids=[s.name for s in CATALOG])
def test_names_follow_prometheus_conventions(spec: object) -> None:
    from tollhouse.metrics.catalog import MetricSpec

    assert isinstance(spec, MetricSpec)
    assert re.fullmatch(r"(llm|tollhouse)_[a-z0-9_]+", spec.name)
    assert spec.help.strip()
    if spec.kind == "counter":
        assert spec.name.endswith("_total")
    else:
        assert not spec.name.endswith("_total")
    if spec.kind == "histogram":
        assert spec.name.endswith("_seconds") and spec.buckets
        assert list(spec.buckets) == sorted(set(spec.buckets))
    assert "key" not in spec.labels or spec.kind == "counter"  # keys never multiply buckets
    assert len(spec.labels) == len(set(spec.labels))


def traffic_config() -> dict[str, object]:
    config = mock_config()
    config["backends"].append({"name": "free", "provider": "mock"})  # type: ignore[attr-defined]
    config["models"].append({"name": "unpriced", "backend": "free", "model": "echo"})  # type: ignore[attr-defined]
    config["budgets"] = [{"scope": "backend", "name": "mock", "max_usd": "10", "soft_usd": "8",
                          "period": "daily"}]  # fmt: skip
    config["rate_limits"] = [{"scope": "backend", "name": "free", "rpm": 1, "tpm": 1000}]
    config["cache"] = {"enabled": True}
    config["backends"][0]["health_check"] = {"interval": 60}  # type: ignore[index]
    config["models"] += [  # type: ignore[operator]
        {"name": "resilient", "strategy": "priority", "retries": {"attempts": 1, "backoff": 0},
         "deployments": [{"backend": "mock", "model": "fail-500"},
                         {"backend": "mock", "model": "echo", "priority": 1}]},
        {"name": "spill", "backend": "mock", "model": "fail-429",
         "fallbacks": [{"when": ["rate_limit"], "to": ["chat"]}]},
    ]  # fmt: skip
    return config


def failing_sink(event: UsageEvent) -> None:
    if event.model == "embed":
        raise RuntimeError("this sink breaks on embeddings")


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[str, dict[str, float]]]:
    """Drive traffic touching every feature, then take one real scrape.

    The limits' clock is held mid-minute: the backend's 1 rpm window must not
    roll over between the second request and the scrape, or the rejection and
    the remaining gauge would depend on when the suite happens to run."""
    with (
        run_gateway(traffic_config(), extra_sinks=[failing_sink], clock=mid_minute_clock()) as gw,
        httpx.Client(base_url=gw.v1, timeout=10) as http,
    ):
        for model, stream in [
            ("chat", False),
            ("slow", True),
            ("cached", False),
            ("fail-500", False),
            ("unpriced", False),
            ("unpriced", False),  # over the backend's 1 rpm: rejected at the gate
            ("drop", True),
            ("resilient", False),  # a retry
            ("spill", False),  # a fallback
            ("chat", False),  # answered from the cache
        ]:
            http.post(
                "/chat/completions",
                json={"model": model, "messages": MSG, "max_tokens": 3, "stream": stream,
                      "cache": model not in ("unpriced",)},
            )  # fmt: skip
        assert http.post("/embeddings", json={"model": "embed", "input": "x"}).status_code == 200
        for _ in range(21):  # admin API without an admin key: 20 failures, then throttled
            httpx.get(gw.url + "/admin/v1/health")
        assert http.post("/completions", json={"prompt": "x"}).status_code == 404  # no route
        gw.wait_events(11)
        text = httpx.get(gw.url + "/metrics").text
        samples = {
            f"{s.name}{sorted(s.labels.items())}": s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }
        yield text, samples


@pytest.mark.parametrize("spec", CATALOG, ids=[s.name for s in CATALOG])
def test_every_catalog_metric_is_emitted_by_real_traffic(
    scraped: tuple[str, dict[str, float]], spec: object
) -> None:
    from tollhouse.metrics.catalog import MetricSpec, exported_names

    assert isinstance(spec, MetricSpec)
    text, _ = scraped
    for name in exported_names(spec):
        assert re.search(rf"^{name}[{{ ]", text, re.M), f"{name} has no sample after traffic"


def test_scrape_has_only_catalog_metrics(scraped: tuple[str, dict[str, float]]) -> None:
    text, _ = scraped
    families = {f.name for f in text_string_to_metric_families(text)}
    catalog = {s.name.removesuffix("_total") for s in CATALOG}
    assert families == catalog


def test_specific_values_after_traffic(scraped: tuple[str, dict[str, float]]) -> None:
    _, samples = scraped

    def get(name: str, **labels: str) -> float:
        return samples.get(f"{name}{sorted(labels.items())}", 0.0)

    assert (
        get("llm_unpriced_requests_total", model="unpriced", backend="free", provider="mock") == 1
    )
    assert get("tollhouse_sink_errors_total", sink="function") == 1
    assert get("llm_requests_in_flight", model="chat") == 0
    assert get("llm_rejections_total", reason="rate_limit", scope="backend") == 1
    budget = {"scope": "backend", "entity": "mock", "period": "daily"}
    assert get("llm_budget_limit_usd", **budget) == 10
    assert get("llm_budget_soft_limit_usd", **budget) == 8
    spent = get("llm_budget_spend_usd", **budget)
    assert spent > 0 and get("llm_budget_remaining_usd", **budget) == pytest.approx(10 - spent)
    assert get("llm_budget_reserved_usd", **budget) == 0
    assert 0 < get("llm_budget_reset_seconds", **budget) <= 86400
    rate = {"scope": "backend", "entity": "free"}
    assert get("llm_ratelimit_limit", **rate, kind="requests") == 1
    assert get("llm_ratelimit_remaining", **rate, kind="requests") == 0
    # every request is either written to the ledger or waiting in its queue
    assert get("tollhouse_ledger_backlog") + get("tollhouse_ledger_rows_written_total") == 11
    assert get("tollhouse_ledger_write_errors_total") == 0
    # the mock upstream counts down from 10000 per request served, as real ones do
    remaining = get(
        "llm_upstream_ratelimit_remaining_requests", backend="mock", upstream_model="embed"
    )
    assert 9990 <= remaining < 10000
    assert (
        get(
            "tollhouse_build_info",
            version=__import__("tollhouse").__version__,
            python=__import__("platform").python_version(),
        )
        == 1
    )


def test_in_flight_counts_requests_while_they_run() -> None:
    with run_gateway(mock_config()) as gw:
        result: list[int] = []
        body = {"model": "slow", "messages": MSG, "max_tokens": 15, "stream": True}
        t = threading.Thread(
            target=lambda: result.append(
                httpx.post(gw.v1 + "/chat/completions", json=body).status_code
            )
        )
        t.start()
        deadline = time.monotonic() + 5
        while gw.metric("llm_requests_in_flight", model="slow") < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert gw.metric("llm_requests_in_flight", model="slow") == 1
        t.join()
        gw.wait_events(1)
        assert result == [200] and gw.metric("llm_requests_in_flight", model="slow") == 0


class SlowCollector:
    """A collector that takes a second: the scrape must not hold the event loop that long."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        time.sleep(1.0)
        yield GaugeMetricFamily("llm_slow_test", "slow", value=1)


def test_metrics_rendering_does_not_stall_the_event_loop() -> None:
    with run_gateway(mock_config()) as gw:
        gw.registry.register(SlowCollector())  # type: ignore[arg-type]
        scrape = threading.Thread(target=lambda: httpx.get(gw.url + "/metrics", timeout=10))
        scrape.start()
        time.sleep(0.2)  # the scrape is now inside the slow collector
        started = time.monotonic()
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "chat", "messages": MSG})
        elapsed = time.monotonic() - started
        scrape.join()
        assert r.status_code == 200
        assert elapsed < 0.5, f"a request waited {elapsed:.2f}s behind a scrape"


def test_metrics_path_is_configurable() -> None:
    with run_gateway(mock_config(metrics_path="/internal/prom")) as gw:
        assert "llm_requests_total" in httpx.get(gw.url + "/internal/prom").text
        assert httpx.get(gw.url + "/metrics").status_code == 404


def test_promtool_check_metrics_passes_on_a_real_scrape(
    scraped: tuple[str, dict[str, float]],
) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool is not installed (Debian package 'prometheus')")
    assert promtool is not None
    text, _ = scraped
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
