"""Generate the Grafana dashboards in ``monitoring/dashboards/`` from one table of panels.

Every panel's PromQL lives here and only here, so the tests can extract each
expression and prove it (names the catalog exports, evaluates against a real
Prometheus scraping a real gateway). Run ``python monitoring/build.py`` after
editing; ``tests/test_monitoring.py`` fails when the committed JSON differs.

Template variables: ``$datasource`` (any Prometheus), ``$model``, ``$backend``
and ``$key`` (multi-select, "All" is the regex ``.*``). ``$__rate_interval``
and ``$__range`` are Grafana's own.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Selector fragments: which template variables apply depends on the metric's labels.
MBK = 'model=~"$model",backend=~"$backend",key=~"$key"'
MB = 'model=~"$model",backend=~"$backend"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """One panel. ``populated`` says the end-to-end test's traffic must give it data."""

    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | table | bargauge
    width: int = 12
    description: str = ""
    populated: bool = True


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("tollhouse", "llm"))


def q(expr: str, legend: str = "") -> tuple[str, str]:
    return (expr, legend)


def p95(metric: str, by: str, sel: str, extra: str = "") -> str:
    inner = f"{sel},{extra}" if extra else sel
    return f"histogram_quantile(0.95, sum by ({by}le) (rate({metric}_bucket{{{inner}}}[{RI}])))"


OVERVIEW = Dashboard(
    "tollhouse-overview", "Tollhouse / Overview",
    "Traffic, success, latency, time to first token and spend at a glance.",
    (
        Panel("Requests / s", (q(f"sum(rate(llm_requests_total{{{MBK}}}[{RI}]))"),),
              "reqps", "stat", 4),
        Panel("Success rate", (q(
            f'sum(rate(llm_requests_total{{{MBK},outcome="success"}}[{RI}])) / '
            f"sum(rate(llm_requests_total{{{MBK}}}[{RI}]))"),), "percentunit", "stat", 4),
        Panel("p95 latency", (q(p95("llm_request_duration_seconds", "", MB, 'outcome="success"')),),
              "s", "stat", 4),
        Panel("p95 time to first token", (q(p95("llm_time_to_first_token_seconds", "", MB)),),
              "s", "stat", 4),
        Panel("Cost, last 24 h", (q(f"sum(increase(llm_cost_usd_total{{{MBK}}}[24h]))"),),
              "currencyUSD", "stat", 4),
        Panel("Gateways reporting", (q("count(tollhouse_build_info)"),), "short", "stat", 4),
        Panel("Requests / s by model and outcome", (q(
            f"sum by (model, outcome) (rate(llm_requests_total{{{MBK}}}[{RI}]))",
            "{{model}} {{outcome}}"),), "reqps"),
        Panel("Error ratio (5xx) by model", (q(
            'llm:request_errors:ratio_rate5m{model=~"$model"}', "{{model}}"),), "percentunit"),
        Panel("p95 latency by model", (q(
            p95("llm_request_duration_seconds", "model, ", MB, 'outcome="success"'),
            "{{model}}"),), "s"),
        Panel("p95 time to first token by model", (q(
            'llm:time_to_first_token_seconds:p95_rate5m{model=~"$model"}', "{{model}}"),), "s"),
    ),
)  # fmt: skip

