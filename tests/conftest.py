"""Shared test harness: the real gateway on a real loopback port.

``run_gateway`` starts the ASGI app under uvicorn (httptools, as in
production) in a background thread, so tests drive it with real HTTP clients
(the ``openai`` SDK, aiohttp, raw sockets). Each gateway gets its own
``CollectorRegistry``; tests read metrics with ``get_sample_value``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from tollhouse.accounting.event import UsageEvent
from tollhouse.app import App
from tollhouse.config import parse_config
from tollhouse.server import GatewayHttpProtocol

REQUIRE_SERVICES = os.environ.get("TOLLHOUSE_REQUIRE_SERVICES") == "1"


def need(available: bool, reason: str) -> None:
    """Skip when a service is missing, unless CI said every service must be there."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required service is missing (TOLLHOUSE_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@dataclass
class RunningGateway:
    app: App
    url: str
    registry: CollectorRegistry
    events: list[UsageEvent] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value, 0.0 when the series does not exist (yet)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample named ``name`` whose labels include ``labels``."""
        out = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    out += sample.value
        return out

    def wait_events(self, count: int, timeout: float = 5.0) -> list[UsageEvent]:
        """Wait until ``count`` events were emitted (streams finish after the client returns)."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.events) >= count, f"expected {count} events, got {len(self.events)}"
        return list(self.events)


@contextmanager
def serve_app(app: App) -> Iterator[str]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=GatewayHttpProtocol,
        loop="uvloop",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def mid_minute_clock() -> Callable[[], float]:
    """A wall clock held 30 s into the current minute, for ``run_gateway(clock=...)``.

    Rate limits count per calendar minute: a test that expects its second request
    refused fails whenever the real minute turns between the two, so such tests
    hold the limits' clock still instead."""
    now = time.time() // 60 * 60 + 30
    return lambda: now


@contextmanager
def run_gateway(
    raw_config: dict[str, Any],
    environ: dict[str, str] | None = None,
    extra_sinks: list[Callable[[UsageEvent], None]] | None = None,
    clock: Callable[[], float] | None = None,
) -> Iterator[RunningGateway]:
    with tempfile.TemporaryDirectory(prefix="tollhouse-test-") as tmp:
        raw = {"auth": {"required": False}, **raw_config}
        raw.setdefault("store", {"url": f"sqlite+aiosqlite:///{tmp}/store.db"})
        config = parse_config(raw, environ=environ or {})
        registry = CollectorRegistry()
        events: list[UsageEvent] = []
        sinks = [events.append, *(extra_sinks or [])]
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        app = App(config, registry=registry, environ=environ or {}, extra_sinks=sinks, **extra)
        with serve_app(app) as url:
            yield RunningGateway(app, url, registry, events)


MOCK_MODELS = {
    "chat": "echo",
    "cached": "echo-cache-reason-2",
    "slow": "echo-chunkdelay-20",
    "fail-429": "fail-429",
    "fail-500": "fail-500",
    "timeout": "hang",
    "idle": "hang-after-2",
    "drop": "drop-after-2",
    "malformed": "malformed",
    "embed": "embed",
}


def mock_config(**server: Any) -> dict[str, Any]:
    """The in-process mock backend with one public model per behaviour."""
    return {
        "server": {"access_log": True, **server},
        "backends": [
            {
                "name": "mock",
                "provider": "mock",
                "prices": {"input": "1.5", "output": "2.5", "cached_input": "0.75"},
                "timeouts": {"read": 0.5, "stream_idle": 0.3},
            }
        ],
        "models": [{"name": n, "backend": "mock", "model": m} for n, m in MOCK_MODELS.items()],
    }


@pytest.fixture
def mock_gateway() -> Iterator[RunningGateway]:
    with run_gateway(mock_config()) as gw:
        yield gw


GatewayFactory = Callable[..., Any]


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    box: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as err:  # handed to the caller's thread below
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0] if box else None


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    need(postgres_available(), "PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"tollhouse_t_{uuid.uuid4().hex[:12]}"
    run_sync(_pg(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        run_sync(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """The same tests against the embedded SQLite store and against PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/store.db"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def limits_config(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The same tests with counters in process memory and in Redis."""
    if request.param == "memory":
        yield {"backend": "memory"}
        return
    need(redis_available(), "Redis is not reachable at 127.0.0.1:6379")
    prefix = f"tollhouse-test-{uuid.uuid4().hex[:8]}:"
    yield {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0", "redis_prefix": prefix}
    delete_redis_prefix(prefix)


def delete_redis_prefix(prefix: str) -> None:
    """Remove every key a test's gateway wrote under its own Redis prefix."""

    async def cleanup() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    run_sync(cleanup())


def free_port() -> int:
    """A loopback port nothing listens on (for unreachable backends)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
