"""``tollhouse serve --workers N``: one /metrics for all workers, whichever serves the scrape.

Counters and histograms sum over workers, in-flight gauges sum, state gauges are
not multiplied, and a previous run's files do not leak into the next.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import delete_redis_prefix, mock_config, need, redis_available, run_sync
from tests.gateway_process import free_port
from tollhouse.store.engine import Store

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 10}


@contextmanager
def workers(tmp_path: Path, n: int) -> Iterator[tuple[str, Path]]:
    """``tollhouse serve --workers n`` as a real process; yields its URL and metrics dir.

    Several workers need shared counters (``serve`` refuses memory ones), so Redis."""
    need(redis_available(), "Redis is not reachable at 127.0.0.1:6379")
    cfg = mock_config(access_log=False)
    cfg["auth"] = {"required": False}
    prefix = f"tollhouse-test-{uuid.uuid4().hex[:8]}:"
    cfg["limits"] = {"backend": "redis", "redis_prefix": prefix}
    cfg["store"] = {"url": f"sqlite+aiosqlite:///{tmp_path}/store.db"}
    cfg["ledger"] = {"flush_interval": 0.05}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    shared = tmp_path / "metrics"
    shared.mkdir(exist_ok=True)
    (shared / "counter_999999.db").write_bytes(b"left over from a previous run")
    port = free_port()
    log = (tmp_path / "gw.log").open("wb")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollhouse.cli", "serve", "--config", str(tmp_path / "gw.yaml"),
         "--port", str(port), "--workers", str(n)],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                started = (tmp_path / "gw.log").read_text().count("Application startup complete")
                if started == n and httpx.get(url + "/health/ready").status_code == 200:
                    break  # every worker is serving
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "gw.log").read_text()[-3000:])
            time.sleep(0.1)
        yield url, shared
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        delete_redis_prefix(prefix)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, keyed by name and sorted labels."""
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str
) -> float:
    """Sum of the samples named ``name`` whose labels include ``match``."""
    return sum(
        v for (n, labels), v in samples.items()
        if n == name and match.items() <= dict(labels).items()
    )  # fmt: skip


async def burst(url: str, n: int, model: str = "chat") -> list[dict[str, int]]:
    """``n`` concurrent requests on separate connections, so the kernel spreads them."""
    usages: list[dict[str, int]] = []

    async def one() -> None:
        async with aiohttp.ClientSession() as http:
            body = {**BODY, "model": model}
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                data = await r.json()
                if r.status == 200:
                    usages.append(data["usage"])

    await asyncio.gather(*(one() for _ in range(n)))
    return usages


def ledger_usd(tmp_path: Path) -> Decimal:
    async def read() -> dict[str, int]:
        async with Store(f"sqlite+aiosqlite:///{tmp_path}/store.db") as store:
            return await store.ledger.spend_since("backend", 0)

    spend: dict[str, int] = run_sync(read())
    return Decimal(sum(spend.values())) / Decimal(10**12)


def test_two_workers_expose_summed_counters_and_unmultiplied_state(tmp_path: Path) -> None:
    """Requests, tokens and cost sum across workers; build info and deployment state do not."""
    n = 120
    with workers(tmp_path, 2) as (url, shared):
        assert not (shared / "counter_999999.db").exists()  # cleaned on start
        usages = run_sync(burst(url, n))
        assert len(usages) == n
        pids = {p.stem.rsplit("_", 1)[1] for p in shared.glob("counter_*.db")}
        assert len(pids) == 2, f"traffic did not reach both workers: {sorted(shared.iterdir())}"
        deadline = time.monotonic() + 10
        while ledger_usd(tmp_path) < Decimal("0.0000325") * n and time.monotonic() < deadline:
            time.sleep(0.1)

        scrapes = [scrape(url) for _ in range(6)]  # served by either worker
        for samples in scrapes:
            assert total(samples, "llm_requests_total") == n
            assert total(samples, "llm_request_duration_seconds_count") == n
            tokens_in = sum(u["prompt_tokens"] for u in usages)
            tokens_out = sum(u["completion_tokens"] for u in usages)
            assert total(samples, "llm_tokens_total", type="input") == tokens_in
            assert total(samples, "llm_tokens_total") == tokens_in + tokens_out
            assert abs(total(samples, "llm_cost_usd_total") - float(ledger_usd(tmp_path))) < 1e-12
            assert [v for (name, _), v in samples.items() if name == "tollhouse_build_info"] == [1]
            states = [k for k in samples if k[0] == "llm_deployment_state"]
            assert len(states) == len(set(states)) == 10  # one per deployment, not per worker
            assert not any(dict(labels).get("pid") for _, labels in samples)
            assert total(samples, "llm_requests_in_flight") == 0


def test_in_flight_requests_sum_across_workers(tmp_path: Path) -> None:
    """Requests waiting on a hung upstream in both workers add up in llm_requests_in_flight."""
    with workers(tmp_path, 2) as (url, _):

        async def scenario() -> float:
            pending = asyncio.ensure_future(burst(url, 16, model="timeout"))
            await asyncio.sleep(0.3)  # all 16 wait on the upstream (read timeout 0.5 s)
            async with httpx.AsyncClient() as http:
                text = (await http.get(url + "/metrics")).text
            await pending
            return sum(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "llm_requests_in_flight"
            )

        assert run_sync(scenario()) == 16
        assert total(scrape(url), "llm_requests_in_flight") == 0