COST = Dashboard(
    "tollhouse-cost", "Tollhouse / Cost and budgets",
    "Spend by key, team, model and backend; budgets against their limits; forecasts.",
    (
        Panel("Spend rate by model (USD/h)", (q(
            f"sum by (model) (llm:cost_usd:rate5m{{{MBK}}}) * 3600", "{{model}}"),),
            "currencyUSD"),
        Panel("Forecast: next 24 h at the last hour's rate", (q(
            f"sum(rate(llm_cost_usd_total{{{MBK}}}[1h])) * 86400"),), "currencyUSD", "stat", 6),
        Panel("Spend, last hour", (q("llm:cost_usd:increase1h"),), "currencyUSD", "stat", 6),
        Panel("Spend by key", (q(
            f"sort_desc(sum by (key) (increase(llm_cost_usd_total{{{MBK}}}[$__range])))",
            "{{key}}"),), "currencyUSD", "bargauge", 6),
        Panel("Spend by team", (q(
            f"sort_desc(sum by (team) (increase(llm_cost_usd_total{{{MBK}}}[$__range])))",
            "{{team}}"),), "currencyUSD", "bargauge", 6),
        Panel("Spend by model", (q(
            f"sort_desc(sum by (model) (increase(llm_cost_usd_total{{{MBK}}}[$__range])))",
            "{{model}}"),), "currencyUSD", "bargauge", 6),
        Panel("Spend by backend", (q(
            f"sort_desc(sum by (backend) (increase(llm_cost_usd_total{{{MBK}}}[$__range])))",
            "{{backend}}"),), "currencyUSD", "bargauge", 6),
        Panel("Budget use (spend / limit)", (q(
            "sort_desc(llm:budget_spend:ratio)", "{{scope}} {{entity}} {{period}}"),),
            "percentunit", "bargauge", 12),
        Panel("Budgets: spend, reserved, limit", (
            q("max by (scope, entity, period) (llm_budget_spend_usd)", "spend"),
            q("max by (scope, entity, period) (llm_budget_reserved_usd)", "reserved"),
            q("max by (scope, entity, period) (llm_budget_limit_usd)", "limit"),
            q("max by (scope, entity, period) (llm_budget_remaining_usd)", "remaining"),
        ), "currencyUSD", "table", 12),
        Panel("Time to budget reset", (q(
            "min by (scope, entity, period) (llm_budget_reset_seconds)",
            "{{scope}} {{entity}} {{period}}"),), "s", "table", 12),
        Panel("Projected spend at period end", (q(
            "max by (scope, entity, period) (llm_budget_spend_usd)"
            " + max by (scope, entity, period) (deriv(llm_budget_spend_usd[1h]))"
            " * min by (scope, entity, period) (llm_budget_reset_seconds)",
            "{{scope}} {{entity}} {{period}}"),), "currencyUSD", "table", 12,
            "Spend so far plus the last hour's trend carried to the reset."),
        Panel("Requests without a price (cost unknown)", (q(
            f"sum by (model) (increase(llm_unpriced_requests_total{{{MB}}}[$__range]))",
            "{{model}}"),), populated=False),
        Panel("Saved by the response cache (USD)", (q(
            'sum by (model) (increase(llm_cache_saved_usd_total{model=~"$model"}[$__range]))',
            "{{model}}"),), "currencyUSD", populated=False),
    ),
)  # fmt: skip

