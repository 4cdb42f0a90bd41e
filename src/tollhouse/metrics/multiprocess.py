"""Several workers in one container (``tollhouse serve --workers N``): one ``/metrics``.

Each worker is its own process with its own counters, and a scrape reaches
whichever worker accepts it; exposing per-process values would make every
scrape a random sample. prometheus_client's multi-process mode fixes that: with
``PROMETHEUS_MULTIPROC_DIR`` set before the workers start, every metric writes
to a memory-mapped file per process, and at scrape time ``MultiProcessCollector``
merges the files of all workers:

- counters and histograms are summed (dead workers' counts included, so
  counters never go backwards);
- gauges merge by the mode named in ``GAUGE_MODES``: requests in flight are
  summed over live workers, state-like gauges (build info, loop lag) take the
  maximum over live workers, the upstream's remaining quota takes the most
  recent value any worker saw.

The scrape-time families (budgets, gateway rate limits, deployment state,
cooldowns, the ledger) are not in those files: the worker serving the scrape
computes them from its own view, once, so they are never multiplied by the
number of workers. Budgets and rate limits read the shared counters (Redis)
and are therefore exact; deployment state, cooldowns and the ledger backlog
are the serving worker's own (each worker routes and writes its ledger
independently), which ``docs/monitoring.md`` says.

The directory must be emptied before the workers start: files left by a
previous run would be added to this run's counters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from tollhouse.metrics.catalog import CATALOG

ENV = "PROMETHEUS_MULTIPROC_DIR"

GaugeMode = Literal["livesum", "livemax", "livemostrecent"]
GAUGE_MODES: dict[str, GaugeMode] = {
    "llm_requests_in_flight": "livesum",
    "llm_upstream_ratelimit_remaining_requests": "livemostrecent",
    "llm_upstream_ratelimit_remaining_tokens": "livemostrecent",
}

# Families created per request (and so in the per-process files), by exposition name:
# prometheus_client names a counter's family without its ``_total`` suffix.
_LIVE = frozenset(s.name.removesuffix("_total") for s in CATALOG if not s.scrape_time)


def gauge_mode(name: str) -> GaugeMode:
    """How the workers' values of gauge ``name`` merge (unlisted gauges: max of live ones)."""
    return GAUGE_MODES.get(name, "livemax")


def directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """The multi-process directory when multi-process mode is on, else ``None``."""
    value = (os.environ if environ is None else environ).get(ENV)
    return Path(value) if value else None


def prepare(path: Path) -> None:
    """Create ``path`` and delete what a previous run left there (before any worker starts)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def worker_exited(path: Path, pid: int | None = None) -> None:
    """Drop a worker's live gauges (its in-flight count) once it is gone."""
    mark_process_dead(os.getpid() if pid is None else pid, str(path))  # type: ignore[no-untyped-call]


class ScrapeTimeOnly:
    """The app registry's scrape-time families only (per-request ones come from the files)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.name not in _LIVE:
                yield family


def exposition_registry(app_registry: CollectorRegistry, path: Path) -> CollectorRegistry:
    """A registry merging every worker's files, plus this worker's scrape-time families."""
    merged = CollectorRegistry()
    MultiProcessCollector(merged, str(path))  # type: ignore[no-untyped-call]
    merged.register(ScrapeTimeOnly(app_registry))
    return merged
