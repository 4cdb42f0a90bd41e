"""The admin side's background tasks: folding the ledger into roll-ups, probing loop lag.

Both are owned by ``AdminRuntime`` (started and stopped by the app's
lifespan). Neither can fail a request: errors are logged and retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store import rollup
from tollhouse.tasks import cancel_and_wait

log = logging.getLogger("tollhouse.admin")


class Folder:
    """Folds new ledger rows into ``ledger_hourly`` every ``interval`` seconds.

    On PostgreSQL a ledger id is folded only once it has been visible for
    ``settle`` seconds: several replicas insert concurrently, and an id can
    commit after a higher one; waiting keeps it from landing behind the
    watermark. SQLite has one writer at a time, so ids commit in order.
    """

    def __init__(self, engine: AsyncEngine, interval: float, settle: float) -> None:
        self._engine = engine
        self._interval = interval
        self._settle = settle if engine.dialect.name == "postgresql" else 0.0
        self._seen: deque[tuple[float, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.folded_total = 0

    async def start(self) -> None:
        """Prepare the fold's statements (off the serving path), then fold in the background."""
        try:
            await rollup.prepare(self._engine)
        except Exception as err:  # only an optimisation: the first fold compiles them then
            log.warning("rollup_prepare_failed error=%s", type(err).__name__)
        self._task = asyncio.create_task(self._run(), name="rollup-folder")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def fold_once(self) -> int:
        """Fold what has settled; returns how many ids the watermark moved."""
        up_to = await self._settled() if self._settle else None  # SQLite: all there is
        moved = 0
        while True:
            step = await rollup.fold(self._engine, up_to=up_to)
            moved += step
            if step < rollup.DEFAULT_BATCH:  # a short batch reached the end: nothing is left
                break
        self.folded_total += moved
        return moved

    async def _settled(self) -> int:
        """The newest ledger id that has been visible for ``settle`` seconds (0: none yet)."""
        now = time.monotonic()
        self._seen.append((now, await rollup.newest_id(self._engine)))
        up_to = 0
        while self._seen and self._seen[0][0] <= now - self._settle:
            up_to = self._seen.popleft()[1]
        if up_to:
            self._seen.appendleft((now - self._settle, up_to))  # still the newest settled id
        return up_to

    async def _run(self) -> None:
        while True:
            try:
                await self.fold_once()
                self.last_error = None
            except Exception as err:  # the store may be down: report and try again later
                self.last_error = type(err).__name__
                log.warning("rollup_fold_failed error=%s", type(err).__name__)
            await asyncio.sleep(self._interval)


class LagProbe:
    """Event-loop lag: how late a ``sleep(interval)`` wakes up, measured continuously."""

    def __init__(self, interval: float, report: Callable[[float], None]) -> None:
        self._interval = interval
        self._report = report
        self._task: asyncio.Task[None] | None = None
        self.lag = 0.0
        self.max_lag = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._interval)
            self.lag = max(0.0, loop.time() - before - self._interval)
            self.max_lag = max(self.max_lag, self.lag)
            self._report(self.lag)


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None
