"""The monitoring kit: dashboards match their generator, rules pass promtool, and every
expression names only metrics and labels the catalog exports."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import need
from tollhouse.metrics.catalog import CATALOG, exported_names

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
RULES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "rules" / "tests").glob("*.yml"))


def load_build() -> ModuleType:
    """``monitoring/build.py`` is a script, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location(
        "tollhouse_monitoring_build", MONITORING / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BUILD = load_build()


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard uid / panel title", "rule name" or "variable name"
    expr: str
    populated: bool = True  # the end-to-end traffic must give it data


def dashboard_queries() -> list[Query]:
    out = []
    for dash in BUILD.DASHBOARDS:
        for panel in dash.panels:
            for expr, _ in panel.targets:
                out.append(Query(f"{dash.uid} / {panel.title}", expr, panel.populated))
    return out


def variable_queries() -> list[Query]:
    return [Query(f"variable {name}", query) for name, query in BUILD.VARIABLES]


def rules() -> list[dict[str, Any]]:
    out = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def rule_queries() -> list[Query]:
    return [Query(r.get("record") or r["alert"], r["expr"]) for r in rules()]


# ---- a small PromQL reference extractor (enough for our own expressions) ----

CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
ALWAYS = {"job", "instance"}  # added by Prometheus to every scraped series
SYNTHETIC = {"up": set[str]()}  # series Prometheus itself produces


@dataclass
class Refs:
    selectors: list[tuple[str, list[str]]]  # (metric, labels in its matchers)
    grouping: set[str]  # labels in by/without/on/ignoring/group_* clauses


def references(expr: str) -> Refs:
    """Metric names and label names an expression uses."""
    values = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", expr, re.S)
    if values:  # Grafana's template-variable query
        inner = references(values.group(1))
        inner.grouping.add(values.group(2))
        return inner
    grouping = {label.strip() for labels in CLAUSE.findall(expr) for label in labels.split(",")} - {
        ""
    }
    rest = CLAUSE.sub(" ", expr)
    selectors = [(name or "", MATCHER.findall(body)) for name, body in SELECTOR.findall(rest)]
    rest = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", rest)
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', " ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    named = {name for name, _ in selectors}
    for m in IDENT.finditer(rest):
        following = rest[m.end() :].lstrip()[:1]
        if following == "(" or m.group() in KEYWORDS or m.group() in named:
            continue  # a function or aggregation, an operator, or a selector seen above
        if m.start() > 0 and rest[m.start() - 1] in "0123456789.$":
            continue  # the exponent or suffix of a number, or a Grafana variable
        selectors.append((m.group(), []))
    return Refs(selectors, grouping)


def exported_labels() -> dict[str, set[str]]:
    """Every series name the gateway exports → the labels it carries."""
    out: dict[str, set[str]] = {}
    for spec in CATALOG:
        for name in exported_names(spec):
            out[name] = set(spec.labels) | ({"le"} if name.endswith("_bucket") else set())
    return out


def recorded_labels(rule_list: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Recording rules → the labels their aggregation keeps."""
    return {
        r["record"]: references(r["expr"]).grouping - {"le"} for r in rule_list if "record" in r
    }


def problems(queries: list[Query], known: dict[str, set[str]]) -> list[str]:
    out = []
    for query in queries:
        refs = references(query.expr)
        used: set[str] = set()
        for metric, labels in refs.selectors:
            if metric not in known:
                out.append(f"{query.where}: {metric!r} is not exported (expr: {query.expr})")
                continue
            used |= known[metric]
            for label in set(labels) - known[metric] - ALWAYS:
                out.append(f"{query.where}: {metric} has no label {label!r}")
        for label in refs.grouping - used - ALWAYS - {"le"}:
            out.append(f"{query.where}: no metric in the expression has label {label!r}")
    return out


def known_names() -> dict[str, set[str]]:
    return {**exported_labels(), **recorded_labels(rules()), **SYNTHETIC}


def test_every_expression_names_only_exported_metrics_and_labels() -> None:
    """Dashboards, variables, recording rules and alerts use only the catalog's names."""
    queries = dashboard_queries() + variable_queries() + rule_queries()
    assert len(queries) > 60
    assert problems(queries, known_names()) == []


def test_the_reference_check_catches_unknown_metrics_and_labels() -> None:
    """A made-up metric, a label a metric lacks and a grouping label are all reported."""
    bad = [
        Query("a", 'sum(rate(llm_made_up_total{model="x"}[5m]))'),
        Query("b", 'sum by (model) (rate(llm_requests_total{colour="red"}[5m]))'),
        Query("c", "sum by (colour) (rate(llm_requests_total[5m]))"),
        Query("d", "llm_budget_spend_usd / llm_budget_limt_usd"),
        Query("e", "histogram_quantile(0.9, sum by (le) (rate(llm_requests_total_bucket[5m])))"),
        Query("f", "label_values(llm_requests_total, colour)"),
    ]
    found = problems(bad, known_names())
    assert [p.split(":")[0] for p in found] == ["a", "b", "c", "d", "e", "f"], found
    assert (
        problems([Query("ok", "sum by (le) (llm_ttft_x_bucket)")], {"llm_ttft_x_bucket": {"le"}})
        == []
    )


def test_references_see_through_functions_clauses_and_strings() -> None:
    """Functions, keywords, ranges, numbers and Grafana variables are not metric names."""
    refs = references(
        'histogram_quantile(0.95, sum by (model, le) (rate(a_bucket{model=~"$model"}[$__rate_interval])))'
        ' > 1e3 and on (model) b offset 5m or absent(up{job="x"})'
    )
    assert refs.selectors == [("a_bucket", ["model"]), ("up", ["job"]), ("b", [])]
    assert refs.grouping == {"model", "le"}


def test_committed_dashboards_match_the_generator() -> None:
    """``monitoring/dashboards/*.json`` is exactly what ``monitoring/build.py`` writes."""
    expected = BUILD.files()
    committed = {p.name: p.read_text() for p in (MONITORING / "dashboards").glob("*.json")}
    assert committed.keys() == expected.keys()
    for name, text in expected.items():
        assert committed[name] == text, f"{name} is stale: run python monitoring/build.py"


def test_dashboards_use_the_datasource_and_template_variables() -> None:
    """Every panel queries ``${datasource}``; model, backend and key are label_values variables."""
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("model", "backend", "key"):
            assert variables[name]["query"]["query"].startswith("label_values(")
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
    filtered = [q for q in dashboard_queries() if "$model" in q.expr]
    assert len(filtered) > 15


def test_promtool_checks_the_rules() -> None:
    """``promtool check rules`` accepts every rule file."""
    need(shutil.which("promtool") is not None, "promtool is not installed")
    result = subprocess.run(
        ["promtool", "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """``promtool test rules``: every alert fires on its synthetic series and no other."""
    need(shutil.which("promtool") is not None, "promtool is not installed")
    result = subprocess.run(
        ["promtool", "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    """Each alert appears in a promtool test case that expects it to fire."""
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts - fired == set()
    assert len(silent) >= 5  # explicit "must not fire" cases beside the sibling series


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_rule_names_follow_the_conventions(path: Path) -> None:
    """Recorded series are level:metric:operations; alerts are Tollhouse* with a severity."""
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert re.fullmatch(r"(llm|tollhouse):[a-z0-9_]+:[a-z0-9_]+", rule["record"])
            else:
                assert rule["alert"].startswith("Tollhouse")
                assert rule["labels"]["severity"] in ("info", "warning", "critical")
                assert rule["annotations"]["summary"]


def test_the_example_prometheus_config_is_valid() -> None:
    """``promtool check config`` accepts the example prometheus.yml and finds its rules."""
    need(shutil.which("promtool") is not None, "promtool is not installed")
    result = subprocess.run(
        ["promtool", "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout + result.stderr


def test_the_alertmanager_route_names_only_our_alerts() -> None:
    """Every alert name the example Alertmanager routes on exists in the alert rules."""
    config = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    matchers = [m for r in config["route"]["routes"] for m in r["matchers"]]
    for rule in config["inhibit_rules"]:
        matchers += rule["source_matchers"] + rule["target_matchers"]
    alerts = {r["alert"] for r in rules() if "alert" in r}
    receivers = {r["name"] for r in config["receivers"]}
    assert {
        config["route"]["receiver"],
        *(r["receiver"] for r in config["route"]["routes"]),
    } <= receivers
    for matcher in matchers:
        name, op, value = re.fullmatch(r'(\w+)(=~|!=|=)"(.*)"', matcher).groups()  # type: ignore[union-attr]
        if name == "alertname" and op != "!=":
            assert any(re.fullmatch(value, alert) for alert in alerts), matcher
