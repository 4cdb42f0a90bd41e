"""Several gateway processes: shared Redis and PostgreSQL enforce one key's limits jointly,
and a graceful shutdown under load loses no ledger row."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import mock_config, need, postgres_database, redis_available, run_sync
from tests.gateway_process import gateway_process
from tests.keyhelpers import manage
from tollhouse.identity.manage import LimitsInput, Manager
from tollhouse.store.engine import Store

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 10}
COST = Decimal("0.0000325")


def config(store_url: str, **extra: Any) -> dict[str, Any]:
    cfg = mock_config(access_log=False)
    cfg["auth"] = {"required": True, "cache_ttl": 1}
    cfg["store"] = {"url": store_url}
    cfg["ledger"] = {"flush_interval": 0.05}
    cfg.update(extra)
    return cfg


async def spread(urls: list[str], secret: str, n: int) -> Counter[str]:
    """``n`` simultaneous requests, alternating between the gateways."""
    out: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:

        async def one(i: int) -> None:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            async with http.post(
                url, json=BODY, headers={"authorization": f"Bearer {secret}"}
            ) as r:
                out[str(r.status) if r.status == 200 else (await r.json())["error"]["code"]] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


def ledger(url: str) -> tuple[int, dict[str, int]]:
    async def read() -> tuple[int, dict[str, int]]:
        async with Store(url) as store:
            repo = store.ledger
            return await repo.count_rows(), await repo.spend_since("key_alias", 0)

    result: tuple[int, dict[str, int]] = run_sync(read())
    return result


def away_from_minute_boundary() -> None:
    """rpm windows are calendar minutes; start a burst well inside one."""
    second = time.time() % 60
    if second > 50:
        time.sleep(60 - second + 0.5)


def test_two_gateways_share_one_keys_budget_and_rpm(tmp_path: Path) -> None:
    need(redis_available(), "Redis is not reachable at 127.0.0.1:6379")
    with postgres_database() as url:

        async def setup(m: Manager) -> tuple[str, str]:
            budget = await m.create_key(
                "budgeted", limits=LimitsInput(max_budget_usd=COST * Decimal("15.5"))
            )
            rpm = await m.create_key("rpm10", limits=LimitsInput(rpm=10))
            return budget.secret, rpm.secret

        budget_key, rpm_key = manage(url, setup)
        prefix = f"tollhouse-mp-{time.time_ns()}:"
        cfg = config(url, limits={"backend": "redis", "redis_prefix": prefix})
        with gateway_process(cfg, tmp_path, "a") as a, gateway_process(cfg, tmp_path, "b") as b:
            away_from_minute_boundary()
            by_budget = asyncio.run(spread([a, b], budget_key, 100))
            by_rpm = asyncio.run(spread([a, b], rpm_key, 30))
        rows, spend = ledger(url)
    assert by_budget == Counter({"200": 15, "budget_exceeded": 85})
    assert by_rpm == Counter({"200": 10, "rate_limit_exceeded": 20})
    assert Decimal(spend["budgeted"]) / 10**12 == 15 * COST
    assert rows == 130  # every request, refused ones included, has its ledger row


@pytest.mark.parametrize("stream", [False, True])
def test_graceful_shutdown_under_load_loses_no_ledger_row(tmp_path: Path, stream: bool) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    secret = manage(url, lambda m: m.create_key("load")).secret
    cfg = config(url)
    cfg["models"].append(
        {"name": "busy", "backend": "mock", "model": "echo-delay-400-chunkdelay-5"}
    )
    answered: list[str] = []
    with gateway_process(cfg, tmp_path) as gw:

        async def load() -> None:
            async with aiohttp.ClientSession() as http:

                async def one(i: int) -> None:
                    headers = {"authorization": f"Bearer {secret}", "x-request-id": f"load-{i}"}
                    body = {**BODY, "model": "busy", "stream": stream}
                    try:
                        async with http.post(
                            gw + "/v1/chat/completions", json=body, headers=headers
                        ) as r:
                            await r.read()
                            answered.append(f"load-{i}")
                    except aiohttp.ClientError:
                        pass  # refused once shutdown began: never reached the app

                tasks = [asyncio.create_task(one(i)) for i in range(150)]
                await asyncio.sleep(0.25)  # requests are in flight inside the gateway
                stop()
                await asyncio.gather(*tasks)

        def stop() -> None:
            gw.proc.send_signal(signal.SIGTERM)

        asyncio.run(load())

    async def ids() -> set[str]:
        import sqlalchemy as sa

        from tollhouse.store.tables import ledger as table

        async with Store(url) as store, store.engine.connect() as conn:
            return {r[0] for r in await conn.execute(sa.select(table.c.request_id))}

    written: set[str] = run_sync(ids())
    assert len(answered) >= 100, "the load should have been served while shutting down"
    assert set(answered) <= written
    assert len(written) == len(answered)
