"""Scrape-time routing gauges: each deployment's state and how often it cooled down.

Read straight from the router's live health objects when scraped; nothing is
updated per request (routing itself never imports metrics). The scrape runs in a
worker thread (``exposition``) while the loop keeps changing those objects, so every
dict is copied with ``dict.copy()`` before it is walked, and nothing is changed.
``dict.copy()`` allocates no object per entry, so no garbage collection (whose
finalizers run Python code, letting the loop's thread in) can start halfway through;
``tuple(d.items())`` builds a tuple per entry and failed that way in CI with
"dictionary changed size during iteration".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tollhouse.metrics import catalog as c
from tollhouse.routing.probes import Prober
from tollhouse.routing.router import Router


class RoutingCollector:
    def __init__(
        self, router: Callable[[], Router | None], prober: Callable[[], Prober | None]
    ) -> None:
        self._router = router
        self._prober = prober

    def collect(self) -> Iterator[Metric]:
        router = self._router()
        state = GaugeMetricFamily(c.DEPLOYMENT_STATE.name, c.DEPLOYMENT_STATE.help,
                                  labels=c.DEPLOYMENT_STATE.labels)  # fmt: skip
        cooldowns = CounterMetricFamily(c.COOLDOWNS.name.removesuffix("_total"), c.COOLDOWNS.help,
                                        labels=c.COOLDOWNS.labels)  # fmt: skip
        totals: dict[tuple[str, str], int] = defaultdict(int)
        if router is not None:
            for group in router.groups():
                for dep in group.deployments:
                    t = dep.target
                    state.add_metric([group.name, t.backend, t.upstream_model], dep.health.state())
                    for reason, count in dep.health.cooldowns.copy().items():
                        totals[(t.backend, reason)] += count
        for (backend, reason), count in sorted(totals.items()):
            cooldowns.add_metric([backend, reason], count)
        yield state
        yield cooldowns
        up = GaugeMetricFamily(c.BACKEND_UP.name, c.BACKEND_UP.help, labels=c.BACKEND_UP.labels)
        prober = self._prober()
        if prober is not None:
            for backend, result in sorted(prober.results.copy().items()):
                up.add_metric([backend], 1.0 if result.up else 0.0)
        yield up
