"""``Instrumentation``: the gateway's sinks, owned by an application instead of a gateway.

One object holds what every instrumented call needs: the catalog's metrics on
a registry (prometheus_client's global ``REGISTRY`` unless the user passes
one), the ``MetricsRecorder`` the gateway uses, resolved prices, the
in-flight gauge children and any extra sinks (the OpenTelemetry exporter, a
user callback). Calls hand it finished ``UsageEvent``s; nothing here knows an
SDK.

The hot path is kept to dictionary lookups: a price is resolved once per
(client, model) — a genai-prices lookup costs ~180 µs — and kept on the
client's ``Site``; the recorder keeps its bound label children.

Finished calls are queued and recorded in batches by a background thread
(``tollhouse.instrument.drain`` says why); every scrape drains the queue
first (a collector registered ahead of the catalog), so what Prometheus reads
is always exact, and ``flush()`` drains on demand. Streams abandoned without
``close()`` are finished from ``__del__``, which may run inside the garbage
collector while this very thread holds a lock, so they only append to the
queue and wait for the next batch.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric

from tollhouse.accounting.event import NONE, Sink, Sinks
from tollhouse.accounting.pricing import (
    Price,
    PriceBook,
    price_from_config,
    price_from_genai_prices,
)
from tollhouse.config.schema import DEFAULT_PRICE_PROVIDER, Prices
from tollhouse.instrument.drain import drainer
from tollhouse.metrics.recorder import MetricsRecorder
from tollhouse.metrics.registry import Metrics
from tollhouse.metrics.series import Add, adder

if TYPE_CHECKING:
    from tollhouse.instrument.call import Call, Ending
    from tollhouse.instrument.tracker import Tracker

log = logging.getLogger("tollhouse.instrument")
MAX_PENDING = 10_000  # queued calls before a caller records the batch itself
C = TypeVar("C")
PriceSpec = Prices | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Site:
    """Where an instrumented client's calls go: its fixed labels and price settings."""

    provider: str
    backend: str
    key: str = NONE
    team: str = NONE
    price_provider: str | None = None
    prices: Prices | None = None  # one price for every model of the client
    model_prices: tuple[tuple[str, Prices], ...] = ()  # per-model prices, checked first
    # Resolved prices by model. Kept on the site so the hot path never hashes the site.
    resolved: dict[str, Price | None] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )


def site(
    provider: str,
    backend: str,
    *,
    key: str = NONE,
    team: str = NONE,
    prices: PriceSpec | Mapping[str, PriceSpec] | None = None,
    price_provider: str | None = None,
) -> Site:
    """Build a ``Site`` from user-facing options (see ``tollhouse.instrument``)."""
    flat, per_model = _parse_prices(prices)
    if price_provider is None:
        price_provider = DEFAULT_PRICE_PROVIDER.get(provider, provider)
    return Site(provider, backend, key, team, price_provider, flat, per_model)


def _parse_prices(
    prices: PriceSpec | Mapping[str, PriceSpec] | None,
) -> tuple[Prices | None, tuple[tuple[str, Prices], ...]]:
    """``prices`` is one price (``Prices`` or ``{"input": ..., "output": ...}``) or a
    mapping of model name → price."""
    if prices is None:
        return None, ()
    if isinstance(prices, Prices):
        return prices, ()
    if all(isinstance(v, Prices | Mapping) for v in prices.values()):
        return None, tuple(sorted((m, _to_prices(v)) for m, v in prices.items()))
    return _to_prices(prices), ()


def _to_prices(value: PriceSpec) -> Prices:
    return value if isinstance(value, Prices) else Prices.model_validate(dict(value))


class _Drain:
    """A collector with no metrics of its own: it finishes abandoned calls before a scrape."""

    def __init__(self, inst: Instrumentation) -> None:
        self._inst = inst

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self._inst.flush()
        return ()


