"""The recorder's fast series updates store exactly what prometheus_client's own methods do."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tollhouse.metrics.series import adder, observer

BUCKETS = (0.005, 0.01, 0.1, 1.0, 10.0)
AMOUNTS = (0.0, 0.005, 0.0050001, 0.01, 0.5, 1.0, 3.0, 10.0, 11.0, 1e9, 0.25)


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], str]]:
    """Every sample but the ``_created`` timestamps (which differ between registries)."""
    return [
        (s.name, s.labels, repr(s.value))  # repr: NaN equals NaN
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    ]


def _metrics(registry: CollectorRegistry) -> tuple[Any, Any, Any]:
    return (
        Counter("c", "c", ["a"], registry=registry),
        Gauge("g", "g", ["a"], registry=registry),
        Histogram("h", "h", ["a"], buckets=BUCKETS, registry=registry),
    )


@pytest.mark.parametrize("caller_locked", [False, True])
def test_fast_updates_expose_exactly_what_the_public_methods_do(caller_locked: bool) -> None:
    public, fast = CollectorRegistry(), CollectorRegistry()
    (pc, pg, ph), (fc, fg, fh) = _metrics(public), _metrics(fast)
    inc_c = adder(fc.labels("x"), caller_locked=caller_locked)
    inc_g = adder(fg.labels("x"), caller_locked=caller_locked)
    obs = observer(fh.labels("x"), caller_locked=caller_locked)
    for amount in AMOUNTS:
        pc.labels("x").inc(amount)
        inc_c(amount)
        pg.labels("x").inc(-amount)
        inc_g(-amount)
        ph.labels("x").observe(amount)
        obs(amount)
    assert samples(fast) == samples(public)


def test_nan_counts_in_no_bucket_as_upstream() -> None:
    public, fast = CollectorRegistry(), CollectorRegistry()
    ph, fh = _metrics(public)[2], _metrics(fast)[2]
    ph.labels("x").observe(math.nan)
    observer(fh.labels("x"))(math.nan)
    assert samples(fast) == samples(public)


def test_a_child_with_an_unknown_layout_gets_the_public_methods() -> None:
    class Child:
        def __init__(self) -> None:
            self.seen: list[tuple[str, float]] = []

        def inc(self, amount: float) -> None:
            self.seen.append(("inc", amount))

        def observe(self, amount: float) -> None:
            self.seen.append(("observe", amount))

    child = Child()
    adder(child)(2.0)
    observer(child)(0.5)
    assert child.seen == [("inc", 2.0), ("observe", 0.5)]


def test_threads_writing_under_their_own_lock_lose_no_update() -> None:
    """``caller_locked`` skips the value's lock; one shared lock keeps the sums exact."""
    registry = CollectorRegistry()
    counter, _, histogram = _metrics(registry)
    add = adder(counter.labels("x"), caller_locked=True)
    obs = observer(histogram.labels("x"), caller_locked=True)
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20_000):
            with lock:
                add(1.0)
                obs(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.get_sample_value("c_total", {"a": "x"}) == 80_000
    assert registry.get_sample_value("h_count", {"a": "x"}) == 80_000
    assert registry.get_sample_value("h_sum", {"a": "x"}) == 40_000
