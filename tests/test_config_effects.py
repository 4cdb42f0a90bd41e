"""Documented config options that change behaviour, each shown by contrast with its other value.

Every test here sets an option and checks the effect the docs promise (docs/configuration.md,
docs/budgets-and-limits.md, README.md), next to a case where the option is off or at another
value and the outcome differs, so a gateway that ignored the option would fail the test.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from genai_prices.data_snapshot import get_snapshot

from bench.mock_upstream import MockUpstream
from tests.conftest import mock_config, run_gateway
from tests.keyhelpers import gateway_config, manage

MSG = [{"role": "user", "content": "hi there"}]  # prompt estimate: ceil(8 / 4) + 3 = 5 tokens
ADMIN_SECRET = "sk-admin-config-effects-1"


def chat(http: httpx.Client, key: str | None = None, **body: Any) -> httpx.Response:
    auth = {"authorization": f"Bearer {key}"} if key else {}
    payload = {"model": "chat", "messages": MSG, **body}
    return http.post("/chat/completions", json=payload, headers=auth)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def access_lines() -> Iterator[list[str]]:
    """The access logger's lines, caught by a handler on that logger itself (not via caplog),
    so the capture does not depend on propagation, which the CLI's logging setup turns off."""
    log = logging.getLogger("tollhouse.access")
    handler, level = ListHandler(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# --- server.access_log --------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_false_writes_no_line_and_keeps_metrics(enabled: bool) -> None:
    """`access_log: false` turns the access log off (no line), while metrics still count the
    request; with `true` the same request writes its one line. Ignoring `false` would still
    write the line."""
    with (
        access_lines() as lines,
        run_gateway(mock_config(access_log=enabled)) as gw,
        httpx.Client(base_url=gw.v1) as http,
    ):
        assert chat(http, max_tokens=2).status_code == 200
        gw.wait_events(1)  # the access-log sink runs before the test's own event sink
        assert gw.total("llm_requests_total", model="chat") == 1
    if enabled:
        assert len(lines) == 1 and orjson.loads(lines[0])["model"] == "chat"
    else:
        assert lines == []


# --- tollhouse serve as a process: server.host, server.port, --host, --port, log_level ----


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_config(tmp_path: Path, **server: Any) -> dict[str, Any]:
    """An unpriced in-process mock backend (a request logs the `model_unpriced` warning)."""
    return {
        "server": server,
        "auth": {"required": False},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path}/store.db"},
        "backends": [{"name": "mock", "provider": "mock"}],
        "models": [{"name": "chat", "backend": "mock", "model": "echo"}],
    }