class Instrumentation:
    """The metrics, prices and sinks that instrumented clients and ``track()`` record into.

    Build one per registry (a registry can hold the catalog only once); the
    module-level ``tollhouse.instrument``/``tollhouse.track`` share one on the
    global ``REGISTRY``.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, sinks: Sequence[Sink] = ()
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self._pending: deque[tuple[Call, Ending | None]] = (
            deque()
        )  # None: discarded  # append/popleft: thread-safe
        self._started: deque[Call] = deque()  # calls the in-flight gauge has not counted
        self.started = self._started.append  # what a new Call runs: one append, no lock
        self._scheduled = False  # the drainer will flush this instance soon
        self.registry.register(_Drain(self))  # registered before the catalog: drains first
        self.metrics = Metrics(self.registry)
        self.recorder = MetricsRecorder(self.metrics)
        self.prices = PriceBook()
        self._sink_list: list[Sink] = [self.recorder, *sinks]
        self._sinks = Sinks(self._sink_list, self._sink_failed)
        self._sites: dict[Site, Site] = {}
        self._gauges: dict[str, Add] = {}

    def add_sink(self, sink: Sink) -> None:
        """Send every future event to ``sink`` too (e.g. ``OTelExporter`` or a log line)."""
        self._sink_list.append(sink)
        self._sinks = Sinks(self._sink_list, self._sink_failed)

    def _sink_failed(self, sink: Sink, err: Exception) -> None:
        name = getattr(sink, "name", type(sink).__name__)
        self.metrics.sink_errors.labels(name).inc()
        log.error("sink_failed sink=%s error=%s", name, type(err).__name__, exc_info=err)

    def queue(self, call: Call, ending: Ending | None, deferred: bool = False) -> None:
        """Queue a finished call for the next batch (see ``tollhouse.instrument.drain``).

        ``deferred`` (a finalizer, possibly inside the garbage collector) only
        appends: waking the drainer takes locks. The call is then recorded by
        the next call's batch, the next scrape or ``flush()``.
        """
        pending = self._pending
        pending.append((call, ending))
        if deferred:
            return
        if not self._scheduled:
            self._scheduled = True
            drainer.schedule(self)
        elif len(pending) >= MAX_PENDING:
            self.flush()  # the drainer is falling behind: the caller records its share

    def flush(self) -> None:
        """Record every queued call now (a scrape does this first; so can the caller).

        Calls started since the last flush are counted in flight first, unless they
        have already ended; an ended call leaves the gauge only if it was counted.
        So the gauge a scrape reads is exact whichever thread starts or ends calls
        meanwhile: a call that starts and ends between two flushes is never in it.
        """
        pending, started = self._pending, self._started
        with drainer.lock:
            self._scheduled = False  # a call queued from here on schedules a new batch
            while started:
                call = started.popleft()
                if not call.done:
                    call.counted = True
                    self.in_flight(call.model)(1.0)
            while True:
                try:
                    call, ending = pending.popleft()
                except IndexError:
                    return
                gauge = self.in_flight(call.model)  # binds the series: 0 from the first call
                if call.counted:
                    gauge(-1.0)
                if ending is not None:
                    self._sinks.emit(call.event(ending))

    def in_flight(self, model: str) -> Add:
        """What adds to ``model``'s ``llm_requests_in_flight`` series (bound once)."""
        gauge = self._gauges.get(model)
        if gauge is None:
            gauge = self._gauges[model] = adder(self.metrics.in_flight.labels(model))
        return gauge

    def price(self, where: Site, model: str) -> Price | None:
        """The price of ``model`` at ``where``: per-model override, client override, genai-prices."""
        try:
            return where.resolved[model]
        except KeyError:  # first call for this model: costs nothing after (zero-cost try)
            pass
        override = dict(where.model_prices).get(model, where.prices)
        found: Price | None
        if override is not None:
            found = price_from_config(override)
        elif where.price_provider:
            found = price_from_genai_prices(where.price_provider, model)
        else:
            found = None
        where.resolved[model] = found
        return found

    def intern(self, where: Site) -> Site:
        """The one ``Site`` equal to ``where``, so equal sites share resolved prices
        (``track()`` builds a site per use)."""
        return self._sites.setdefault(where, where)

    def instrument(
        self,
        client: C,
        *,
        backend: str | None = None,
        provider: str | None = None,
        key: str = NONE,
        team: str = NONE,
        prices: PriceSpec | Mapping[str, PriceSpec] | None = None,
        price_provider: str | None = None,
    ) -> C:
        """Instrument an ``openai`` or ``anthropic`` client in place; see ``tollhouse.instrument``."""
        from tollhouse.instrument import clients

        return clients.instrument_client(
            self,
            client,
            backend=backend,
            provider=provider,
            key=key,
            team=team,
            prices=prices,
            price_provider=price_provider,
        )

    def track(
        self,
        *,
        provider: str,
        model: str,
        operation: str = "chat",
        backend: str = NONE,
        stream: bool = False,
        key: str = NONE,
        team: str = NONE,
        prices: PriceSpec | None = None,
        price_provider: str | None = None,
    ) -> Tracker:
        """Time one call made by any client; see ``tollhouse.track``."""
        from tollhouse.instrument.tracker import Tracker

        where = site(
            provider, backend, key=key, team=team, prices=prices, price_provider=price_provider
        )
        return Tracker(self, self.intern(where), operation, model, stream)


_default: Instrumentation | None = None
_default_lock = threading.Lock()


def default_instrumentation() -> Instrumentation:
    """The process-wide instance on prometheus_client's ``REGISTRY`` (created on first use)."""
    global _default  # the one process global: the global registry can hold the catalog once
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Instrumentation()
    return _default
