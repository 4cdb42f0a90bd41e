"""The documented ``cache``, ``limits``, ``store`` and ``ledger`` options, through a real gateway.

Each option is exercised end to end (HTTP in, SQLite file or Redis keys out) and contrasted
with another setting, so a gateway that ignored it would fail: ``cache.ttl``,
``cache.max_entries``, ``cache.backend: redis`` with ``redis_prefix``, ``limits.backend: redis``
with ``redis_prefix``, ``store.migrate_on_start``, ``ledger.retry_interval``,
``ledger.batch_size`` and ``ledger.flush_interval``, and the README's ``x-ratelimit-reset-*``
response headers. Redis tests skip without Redis, and fail under
``TOLLHOUSE_REQUIRE_SERVICES=1``; each one writes under its own uuid prefix and deletes it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.conftest import (
    RunningGateway,
    delete_redis_prefix,
    mock_config,
    need,
    redis_available,
    run_gateway,
)
from tests.keyhelpers import gateway_config, manage
from tests.test_cli_manage import tollhouse
from tollhouse.cache import cache_key
from tollhouse.identity.manage import LimitsInput

REDIS_URL = "redis://127.0.0.1:6379/0"


def ask(gw: RunningGateway, content: str = "hi there", **body: Any) -> httpx.Response:
    payload = {"model": "chat", "messages": [{"role": "user", "content": content}],
               "max_tokens": 2, **body}  # fmt: skip
    return httpx.post(gw.v1 + "/chat/completions", json=payload, timeout=10)


def cache_result(gw: RunningGateway, content: str) -> str | None:
    r = ask(gw, content)
    assert r.status_code == 200, r.text
    return r.headers.get("x-tollhouse-cache")


def until(predicate: Callable[[], bool], within: float = 5.0) -> float:
    """Poll ``predicate``; return the seconds it took to hold (fails after ``within``)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh Redis key prefix for one test; every key under it is deleted afterwards."""
    need(redis_available(), "Redis is not reachable at 127.0.0.1:6379")
    prefix = f"tollhouse-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    delete_redis_prefix(prefix)


def redis_keys(match: str) -> set[str]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return set(client.scan_iter(match=match, count=1000))
    finally:
        client.close()


# --- cache.ttl ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "after_wait"), [(0.5, "miss"), (None, "hit")])
def test_cache_ttl_is_how_long_an_answer_is_replayed(ttl: float | None, after_wait: str) -> None:
    """Within ``ttl`` the answer is replayed; 0.7 s later a 0.5 s entry is gone while one under
    the default (300 s) is still served. The cache's expiry reads ``time.monotonic`` (not the
    app clock), so real time passes here. Ignoring ``ttl`` would make the first case a hit."""
    cache: dict[str, Any] = {"enabled": True} if ttl is None else {"enabled": True, "ttl": ttl}
    with run_gateway({**mock_config(), "cache": cache}) as gw:
        assert cache_result(gw, "ttl") == "miss"
        assert cache_result(gw, "ttl") == "hit"
        time.sleep(0.7)
        assert cache_result(gw, "ttl") == after_wait


# --- cache.max_entries -------------------------------------------------------------------------


@pytest.mark.parametrize(("max_entries", "b_again"), [(2, "miss"), (3, "hit")])
def test_cache_max_entries_evicts_the_least_recently_used(max_entries: int, b_again: str) -> None:
    """The memory cache is an LRU (``MemoryCache`` moves an entry to the end on every hit and
    evicts from the front). A and B are cached, A is read again (so B is now the least recently
    used), then C is cached: with ``max_entries: 2`` B is evicted (a miss again) while A stays;
    FIFO would have evicted A instead. With room for 3 nothing is evicted, so ignoring the
    option (default 10000) would make B a hit in the first case."""
    cache = {"enabled": True, "max_entries": max_entries}
    with run_gateway({**mock_config(), "cache": cache}) as gw:
        seen = [cache_result(gw, q) for q in ("A", "B", "A", "C")]
        assert seen == ["miss", "miss", "hit", "miss"]
        assert cache_result(gw, "A") == "hit"
        assert cache_result(gw, "B") == b_again


# --- cache.backend: redis ----------------------------------------------------------------------


def test_redis_cache_is_shared_by_gateways_under_its_prefix(redis_prefix: str) -> None:
    """Two gateways with the same ``redis_url`` and ``redis_prefix`` share answers: the second
    one replays what the first stored (with memory caches it would miss). The one key written
    is ``redis_prefix`` + the request's (unscoped: ``scope: global``) cache key, with the
    configured ttl; a gateway with
    another prefix does not see it (so the prefix is used for reads too)."""
    content = f"shared {uuid.uuid4().hex}"
    cache = {"enabled": True, "backend": "redis", "redis_url": REDIS_URL,
             "redis_prefix": redis_prefix, "ttl": 60, "scope": "global"}  # fmt: skip
    other_prefix = redis_prefix + "other:"
    try:
        with run_gateway({**mock_config(), "cache": cache}) as one, \
                run_gateway({**mock_config(), "cache": cache}) as two:  # fmt: skip
            assert cache_result(one, content) == "miss"
            assert cache_result(two, content) == "hit"
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2}
            expected = redis_prefix + cache_key("chat", body)
            assert redis_keys(redis_prefix + "*") == {expected}
            assert redis_keys("*" + cache_key("chat", body)) == {expected}  # nowhere else
            client = redis.Redis.from_url(REDIS_URL)
            try:
                assert 50_000 < client.pttl(expected) <= 60_000
            finally:
                client.close()
        elsewhere = {**cache, "redis_prefix": other_prefix}
        with run_gateway({**mock_config(), "cache": elsewhere}) as three:
            assert cache_result(three, content) == "miss"
    finally:
        delete_redis_prefix(other_prefix)


# --- limits.backend: redis ---------------------------------------------------------------------


def test_redis_limits_share_a_backend_rpm_across_gateways_with_one_prefix(
    redis_prefix: str,
) -> None:
    """A backend ``rpm: 1`` counted in Redis: a request through gateway one uses the minute's
    only request, so the next one through gateway two (same prefix) gets 429. Gateway three,
    with another ``redis_prefix``, has its own counter and serves. The counter is the key
    ``<prefix>rate:backend:<backend>:rpm:<unix minute>``; a scan for that backend's counters
    over the whole Redis finds only the two prefixed ones. All gateways share one frozen
    clock, so the three requests fall in the same minute."""
    backend = f"mock-{uuid.uuid4().hex[:8]}"
    now = time.time()
    minute = int(now // 60)
    other_prefix = redis_prefix + "other:"

    def config(prefix: str) -> dict[str, Any]:
        cfg = mock_config()
        cfg["backends"][0]["name"] = backend
        cfg["models"] = [{"name": "chat", "backend": backend, "model": "echo"}]
        cfg["rate_limits"] = [{"scope": "backend", "name": backend, "rpm": 1}]
        cfg["limits"] = {"backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix}
        return cfg

    try:
        with run_gateway(config(redis_prefix), clock=lambda: now) as one, \
                run_gateway(config(redis_prefix), clock=lambda: now) as two, \
                run_gateway(config(other_prefix), clock=lambda: now) as three:  # fmt: skip
            assert ask(one).status_code == 200
            refused = ask(two)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert ask(three).status_code == 200
            counter = f"rate:backend:{backend}:rpm:{minute}"
            assert redis_prefix + counter in redis_keys(redis_prefix + "*")
            assert redis_keys(f"*rate:backend:{backend}:*") == {
                redis_prefix + counter,
                other_prefix + counter,
            }
            client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
            try:
                assert client.get(redis_prefix + counter) == "1"  # the refused one is not counted
                assert client.get(other_prefix + counter) == "1"
            finally:
                client.close()
    finally:
        delete_redis_prefix(other_prefix)


# --- store.migrate_on_start ----------------------------------------------------------------------


def sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def test_migrate_on_start_false_leaves_a_fresh_store_empty_until_tollhouse_migrate(
    tmp_path: Path,
) -> None:
    """``tollhouse serve`` with ``migrate_on_start: false`` on a fresh SQLite file creates no
    table, so it refuses to start: it exits non-zero, its log saying the store has no tables
    and to run ``tollhouse migrate`` first. The default creates the tables at start.
    After ``tollhouse migrate --config FILE`` the same ``false`` config starts and serves."""
    fresh = tmp_path / "fresh.db"
    manual = {**mock_config(), "auth": {"required": False},
              "store": {"url": f"sqlite+aiosqlite:///{fresh}", "migrate_on_start": False},
              "ledger": {"flush_interval": 0.05}}  # fmt: skip
    config_file = tmp_path / "manual.yaml"
    config_file.write_text(yaml.safe_dump({**manual, "server": {"port": 0, "access_log": False}}))
    serve = subprocess.Popen(
        [sys.executable, "-m", "tollhouse.cli", "serve", "--config", str(config_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, log = serve.communicate(timeout=30)
    finally:
        if serve.poll() is None:  # it started after all: stop it; the asserts below fail
            serve.kill()
            serve.wait()
    assert serve.returncode != 0
    assert "has no tollhouse tables" in log and "Run `tollhouse migrate --config FILE`" in log
    assert "Application startup failed" in log
    assert not {"api_keys", "ledger"} & sqlite_tables(fresh)

    automatic = tmp_path / "automatic.db"
    with run_gateway({**mock_config(), "store": {"url": f"sqlite+aiosqlite:///{automatic}"}}):
        assert {"api_keys", "ledger"} <= sqlite_tables(automatic)

    code, _, err = tollhouse("migrate", "--config", str(config_file))
    assert code == 0, err
    assert {"api_keys", "teams", "users", "ledger"} <= sqlite_tables(fresh)
    with run_gateway(manual) as gw:
        assert ask(gw).status_code == 200
        until(lambda: ledger_rows(fresh) == 1)


# --- ledger ------------------------------------------------------------------------------------


def ledger_rows(path: Path) -> int:
    with sqlite3.connect(path, timeout=10) as db:
        (count,) = db.execute("SELECT count(*) FROM ledger").fetchone()
    return int(count)


def rename_table(path: Path, old: str, new: str) -> None:
    """Take the ledger table away (or give it back) under the running gateway."""
    db = sqlite3.connect(path, timeout=10)
    try:
        db.execute(f"ALTER TABLE {old} RENAME TO {new}")
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize(("retry_interval", "errors_in_a_second"), [(0.2, (4, 7)), (2.0, (1, 1))])
def test_ledger_retry_interval_spaces_the_retries_and_loses_nothing(
    tmp_path: Path, retry_interval: float, errors_in_a_second: tuple[int, int]
) -> None:
    """While the ledger table is missing every write fails; the writer waits
    ``retry_interval`` between attempts. In the second after the first failure, 0.2 s gives
    ~5 more failed attempts and 2 s none, counted in ``tollhouse_ledger_write_errors_total``
    (with the default 1 s it would be 1-2 in both cases, failing both). Once the table is
    back, the held row is written: nothing is lost."""
    path = tmp_path / "store.db"
    config = {**mock_config(), "store": {"url": f"sqlite+aiosqlite:///{path}"},
              "ledger": {"flush_interval": 0.05, "retry_interval": retry_interval}}  # fmt: skip
    with run_gateway(config) as gw:
        rename_table(path, "ledger", "ledger_offline")
        assert ask(gw).status_code == 200
        errors = "tollhouse_ledger_write_errors_total"
        until(lambda: gw.metric(errors) >= 1)
        time.sleep(1.0)
        low, high = errors_in_a_second
        assert low <= gw.metric(errors) <= high
        assert gw.metric("tollhouse_ledger_backlog") == 1
        rename_table(path, "ledger_offline", "ledger")
        until(lambda: ledger_rows(path) == 1, within=retry_interval + 3)
        assert gw.metric("tollhouse_ledger_rows_written_total") == 1
        assert gw.metric("tollhouse_ledger_backlog") == 0


def test_ledger_batch_size_writes_a_full_batch_before_flush_interval(tmp_path: Path) -> None:
    """``flush_interval: 5`` and ``batch_size: 3``: two requests stay queued for 0.8 s (the
    default 0.5 s flush would have written them), and the third fills the batch, which is
    written at once, long before the 5 s flush (the default batch of 500 would wait)."""
    path = tmp_path / "store.db"
    config = {**mock_config(), "store": {"url": f"sqlite+aiosqlite:///{path}"},
              "ledger": {"flush_interval": 5, "batch_size": 3}}  # fmt: skip
    with run_gateway(config) as gw:
        started = time.monotonic()
        for _ in range(2):
            assert ask(gw).status_code == 200
        time.sleep(0.8)
        assert ledger_rows(path) == 0 and gw.metric("tollhouse_ledger_backlog") == 2
        assert ask(gw).status_code == 200
        until(lambda: ledger_rows(path) == 3, within=2)
        assert time.monotonic() - started < 4  # written by the full batch, not the 5 s flush


@pytest.mark.parametrize(("flush_interval", "written_by_0_8s"), [(0.1, 1), (5, 0)])
def test_ledger_flush_interval_is_how_soon_a_single_row_arrives(
    tmp_path: Path, flush_interval: float, written_by_0_8s: int
) -> None:
    """One request, far from a full batch: with ``flush_interval: 0.1`` its row is in the
    store within ~0.1 s; with 5 s it is still queued after 0.8 s (ignoring the option, the
    default 0.5 s, would have written it)."""
    path = tmp_path / "store.db"
    config = {**mock_config(), "store": {"url": f"sqlite+aiosqlite:///{path}"},
              "ledger": {"flush_interval": flush_interval}}  # fmt: skip
    with run_gateway(config) as gw:
        assert ask(gw).status_code == 200
        if written_by_0_8s:
            assert until(lambda: ledger_rows(path) == 1, within=0.8) < 0.45
        else:
            time.sleep(0.8)
            assert ledger_rows(path) == 0 and gw.metric("tollhouse_ledger_backlog") == 1


# --- x-ratelimit-reset-* headers ---------------------------------------------------------------


def ratelimit_headers(gw: RunningGateway, stream: bool, auth: dict[str, str]) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers of one admitted chat (5 prompt tokens + max_tokens 2)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi there"}],
            "max_tokens": 2, "stream": stream}  # fmt: skip
    r = httpx.post(gw.v1 + "/chat/completions", json=body, headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    return {h: v for h, v in r.headers.items() if h.startswith("x-ratelimit-")}


def documented_headers(reset: str) -> dict[str, str]:
    """What rpm 5 and tpm 1000 show after one request whose worst case is 7 tokens."""
    return {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": str(1000 - 7),
        "x-ratelimit-reset-tokens": reset,
    }


@pytest.mark.parametrize(("second", "reset"), [(43.0, "17s"), (59.2, "1s"), (0.5, "60s")])
@pytest.mark.parametrize("stream", [False, True])
def test_ratelimit_reset_headers_count_seconds_to_the_end_of_the_minute(
    tmp_path: Path, second: float, reset: str, stream: bool
) -> None:
    """README "Response headers" and budgets-and-limits.md "Rate-limit headers on admitted
    requests": with a key's ``--rpm 5 --tpm 1000``, the admitted response, whole or
    streamed, carries ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` as
    ``<seconds until the minute ends>s`` (rounded up), next to the limits and what remains
    after this request's worst case. The app clock is frozen at ``second`` seconds into a
    minute, so each case has one exact value. Without any rate limit (an anonymous caller on
    a gateway with no ``rate_limits``) the same request carries no such header."""
    now = 29_000_000 * 60 + second
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    created = manage(url, lambda m: m.create_key("hdr", limits=LimitsInput(rpm=5, tpm=1000)))
    with run_gateway(gateway_config(url), clock=lambda: now) as gw:
        auth = {"authorization": f"Bearer {created.secret}"}
        assert ratelimit_headers(gw, stream, auth) == documented_headers(reset)
    with run_gateway(mock_config(), clock=lambda: now) as gw:
        assert ratelimit_headers(gw, stream, {}) == {}


@pytest.mark.parametrize("stream", [False, True])
def test_a_backend_rate_limit_sets_the_ratelimit_headers(stream: bool) -> None:
    """The same documented headers when the limit is a backend's (config ``rate_limits``):
    README says they appear "when one of the gateway's own rate limits applies", and
    budgets-and-limits.md lists the backend among the limits whose tightest is shown."""
    now = 29_000_000 * 60 + 43.0
    config = {**mock_config(),
              "rate_limits": [{"scope": "backend", "name": "mock", "rpm": 5, "tpm": 1000}]}  # fmt: skip
    with run_gateway(config, clock=lambda: now) as gw:
        assert ratelimit_headers(gw, stream, {}) == documented_headers("17s")


@pytest.mark.parametrize(("key_rpm", "backend_rpm"), [(5, 2), (2, 5)])
def test_the_tightest_of_the_callers_and_the_backends_limits_is_shown(
    tmp_path: Path, key_rpm: int, backend_rpm: int
) -> None:
    """A key's and its backend's rpm both apply: the request headers show whichever has
    less left (the tokens come from the key's tpm, the only token limit)."""
    now = 29_000_000 * 60 + 43.0
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    limits = LimitsInput(rpm=key_rpm, tpm=1000)
    created = manage(url, lambda m: m.create_key("both", limits=limits))
    config = gateway_config(url)
    config["rate_limits"] = [{"scope": "backend", "name": "mock", "rpm": backend_rpm}]
    with run_gateway(config, clock=lambda: now) as gw:
        auth = {"authorization": f"Bearer {created.secret}"}
        got = ratelimit_headers(gw, False, auth)
    tight = min(key_rpm, backend_rpm)
    assert got["x-ratelimit-limit-requests"] == str(tight)
    assert got["x-ratelimit-remaining-requests"] == str(tight - 1)
    assert got["x-ratelimit-limit-tokens"] == "1000"