PROVIDERS = Dashboard(
    "tollhouse-providers", "Tollhouse / Providers and backends",
    "Upstream latency, time to first token, errors, deployment state, cooldowns, "
    "upstream quotas, retries and fallbacks.",
    (
        Panel("Upstream p95 latency by backend", (q(
            p95("llm_upstream_duration_seconds", "backend, ", MB), "{{backend}}"),), "s"),
        Panel("p95 time to first token by backend", (q(
            p95("llm_time_to_first_token_seconds", "backend, ", MB), "{{backend}}"),), "s"),
        Panel("Upstream calls / s by backend and outcome", (q(
            f"sum by (backend, outcome) (rate(llm_upstream_requests_total{{{MB}}}[{RI}]))",
            "{{backend}} {{outcome}}"),), "reqps"),
        Panel("Upstream error ratio by backend", (q(
            'llm:upstream_errors:ratio_rate5m{backend=~"$backend"}', "{{backend}}"),),
            "percentunit"),
        Panel("Errors / s by type", (q(
            f"sum by (backend, error_type) (rate(llm_errors_total{{{MB}}}[{RI}]))",
            "{{backend}} {{error_type}}"),), "reqps"),
        Panel("Deployment state (0 healthy, 1 degraded, 2 cooled down)", (q(
            f"max by (model, backend, upstream_model) (llm_deployment_state{{{MB}}})",
            "{{model}} {{backend}} {{upstream_model}}"),), "short", "table"),
        Panel("Backend up (active health probes)", (q(
            'max by (backend) (llm_backend_up{backend=~"$backend"})', "{{backend}}"),),
            "short", "table", description="Only backends with a health_check report this.",
            populated=False),
        Panel("Cooldowns", (q(
            'sum by (backend, reason) (increase(llm_cooldowns_total{backend=~"$backend"}[$__range]))',
            "{{backend}} {{reason}}"),), "short", "bargauge"),
        Panel("Upstream remaining requests", (q(
            'min by (backend, upstream_model) (llm_upstream_ratelimit_remaining_requests{backend=~"$backend"})',
            "{{backend}} {{upstream_model}}"),)),
        Panel("Upstream remaining tokens", (q(
            'min by (backend, upstream_model) (llm_upstream_ratelimit_remaining_tokens{backend=~"$backend"})',
            "{{backend}} {{upstream_model}}"),)),
        Panel("Retries / s by backend and error", (q(
            f'sum by (backend, error_type) (rate(llm_retries_total{{backend=~"$backend"}}[{RI}]))',
            "{{backend}} {{error_type}}"),), "reqps"),
        Panel("Fallbacks / s", (q(
            f"sum by (from_model, to_model, outcome) (rate(llm_fallbacks_total[{RI}]))",
            "{{from_model}} → {{to_model}} {{outcome}}"),), "reqps"),
    ),
)  # fmt: skip

TOP = tuple(
    Panel(f"Top {who}s by {what}", (q(
        f"topk(10, sum by ({who}) (increase({metric}{{{only}{MBK}}}[$__range])))",
        f"{{{{{who}}}}}"),), unit, "bargauge", 8)
    for what, metric, only, unit in (
        ("requests", "llm_requests_total", "", "short"),
        # cached and cache-write input are part of input, reasoning of output
        ("tokens", "llm_tokens_total", 'type=~"input|output",', "short"),
        ("cost", "llm_cost_usd_total", "", "currencyUSD"),
    )
    for who in ("key", "team")
)  # fmt: skip

CLIENTS = Dashboard(
    "tollhouse-clients", "Tollhouse / Clients",
    "Who sends the traffic: top keys and teams by requests, tokens and cost; refusals.",
    (
        *TOP,
        Panel("Tokens / s by type", (q(
            f"sum by (type) (llm:tokens:rate5m{{{MBK}}})", "{{type}}"),)),
        Panel("Refusals / s by reason and scope", (q(
            "sum by (reason, scope) (llm:rejections:rate5m)", "{{reason}} {{scope}}"),), "reqps"),
        Panel("Gateway rate limits: remaining this minute", (q(
            "min by (scope, entity, kind) (llm_ratelimit_remaining)",
            "{{scope}} {{entity}} {{kind}}"),), "short", "table", 24),
    ),
)  # fmt: skip

