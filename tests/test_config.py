"""The config file: its reference docs, the shipped example, validation errors and the CLI.

The docs tests walk the pydantic schema, so a field added to (or removed from)
``tollhouse.config.schema`` without updating ``docs/configuration.md`` fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tollhouse.cli import build_parser
from tollhouse.config import ConfigError, load_config, parse_config
from tollhouse.config.defaults import DEFAULT_CONFIG
from tollhouse.config.schema import (
    AuthConfig,
    BackendConfig,
    BudgetConfig,
    CacheConfig,
    Config,
    CooldownConfig,
    DeploymentConfig,
    FallbackConfig,
    HealthCheckConfig,
    LedgerConfig,
    LimitsConfig,
    ModelConfig,
    Prices,
    RateLimitConfig,
    RetryConfig,
    ServerConfig,
    StoreConfig,
    Timeouts,
)
from tollhouse.metrics.catalog import CATALOG, exported_names
from tollhouse.providers import mock

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "configuration.md"
GUIDE = ROOT / "docs" / "budgets-and-limits.md"
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "config.yaml"

# The docs heading (``### <heading>``) that documents each schema model.
SECTIONS: dict[type[BaseModel], str] = {
    Config: "Top level",
    ServerConfig: "server",
    AuthConfig: "auth",
    StoreConfig: "store",
    LedgerConfig: "ledger",
    LimitsConfig: "limits",
    BudgetConfig: "budgets[]",
    RateLimitConfig: "rate_limits[]",
    BackendConfig: "backends[]",
    Timeouts: "backends[].timeouts",
    Prices: "prices",
    ModelConfig: "models[]",
    DeploymentConfig: "models[].deployments[]",
    RetryConfig: "models[].retries",
    FallbackConfig: "models[].fallbacks[]",
    CooldownConfig: "models[].cooldown",
    CacheConfig: "cache",
    HealthCheckConfig: "backends[].health_check",
}

_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$")


# --------------------------------------------------------------------------- helpers


def _submodels(annotation: Any) -> Iterator[type[BaseModel]]:
    """Pydantic models inside an annotation (``X``, ``X | None``, ``list[X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _submodels(arg)


def schema_models(root: type[BaseModel] = Config) -> list[type[BaseModel]]:
    """``root`` and every model reachable through its fields, depth first, no repeats."""
    seen: list[type[BaseModel]] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for sub in _submodels(field.annotation):
                walk(sub)

    walk(root)
    return seen


def doc_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """``{heading: {field: [type, default, meaning]}}`` for every ``###`` section's table rows."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            assert current not in tables, f"heading {current!r} appears twice in {DOCS.name}"
            tables[current] = {}
            continue
        if line.startswith("## "):
            current = None
            continue
        match = _ROW.match(line)
        if current is not None and match:
            name = match.group(1)
            cells = [c.strip() for c in match.group(2).split("|")]
            assert name not in tables[current], f"{current}: {name} documented twice"
            tables[current][name] = cells
    return tables


def expected_default(field: FieldInfo) -> str:
    """How the default column must start for this field."""
    if field.is_required():
        return "required"
    factory = field.default_factory
    if factory is not None:
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return "all defaults"
        return f"`{yaml.safe_dump(factory(), default_flow_style=True).strip()}`"  # type: ignore[call-arg]
    value = field.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def fields_used(config: Config) -> set[tuple[type[BaseModel], str]]:
    """Every (model class, field) explicitly set anywhere in a parsed config."""
    used: set[tuple[type[BaseModel], str]] = set()

    def walk(value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in value.model_fields_set:
                used.add((type(value), name))
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    return used


def problems_of(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="test.yaml", environ={} if environ is None else environ)
    assert info.value.source == "test.yaml"
    return info.value.problems


def minimal(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "backends": [{"name": "m", "provider": "mock"}],
        "models": [{"name": "chat", "backend": "m", "model": "echo"}],
    }
    raw.update(extra)
    return raw


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollhouse.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- (a) docs


def test_schema_walk_finds_every_model() -> None:
    """Every model reachable from Config has a docs section mapped in SECTIONS."""
    assert set(schema_models()) == set(SECTIONS), (
        "a schema model has no docs section mapped in SECTIONS (or one was removed)"
    )


@pytest.mark.parametrize("model", list(SECTIONS), ids=lambda m: m.__name__)
def test_docs_table_matches_schema_fields(model: type[BaseModel]) -> None:
    """A section's table lists exactly the fields its schema model has."""
    tables = doc_tables(DOCS.read_text(encoding="utf-8"))
    heading = SECTIONS[model]
    assert heading in tables, f"docs/configuration.md has no '### {heading}' section"
    documented = set(tables[heading])
    fields = set(model.model_fields)
    assert {
        "missing from the docs": sorted(fields - documented),
        "documented but not in the schema": sorted(documented - fields),
    } == {"missing from the docs": [], "documented but not in the schema": []}, heading


@pytest.mark.parametrize("model", list(SECTIONS), ids=lambda m: m.__name__)
def test_docs_defaults_match_schema(model: type[BaseModel]) -> None:
    """Each documented default is the schema's default (or `required`)."""
    table = doc_tables(DOCS.read_text(encoding="utf-8")).get(SECTIONS[model], {})
    wrong = []
    for name, field in model.model_fields.items():
        if name not in table:
            continue  # reported by test_docs_table_matches_schema_fields
        type_cell, default_cell, meaning = table[name]
        want = expected_default(field)
        if not (type_cell and meaning and default_cell.startswith(want)):
            wrong.append(f"{name}: type={type_cell!r} default={default_cell!r} (want {want})")
    assert wrong == []


def test_doc_tables_parser_sees_rows_only_under_their_heading() -> None:
    """The docs parser keys rows by their `###` heading and ignores other rows."""
    text = "## A\n| `x` | t | d | m |\n### s\n| field | type |\n|---|---|\n| `y` | t | d | m |\n"
    assert doc_tables(text) == {"s": {"y": ["t", "d", "m"]}}


def test_docs_describe_every_mock_behaviour() -> None:
    """Each behaviour token in the mock provider's grammar is in the docs."""
    text = DOCS.read_text(encoding="utf-8")
    tokens = re.findall(r"^``([^`\s]+)``", mock.__doc__ or "", flags=re.M)
    assert len(tokens) >= 10
    for token in tokens:
        assert f"| `{token}` |" in text, f"mock behaviour {token} is not in the docs"


def test_docs_list_the_embedded_default_models() -> None:
    """The docs list every embedded default model with its mock behaviour."""
    text = DOCS.read_text(encoding="utf-8")
    for model in DEFAULT_CONFIG["models"]:
        assert f"| `{model['name']}` | `{model['model']}` |" in text


def tollhouse_commands(text: str) -> list[str]:
    """Every ``tollhouse ...`` command line in the shell code blocks of a Markdown text."""
    commands: list[str] = []
    in_block = False
    pending = ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = line.strip() in ("```sh", "```console", "```bash")
            continue
        if not in_block:
            continue
        line = pending + line.strip().removeprefix("$ ")
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("tollhouse "):
            commands.append(line)
    return commands


@pytest.mark.parametrize("path", [GUIDE, README], ids=lambda p: p.name)
def test_documented_commands_parse(path: Path) -> None:
    """Every `tollhouse ...` command shown in the guide and the README is accepted by the CLI."""
    commands = tollhouse_commands(path.read_text(encoding="utf-8"))
    assert commands, f"{path.name} shows no tollhouse command"
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: the CLI rejects {command!r}")


def test_guide_names_only_catalogued_metrics() -> None:
    """Every metric the budgets guide names (in text or PromQL) is in the metrics catalog."""
    known = {name for spec in CATALOG for name in (spec.name, *exported_names(spec))}
    named = set(re.findall(r"\b(?:llm|tollhouse)_[a-z_]*[a-z]\b", GUIDE.read_text("utf-8")))
    assert {"llm_budget_remaining_usd", "llm_rejections_total"} <= named
    assert sorted(named - known) == []


# --------------------------------------------------------------------------- (b) example


def test_example_parses_with_an_empty_environment() -> None:
    """The example config is valid with no environment variables set."""
    config = load_config(EXAMPLE, environ={})
    providers = {b.provider for b in config.backends}
    assert providers == {"openai", "azure", "anthropic", "mock"}
    urls = {b.base_url for b in config.backends}
    assert "http://localhost:11434/v1" in urls  # Ollama
    assert "https://api.anthropic.com" in urls
    assert len(config.models) >= 4


def test_example_uses_every_schema_field() -> None:
    """The example sets every field of every schema model at least once."""
    used = fields_used(load_config(EXAMPLE, environ={}))
    every = {(m, name) for m in schema_models() for name in m.model_fields}
    missing = sorted(f"{m.__name__}.{name}" for m, name in every - used)
    assert missing == []


def test_example_takes_values_from_the_environment() -> None:
    """The example's `${VAR:-default}` references take set variables."""
    env = {"TOLLHOUSE_PORT": "4321", "AZURE_OPENAI_RESOURCE": "acme"}
    config = load_config(EXAMPLE, environ=env)
    assert config.server.port == 4321
    assert config.backend("azure-eastus").base_url == "https://acme.openai.azure.com"


def test_example_passes_check_config_without_its_env_vars() -> None:
    """`tollhouse check-config` accepts the example with its variables unset."""
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", EXAMPLE.read_text(encoding="utf-8")))
    env = {k: v for k, v in os.environ.items() if k not in names}
    result = run_cli("check-config", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stderr
    assert ": ok (" in result.stdout


# --------------------------------------------------------------------------- (c) errors


def test_unknown_fields_are_errors_with_their_path() -> None:
    """Unknown keys in any section are errors naming the full field path."""
    raw = minimal(server={"prot": 4000})
    raw["backends"][0]["timeouts"] = {"conect": 1}
    raw["models"][0]["price"] = {}
    problems = problems_of(raw)
    assert "server.prot: unknown field (not part of the config schema)" in problems
    assert "backends[0].timeouts.conect: unknown field (not part of the config schema)" in problems
    assert "models[0].price: unknown field (not part of the config schema)" in problems
    assert len(problems) == 3


def test_unknown_top_level_section() -> None:
    """An unknown top-level section is an error."""
    assert problems_of(minimal(routes=[])) == [
        "routes: unknown field (not part of the config schema)"
    ]


def test_model_naming_an_undefined_backend() -> None:
    """A model whose backend is not defined names the model and the known backends."""
    raw = minimal()
    raw["models"].append({"name": "claude", "backend": "anthropc", "model": "x"})
    [problem] = problems_of(raw)
    assert problem.startswith("<top level>: ")
    assert "models[1] ('claude'): backend 'anthropc' is not defined (defined: m)" in problem


def test_duplicate_backend_names() -> None:
    """Two backends with one name are an error naming the name."""
    raw = minimal()
    raw["backends"].append({"name": "m", "provider": "mock"})
    [problem] = problems_of(raw)
    assert "backend names must be unique; repeated: m" in problem


def test_every_problem_across_entries_is_listed_at_once() -> None:
    """The checks across entries stopped at the first: a file with four such problems
    showed one, then the next after each fix."""
    raw = minimal()
    raw["backends"].append({"name": "m", "provider": "mock"})
    raw["models"] += [{"name": "a", "backend": "nope", "model": "x"},
                      {"name": "b", "backend": "nada", "model": "y"}]  # fmt: skip
    raw["rate_limits"] = [{"scope": "backend", "name": "zzz", "rpm": 5}]
    assert problems_of(raw) == [
        "<top level>: backend names must be unique; repeated: m",
        "<top level>: rate_limits[0]: backend 'zzz' is not defined",
        "<top level>: models[1] ('a'): backend 'nope' is not defined (defined: m)",
        "<top level>: models[2] ('b'): backend 'nada' is not defined (defined: m)",
    ]


def test_duplicate_model_names() -> None:
    """Two models with one name are an error naming the name."""
    raw = minimal()
    raw["models"].append({"name": "chat", "backend": "m", "model": "other"})
    [problem] = problems_of(raw)
    assert "model names must be unique; repeated: chat" in problem


def test_azure_without_api_version() -> None:
    """An azure backend without api_version is an error at that backend."""
    raw = minimal()
    raw["backends"].append({"name": "az", "provider": "azure", "base_url": "https://x"})
    [problem] = problems_of(raw)
    assert problem.startswith("backends[1]: ")
    assert "api_version is required for provider 'azure'" in problem


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic"])
def test_non_mock_backend_without_base_url(provider: str) -> None:
    """Every provider but mock needs base_url."""
    raw = minimal()
    raw["backends"].append({"name": "up", "provider": provider, "api_version": "v"})
    [problem] = problems_of(raw)
    assert problem.startswith("backends[1]: ")
    assert f"base_url is required for provider '{provider}'" in problem


def test_field_constraints_name_the_field() -> None:
    """Out-of-range and malformed values are reported at their own field paths."""
    raw = minimal(server={"port": 70000, "metrics_path": "metrics", "log_level": "loud"})
    raw["backends"][0]["timeouts"] = {"read": 0}
    raw["backends"][0]["prices"] = {"input": "1"}
    raw["backends"][0]["name"] = "has space"
    raw["models"][0]["backend"] = "has space"
    problems = problems_of(raw)
    prefixes = sorted(p.split(": ", 1)[0] for p in problems)
    assert prefixes == [
        "backends[0].name",
        "backends[0].prices.output",
        "backends[0].timeouts.read",
        "server.log_level",
        "server.metrics_path",
        "server.port",
    ]
    assert "backends[0].prices.output: required field is missing" in problems


def test_auth_is_required_in_a_file_and_open_in_the_embedded_defaults() -> None:
    """A config file requires keys unless it says otherwise; the embedded defaults do not."""
    assert parse_config(minimal(), environ={}).auth.required is True
    embedded = load_config(None, environ={})
    assert embedded.auth.required is False
    assert embedded.store.url == "sqlite+aiosqlite:///tollhouse.db"
    assert embedded.limits.backend == "memory"


def test_budget_and_limit_sections_name_each_bad_field() -> None:
    """Bad budgets, rate limits and limits settings are reported at their own paths."""
    raw = minimal(
        auth={"cache_ttl": -1},
        ledger={"batch_size": 0, "flush_interval": 0},
        limits={"backend": "memcached", "reserve_output_tokens": 0},
        budgets=[
            {"scope": "backend", "max_usd": 1},
            {"scope": "end_user", "max_usd": "1", "soft_usd": "2"},
            {"scope": "provider", "name": "openai", "max_usd": 0, "period": "fortnightly"},
        ],
        rate_limits=[{"scope": "team", "name": "x", "rpm": 0}],
    )
    problems = problems_of(raw)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "auth.cache_ttl",
        "ledger.batch_size",
        "ledger.flush_interval",
        "limits.backend",
        "limits.reserve_output_tokens",
        "budgets[0]",
        "budgets[1]",
        "budgets[2].max_usd",
        "budgets[2].period",
        "rate_limits[0].scope",
        "rate_limits[0].rpm",
    ]
    assert "a backend budget needs a name" in problems[5]
    assert "soft_usd must not exceed max_usd" in problems[6]


@pytest.mark.parametrize(
    "period", ["hourly", "daily", "weekly", "monthly", "90m", "12h", "30d", "2w"]
)
def test_budget_periods_accepted(period: str) -> None:
    """Calendar periods and <N>m/h/d/w durations are valid budget periods."""
    raw = minimal(budgets=[{"scope": "end_user", "max_usd": "0.5", "period": period}])
    [budget] = parse_config(raw, environ={}).budgets
    assert budget.period == period and budget.name is None


def test_missing_required_sections() -> None:
    """A config without backends and models names both."""
    assert problems_of({}) == [
        "backends: required field is missing",
        "models: required field is missing",
    ]


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported with its line and column."""
    path = tmp_path / "bad.yaml"
    path.write_text("backends:\n  - name: m\n    provider: mock\n  models: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [problem] = info.value.problems
    assert problem.startswith("line 4, column ")
    assert "invalid YAML" in problem


def test_unreadable_file() -> None:
    """A file that cannot be read is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/tollhouse.yaml", environ={})
    assert info.value.problems[0].startswith("cannot read file")


def test_missing_env_var_names_the_field() -> None:
    """Each unset `${VAR}` is reported at the field that references it."""
    raw = minimal()
    raw["backends"].append({"name": "o", "provider": "openai", "base_url": "${BASE}"})
    raw["backends"][1]["headers"] = {"X-Org": "org-${ORG}"}
    assert problems_of(raw) == [
        "backends[1].base_url: environment variable BASE is not set",
        "backends[1].headers.X-Org: environment variable ORG is not set",
    ]


# --------------------------------------------------------------------------- interpolation


def test_env_interpolation_rules() -> None:
    """Interpolation covers values (not keys), defaults, partial strings and type conversion."""
    raw = minimal(server={"host": "${HOST:-0.0.0.0}", "port": "${PORT}", "access_log": "${AL}"})
    raw["backends"][0]["headers"] = {
        "${NOT_A_KEY}": "v",
        "inner": "a-${NAME}-b",
        "empty_default": "${UNSET:-}",
        "set_but_empty": "${EMPTY:-fallback}",
        "no_braces": "$NAME",
    }
    env = {"PORT": "4100", "AL": "false", "NAME": "x", "EMPTY": ""}
    config = parse_config(raw, environ=env)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 4100
    assert config.server.access_log is False
    assert config.backends[0].headers == {
        "${NOT_A_KEY}": "v",  # keys are not interpolated
        "inner": "a-x-b",
        "empty_default": "",
        "set_but_empty": "",  # set (even empty) wins over the default
        "no_braces": "$NAME",
    }


def test_api_key_env_is_not_validated() -> None:
    """The variable named by api_key_env need not be set to load a config."""
    raw = minimal()
    raw["backends"][0]["api_key_env"] = "SURELY_NOT_SET_ANYWHERE"
    assert parse_config(raw, environ={}).backends[0].api_key_env == "SURELY_NOT_SET_ANYWHERE"


def test_override_prices_fill_cached_rates_from_input() -> None:
    """An override without cached rates charges them at the input rate."""
    from tollhouse.accounting.pricing import price_from_config

    price = price_from_config(Prices(input="3", output="15"))  # type: ignore[arg-type]
    assert price.cached_input.base == price.input.base == 3
    assert price.cache_write_input.base == 3


# --------------------------------------------------------------------------- (d) CLI


def test_check_config_prints_each_problem_and_exits_1(tmp_path: Path) -> None:
    """check-config prints every problem on stderr and exits 1."""
    path = tmp_path / "broken.yaml"
    path.write_text(
        "server:\n  prot: 1\n"
        "backends:\n  - name: az\n    provider: azure\n    base_url: https://x\n"
        "models:\n  - name: a\n    backend: nope\n    model: m\n",
        encoding="utf-8",
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}: invalid config"
    assert "  - server.prot: unknown field (not part of the config schema)" in lines
    assert any(
        line.startswith("  - backends[0]: ") and "api_version is required" in line for line in lines
    )


def test_check_config_reports_bad_yaml(tmp_path: Path) -> None:
    """check-config reports the line of a YAML syntax error."""
    path = tmp_path / "bad.yaml"
    path.write_text("models: [\n", encoding="utf-8")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert "  - line 2, column 1: invalid YAML" in result.stderr


def test_check_config_ok(tmp_path: Path) -> None:
    """check-config prints `ok` with the counts and exits 0 on a valid file."""
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (1 backends, 1 models)"


# --------------------------------------------------------------------------- (e) defaults


def test_embedded_defaults_load() -> None:
    """The embedded defaults load: one priced mock backend, mock-chat on port 4000."""
    config = load_config(None, environ={})
    assert [b.provider for b in config.backends] == ["mock"]
    names = [m.name for m in config.models]
    assert "mock-chat" in names
    assert "mock-embed" in names
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 4000
    assert config.server.metrics_path == "/metrics"
    assert config.backends[0].prices is not None  # so cost metrics move out of the box


def test_embedded_defaults_need_no_environment() -> None:
    """The embedded defaults do not depend on the environment."""
    assert load_config(None, environ={}) == load_config(None, environ={"OPENAI_API_KEY": "x"})
