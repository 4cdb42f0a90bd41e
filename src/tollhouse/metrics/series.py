"""One bound Prometheus series, updated through the value objects its child writes.

A bound child's public ``inc()``/``observe()`` re-checks on every call that the
metric is labelled, whether it is a ``mostrecent`` gauge and whether an exemplar
came along — three or four Python calls before the value moves — and a
histogram finds its bucket by a linear scan. The recorder updates about a dozen
series per event, so those checks were a large part of its cost. Here a series
is reduced once, when it is bound, to the value objects the child itself
writes: ``MutexValue``, or ``MmapedValue`` in multiprocess mode. What is stored,
and what a scrape reads, stays prometheus_client's.

The checks skipped are the ones that cannot fail for the catalog's series:
children are always labelled, the gauges bound here are never ``mostrecent``
ones, and no exemplars are used. The one check that can fail, a negative
counter increment, is the caller's to make.

Locking. Each ``MutexValue`` takes its own lock on every update, and a lock
round trip (``with lock:`` plus the call) is the most expensive part of an
update, ~0.2 µs. A caller that already serialises every write to a series
under one lock of its own (the recorder: one lock per ``Metrics``, taken once
per event) passes ``caller_locked=True`` and gets a plain ``+=`` on the value
instead. That is safe because a ``MutexValue``'s lock only orders its writers:
its reader (``get()``, at scrape) sees the float before or after an update,
never a torn one, and every writer of such a series holds the caller's lock.
A multiprocess ``MmapedValue`` must also write its file, so it always goes
through its own ``inc()``. Anything else unexpected (a prometheus_client that
lays its children out differently) falls back to the public methods.
``tests/test_metrics_series.py`` checks that every path stores the same numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.values import MutexValue

Add = Callable[[float], None]  # add to a counter or gauge
Observe = Callable[[float], None]  # observe into a histogram
INF = float("inf")


def adder(child: Any, *, caller_locked: bool = False) -> Add:
    """What ``child.inc(amount)`` does, for a bound counter or gauge child.

    For a counter, the caller refuses negative amounts, as ``Counter.inc`` would.
    """
    return _value_adder(getattr(child, "_value", None), caller_locked) or public_inc(child)


def observer(child: Any, *, caller_locked: bool = False) -> Observe:
    """What ``child.observe(amount)`` does, for a bound histogram child."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = _value_adder(getattr(child, "_sum", None), caller_locked)
    if (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and len(bounds) == len(buckets) > 0
        and bounds[-1] == INF
        and total is not None
    ):
        adds = [a for a in (_value_adder(b, caller_locked) for b in buckets) if a is not None]
        if len(adds) == len(buckets):
            return _Histogram(bounds, adds, total).observe
    return public_observe(child)


def public_inc(child: Any) -> Add:
    """The public path, used when the child's layout is not the expected one."""
    inc: Add = child.inc
    return inc


def public_observe(child: Any) -> Observe:
    """The public path, used when the child's layout is not the expected one."""
    observe: Observe = child.observe
    return observe


def _value_adder(value: Any, caller_locked: bool) -> Add | None:
    """How to add to one prometheus_client value object; ``None`` if it is not one."""
    if caller_locked and type(value) is MutexValue and isinstance(value._value, float):
        return _unlocked(value)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else None


def _unlocked(value: Any) -> Add:
    """``value.inc`` without taking ``value``'s lock: for writers under one lock of their own."""

    def add(amount: float) -> None:
        value._value += amount

    return add


class _Histogram:
    """A histogram child's sum and buckets, as the value objects that store them."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: Sequence[float], buckets: Sequence[Add], total: Add) -> None:
        self._bounds = tuple(bounds)  # ascending, the last one +Inf
        self._buckets = tuple(buckets)
        self._sum = total

    def observe(self, amount: float) -> None:
        """What ``Histogram.observe`` does: add to the sum and count the observation in
        the first bucket whose upper bound is at least ``amount``.

        Since the last bound is +Inf, ``bisect_left`` always lands on that bucket,
        except for NaN (index 0, where the comparison fails: no bucket, as upstream).
        Adding zero leaves the sum unchanged, so that update is skipped (library
        mode observes a zero gateway overhead on every call).
        """
        if amount:
            self._sum(amount)
        i = bisect_left(self._bounds, amount)
        if amount <= self._bounds[i]:
            self._buckets[i](1.0)