@contextmanager
def serve(
    config: dict[str, Any], tmp_path: Path, ready_url: str, *flags: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`tollhouse serve --config FILE [flags]` as a process, ready at ``ready_url``; always
    stopped (SIGTERM, then SIGKILL) on the way out. Its stderr goes to ``tmp_path/serve.log``."""
    path = tmp_path / "tollhouse.yaml"
    path.write_text(yaml.safe_dump(config))
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tollhouse.cli", "serve", "--config", str(path), *flags],
            stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(ready_url + "/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp_path / "serve.log").read_text()[-3000:]
                    raise AssertionError(f"gateway not ready at {ready_url}:\n{tail}")
                time.sleep(0.05)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    return False


def test_serve_binds_server_host_and_port_from_the_config(tmp_path: Path) -> None:
    """Without --host/--port, `serve` listens on `server.host`:`server.port`. 127.0.0.2 is
    loopback on Linux but not 127.0.0.1, so a gateway that ignored `host` (bound to the
    default 127.0.0.1) or `port` (bound to 4000) would not answer where it is asked."""
    port = free_port_on("127.0.0.2")
    config = serve_config(tmp_path, host="127.0.0.2", port=port)
    with serve(config, tmp_path, f"http://127.0.0.2:{port}"):
        assert httpx.get(f"http://127.0.0.2:{port}/health").status_code == 200
        assert refused(f"http://127.0.0.1:{port}")


def test_serve_host_and_port_flags_override_the_config(tmp_path: Path) -> None:
    """`--host` and `--port` win over `server.host` and `server.port`: the gateway answers on
    the flags' address and not on the config's."""
    config_port, flag_port = free_port_on("127.0.0.2"), free_port_on("127.0.0.1")
    config = serve_config(tmp_path, host="127.0.0.2", port=config_port)
    flags = ("--host", "127.0.0.1", "--port", str(flag_port))
    with serve(config, tmp_path, f"http://127.0.0.1:{flag_port}", *flags):
        assert httpx.get(f"http://127.0.0.1:{flag_port}/health").status_code == 200
        assert refused(f"http://127.0.0.2:{config_port}")
        assert refused(f"http://127.0.0.2:{flag_port}")


@pytest.mark.parametrize("level", ["info", "warning"])
def test_log_level_hides_info_lines_below_it(tmp_path: Path, level: str) -> None:
    """`log_level: info` logs the start-up line `serving on http://...` (INFO); `warning`
    drops every INFO line while still logging the `model_unpriced` WARNING a request to the
    unpriced mock triggers. A gateway ignoring `log_level` would log the INFO line either way."""
    port = free_port_on("127.0.0.1")
    config = serve_config(tmp_path, log_level=level, access_log=False)
    base = f"http://127.0.0.1:{port}"
    with (
        serve(config, tmp_path, base, "--port", str(port)),
        httpx.Client(base_url=base + "/v1") as http,
    ):
        assert chat(http, max_tokens=2).status_code == 200
    stderr = (tmp_path / "serve.log").read_text()
    lines = json_lines(stderr)
    assert any(line["level"] == "WARNING" and "model_unpriced" in line["msg"] for line in lines)
    serving = [line for line in lines if line["msg"].startswith("serving on http://127.0.0.1")]
    if level == "info":
        assert len(serving) == 1 and serving[0]["level"] == "INFO"
    else:  # neither the gateway's lines nor uvicorn's own say INFO
        assert serving == [] and "INFO" not in stderr and "DEBUG" not in stderr
    assert any(line["logger"].startswith("uvicorn") for line in lines) == (level == "info")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the gateway's stderr, uvicorn's own included: each must be one JSON
    object with the documented keys (a plain-text line fails the test)."""
    out = []
    for line in text.splitlines():
        parsed = orjson.loads(line)
        assert isinstance(parsed, dict) and {"ts", "level", "logger", "msg"} <= parsed.keys()
        out.append(parsed)
    return out


# --- auth.admin_key_env -------------------------------------------------------------------


def admin_config(**auth: Any) -> dict[str, Any]:
    config = mock_config()
    config["auth"] = {"required": True, "cache_ttl": 0, **auth}
    return config


def test_admin_key_env_names_the_variable_holding_the_admin_key() -> None:
    """With `admin_key_env: MY_GATEWAY_ADMIN` the key in that variable is the admin (proxy
    and admin API), and the default variable `TOLLHOUSE_ADMIN_KEY` is no longer read: its
    value is just an unknown key. Ignoring the option would invert both outcomes."""
    environ = {"MY_GATEWAY_ADMIN": ADMIN_SECRET, "TOLLHOUSE_ADMIN_KEY": "sk-not-the-admin-now"}
    with (
        run_gateway(admin_config(admin_key_env="MY_GATEWAY_ADMIN"), environ=environ) as gw,
        httpx.Client(base_url=gw.v1) as http,
    ):
        assert chat(http, ADMIN_SECRET, max_tokens=2).status_code == 200
        assert gw.wait_events(1)[0].key == "admin"
        other = chat(http, "sk-not-the-admin-now", max_tokens=2)
        assert other.status_code == 401 and other.json()["error"]["code"] == "invalid_api_key"
        admin = httpx.get(gw.url + "/admin/v1/health",
                          headers={"authorization": f"Bearer {ADMIN_SECRET}"})  # fmt: skip
        assert admin.status_code == 200


@pytest.mark.parametrize("admin_key_env", ["default", None])
def test_admin_key_env_null_means_no_admin_key(admin_key_env: str | None) -> None:
    """`admin_key_env: null` disables the admin key even when `TOLLHOUSE_ADMIN_KEY` is set:
    the secret is then an invalid key, and the admin API is disabled. With the option left
    at its default the same environment makes the secret the admin."""
    auth = {} if admin_key_env == "default" else {"admin_key_env": None}
    environ = {"TOLLHOUSE_ADMIN_KEY": ADMIN_SECRET}
    with (
        run_gateway(admin_config(**auth), environ=environ) as gw,
        httpx.Client(base_url=gw.v1) as http,
    ):
        r = chat(http, ADMIN_SECRET, max_tokens=2)
        admin = httpx.get(gw.url + "/admin/v1/health",
                          headers={"authorization": f"Bearer {ADMIN_SECRET}"})  # fmt: skip
        if admin_key_env == "default":
            assert r.status_code == 200 and gw.wait_events(1)[0].key == "admin"
            assert admin.status_code == 200
        else:
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert admin.status_code == 401
            assert admin.json()["error"]["code"] == "disabled_admin_key"


# --- auth.cache_ttl -----------------------------------------------------------------------


def block_in_store(db: Path, alias: str) -> None:
    """Block a key with plain SQL, behind the gateway's back: unlike the admin API, nothing
    tells the gateway to drop its cached lookups, so only `cache_ttl` decides when it sees it."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("UPDATE api_keys SET blocked = 1 WHERE alias = ?", (alias,)).rowcount
    conn.close()


def test_cache_ttl_keeps_a_blocked_key_working_until_it_passes(tmp_path: Path) -> None:
    """A key lookup is cached for `cache_ttl` seconds: a key blocked in the store keeps
    working inside that time and is refused (401 `blocked_api_key`) once it has passed."""
    ttl = 1.0
    db = tmp_path / "store.db"
    url = f"sqlite+aiosqlite:///{db}"
    secret = manage(url, lambda m: m.create_key("cached")).secret
    config = gateway_config(url)
    config["auth"]["cache_ttl"] = ttl
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        started = time.monotonic()
        assert chat(http, secret, max_tokens=2).status_code == 200  # looked up and cached
        cached_until = time.monotonic() + ttl  # the lookup happened before this instant
        block_in_store(db, "cached")
        assert chat(http, secret, max_tokens=2).status_code == 200
        assert time.monotonic() - started < ttl, "too slow to observe the cache; raise ttl"
        time.sleep(max(0.0, cached_until - time.monotonic()) + 0.05)
        r = chat(http, secret, max_tokens=2)
        assert r.status_code == 401 and r.json()["error"]["code"] == "blocked_api_key"


def test_cache_ttl_zero_sees_a_block_at_once(tmp_path: Path) -> None:
    """With `cache_ttl: 0` every request is looked up in the store, so the same block is
    refused on the very next request (with any caching it would still pass)."""
    db = tmp_path / "store.db"
    url = f"sqlite+aiosqlite:///{db}"
    secret = manage(url, lambda m: m.create_key("uncached")).secret
    config = gateway_config(url)
    config["auth"]["cache_ttl"] = 0
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        assert chat(http, secret, max_tokens=2).status_code == 200
        block_in_store(db, "uncached")
        r = chat(http, secret, max_tokens=2)
        assert r.status_code == 401 and r.json()["error"]["code"] == "blocked_api_key"


# --- routes without /v1 -------------------------------------------------------------------


def test_chat_and_embeddings_are_served_without_the_v1_prefix() -> None:
    """README: `/chat/completions` and `/embeddings` are accepted like their `/v1` twins:
    the same answer, usage and accounting (a missing route would be a 404)."""
    chat_body = {"model": "chat", "messages": MSG, "max_tokens": 3}
    embed_body = {"model": "embed", "input": "some words to embed"}
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        answers = {}
        for prefix in ("", "/v1"):
            c = http.post(prefix + "/chat/completions", json=chat_body)
            e = http.post(prefix + "/embeddings", json=embed_body)
            assert c.status_code == 200 and e.status_code == 200, (prefix, c.text, e.text)
            answers[prefix] = (c.json(), e.json())
        events = gw.wait_events(4)
    (bare_chat, bare_embed), (v1_chat, v1_embed) = answers[""], answers["/v1"]
    assert bare_chat["object"] == "chat.completion"
    assert bare_chat["choices"] == v1_chat["choices"] and bare_chat["usage"] == v1_chat["usage"]
    assert bare_embed["data"] == v1_embed["data"] and bare_embed["usage"] == v1_embed["usage"]
    assert [(e.operation, e.status) for e in events] == [
        ("chat", 200), ("embeddings", 200), ("chat", 200), ("embeddings", 200)
    ]  # fmt: skip


# --- limits.reserve_output_tokens ---------------------------------------------------------

# The prompt estimates 5 tokens; mock prices are 1.5 USD input and 2.5 USD output per million.
# tpm 100: reserving 20 output tokens (25 in all) fits, 200 (205) does not.
# budget 0.001 USD: reserving 100 costs 0.0002575 USD and fits, 1000 costs 0.0025075 USD.
LIMITS = {
    "tpm": {"rate_limits": [{"scope": "backend", "name": "mock", "tpm": 100}]},
    "budget": {"budgets": [{"scope": "backend", "name": "mock", "max_usd": "0.001"}]},
}
RESERVES = {"tpm": (20, 200), "budget": (100, 1000)}
REFUSAL = {"tpm": ("rate_limit_exceeded", "rate_limit"), "budget": ("budget_exceeded", "budget")}


@pytest.mark.parametrize("kind", ["tpm", "budget"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_reserve_output_tokens_is_the_worst_case_of_uncapped_chats(kind: str, size: str) -> None:
    """A chat without `max_tokens` is admitted against `reserve_output_tokens` output tokens:
    a small reserve fits the backend's tpm limit or budget, a large one is refused with 429
    before any upstream call. The same request with a small `max_tokens` is admitted under the
    large reserve, since the reserve only stands in for a missing cap."""
    reserve = RESERVES[kind][0 if size == "small" else 1]
    config = {**mock_config(), **LIMITS[kind], "limits": {"reserve_output_tokens": reserve}}
    with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
        uncapped = chat(http)
        if size == "small":
            assert uncapped.status_code == 200, uncapped.text
        else:
            code, reason = REFUSAL[kind]
            assert uncapped.status_code == 429 and uncapped.json()["error"]["code"] == code
            assert chat(http, max_tokens=2).status_code == 200
            gw.wait_events(2)
            assert gw.metric("llm_rejections_total", reason=reason, scope="backend") == 1


# --- backends[].price_provider ------------------------------------------------------------

GROQ_MODEL = "llama-3.3-70b-versatile"  # priced by genai-prices under groq, unknown to openai


def test_price_provider_looks_prices_up_under_another_provider() -> None:
    """Two `openai` backends on one upstream serve the same Groq model id: the one with
    `price_provider: groq` is costed at genai-prices' groq rates, the one without looks the
    id up under `openai`, finds nothing and counts the request as unpriced."""
    _, info = get_snapshot().find_provider_model(GROQ_MODEL, None, "groq", None)
    rates = info.get_prices(datetime.now(UTC))
    with MockUpstream() as up:
        base = {"provider": "openai", "base_url": up.base_url + "/v1"}
        config = {
            "backends": [{"name": "groq", "price_provider": "groq", **base},
                         {"name": "plain", **base}],
            "models": [{"name": "priced", "backend": "groq", "model": GROQ_MODEL},
                       {"name": "unpriced", "backend": "plain", "model": GROQ_MODEL}],
        }  # fmt: skip
        with run_gateway(config) as gw, httpx.Client(base_url=gw.v1) as http:
            for model in ("priced", "unpriced"):
                assert chat(http, model=model, max_tokens=3).status_code == 200
            events = {e.model: e for e in gw.wait_events(2)}
            labels = {"provider": "openai"}
            unpriced = {
                model: gw.metric("llm_unpriced_requests_total", model=model, backend=b, **labels)
                for model, b in (("priced", "groq"), ("unpriced", "plain"))
            }
            cost = gw.total("llm_cost_usd_total", model="priced", backend="groq")
    priced = events["priced"]
    expected = (
        priced.usage.input * Decimal(rates.input_mtok)
        + priced.usage.output * Decimal(rates.output_mtok)
    ) / Decimal(1_000_000)
    assert priced.usage.input == 5 and priced.usage.output == 3
    assert expected > 0 and priced.cost == expected
    assert cost == pytest.approx(float(expected))
    assert events["unpriced"].cost is None
    assert unpriced == {"priced": 0, "unpriced": 1}
