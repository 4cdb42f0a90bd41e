"""Active health probes: each backend with ``health_check`` is asked for its model list
every ``interval`` seconds; a failed probe takes its deployments out of rotation until
a probe succeeds again.

The probe goes through the backend's own transport and adapter (same pool, same
auth), so it tests exactly what requests use. Results are plain state read at
scrape time (``llm_backend_up``); routing never imports metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from tollhouse.config.schema import BackendConfig, Config
from tollhouse.errors import UpstreamError
from tollhouse.routing.router import Deployment, Router
from tollhouse.tasks import cancel_and_wait

log = logging.getLogger("tollhouse.routing")


@dataclass
class ProbeResult:
    up: bool
    latency: float
    checked_at: float


class Prober:
    def __init__(self, router: Router, config: Config) -> None:
        self._router = router
        self._backends = [b for b in config.backends if b.health_check is not None]
        self.results: dict[str, ProbeResult] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _deployments(self, backend: str) -> list[Deployment]:
        return [
            d for g in self._router.groups() for d in g.deployments if d.target.backend == backend
        ]

    async def probe(self, backend: BackendConfig) -> ProbeResult:
        """One probe of ``backend``: up when it answers 2xx within the timeout."""
        deps = self._deployments(backend.name)
        if not deps:
            return ProbeResult(True, 0.0, time.time())
        dep = deps[0]
        assert backend.health_check is not None
        started = time.perf_counter()
        up = False
        try:
            async with asyncio.timeout(backend.health_check.timeout):
                resp = await dep.transport.send(dep.adapter.probe_request(dep.target))
                try:
                    await resp.read()
                finally:
                    await resp.aclose()
                up = 200 <= resp.status < 300
        except (UpstreamError, TimeoutError, OSError) as err:
            log.warning("probe_failed backend=%s error=%s", backend.name, type(err).__name__)
        result = ProbeResult(up, time.perf_counter() - started, time.time())
        self.results[backend.name] = result
        for d in deps:
            d.health.probe_ok = up
        return result

    async def _loop(self, backend: BackendConfig) -> None:
        assert backend.health_check is not None
        while True:
            await self.probe(backend)
            await asyncio.sleep(backend.health_check.interval)

    async def start(self) -> None:
        for backend in self._backends:
            self._tasks.append(
                asyncio.create_task(self._loop(backend), name=f"probe-{backend.name}")
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