GATEWAY = Dashboard(
    "tollhouse-gateway", "Tollhouse / Gateway",
    "The gateway's own health: overhead it adds, requests in flight, the spend ledger, "
    "the event loop, the store and the limits counters (Redis), the admin API.",
    (
        Panel("Gateway overhead p95 (recorded)", (q(
            "tollhouse:gateway_overhead_seconds:p95_rate5m", "stream={{stream}}"),), "s"),
        Panel("Gateway overhead p50 / p99", (
            q(f"histogram_quantile(0.5, sum by (le) (rate(llm_gateway_overhead_seconds_bucket[{RI}])))",
              "p50"),
            q(f"histogram_quantile(0.99, sum by (le) (rate(llm_gateway_overhead_seconds_bucket[{RI}])))",
              "p99"),
        ), "s"),
        Panel("Requests in flight by model", (q(
            'sum by (model) (llm_requests_in_flight{model=~"$model"})', "{{model}}"),)),
        Panel("Ledger backlog (rows waiting)", (q(
            "sum by (instance) (tollhouse_ledger_backlog)", "{{instance}}"),)),
        Panel("Ledger rows written / s and failed writes / s", (
            q(f"sum(rate(tollhouse_ledger_rows_written_total[{RI}]))", "written"),
            q(f"sum(rate(tollhouse_ledger_write_errors_total[{RI}]))", "failed batches"),
        ), "ops"),
        Panel("Store and limits round trip (measured at scrape)", (
            q("max by (instance) (tollhouse_store_latency_seconds)", "store {{instance}}"),
            q("max by (instance, backend) (tollhouse_limits_latency_seconds)",
              "{{backend}} {{instance}}"),
        ), "s"),
        Panel("Event loop lag", (q(
            "max by (instance) (tollhouse_event_loop_lag_seconds)", "{{instance}}"),), "s"),
        Panel("Sink errors / s", (q(
            f"sum by (sink) (rate(tollhouse_sink_errors_total[{RI}]))", "{{sink}}"),),
            "ops", populated=False),
        Panel("Admin API requests / s", (q(
            f"sum by (route, status_class) (rate(tollhouse_admin_requests_total[{RI}]))",
            "{{route}} {{status_class}}"),), "reqps", populated=False),
        Panel("Authentication failures / s", (q(
            f"sum by (surface, reason) (rate(tollhouse_auth_failures_total[{RI}]))",
            "{{surface}} {{reason}}"),), "reqps", populated=False),
        Panel("Versions running", (q(
            "count by (version, python) (tollhouse_build_info)", "{{version}} {{python}}"),),
            "short", "table"),
    ),
)  # fmt: skip

DASHBOARDS = (OVERVIEW, COST, PROVIDERS, CLIENTS, GATEWAY)

VARIABLES = (  # (name, label_values query)
    ("model", "label_values(llm_requests_total, model)"),
    ("backend", 'label_values(llm_requests_total{model=~"$model"}, backend)'),
    ("key", "label_values(llm_requests_total, key)"),
)


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": name, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"text": "All", "value": "$__all"}, "sort": 1,
    }  # fmt: skip


def _templating() -> dict[str, Any]:
    datasource = {
        "name": "datasource", "label": "Prometheus", "type": "datasource",
        "query": "prometheus", "current": {}, "refresh": 1,
    }  # fmt: skip
    return {"list": [datasource, *(_variable(n, query) for n, query in VARIABLES)]}


def _panel(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    height = 4 if panel.kind == "stat" else 8
    out: dict[str, Any] = {
        "id": pid, "type": panel.kind, "title": panel.title, "datasource": DS,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             "instant": panel.kind in ("table", "bargauge")}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }  # fmt: skip
    if panel.description:
        out["description"] = panel.description
    return out


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model (import it, or provision the file)."""
    panels, x, y, row_height = [], 0, 0, 0
    for i, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(panel, i, x, y))
        row_height = max(row_height, panels[-1]["gridPos"]["h"])
        x += panel.width
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": list(dashboard.tags), "editable": True, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "timezone": "",
        "templating": _templating(), "annotations": {"list": []}, "panels": panels,
        "links": [{"type": "dashboards", "tags": ["tollhouse"], "title": "Tollhouse",
                   "asDropdown": True}],
    }  # fmt: skip


def files() -> dict[str, str]:
    """File name → content, exactly as committed."""
    return {
        f"{d.uid}.json": json.dumps(render(d), indent=2, ensure_ascii=False) + "\n"
        for d in DASHBOARDS
    }


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in files().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(DASHBOARDS)} dashboards to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
