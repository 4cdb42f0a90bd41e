"""The metrics sink: one UsageEvent in, every traffic metric updated from it.

Nothing here computes tokens or cost; it only reads the event.

It runs once per request in the gateway and once per call in library mode, so
its own cost matters. ``labels()`` on a prometheus_client metric validates and
locks on every call, and one event touches about a dozen series. Label values
are bounded (config names and closed enums), so the series an event touches
are bound once per label combination and kept together: one dictionary lookup
finds the request's ``_Request`` bundle, one more per upstream attempt its
``_Attempt`` bundle, and their series update through prometheus_client's own
value objects (``tollhouse.metrics.series``). A series is still created only
when it first gets a value, so a bundle binds each series on first use.

Two threads may build a bundle for the same labels at once; both bind the
same prometheus_client children (``labels()`` returns the existing child), so
the duplicate is harmless and the last one stays in the cache.
"""

from __future__ import annotations

import threading
from typing import Any
from weakref import WeakKeyDictionary

from tollhouse.accounting.event import Attempt, Outcome, TokenSource, UsageEvent
from tollhouse.errors import ErrorType
from tollhouse.metrics.registry import Metrics
from tollhouse.metrics.series import Add, Observe, adder, observer

_TOKEN_TYPES = ("input", "output", "cached_input", "cache_write_input", "reasoning")
NEGATIVE = "counters only go up: negative amount"  # what Counter.inc refuses, refused here

# What a request's series depend on beyond its traffic labels; see ``MetricsRecorder._request``.
RequestKey = tuple[str, str, str, str, str, Outcome, int, ErrorType | None, bool, TokenSource]
AttemptKey = tuple[str, str, str, ErrorType | None, bool]


class _Request:
    """The series of one label combination of a request, bound on first use."""

    __slots__ = (
        "cost",
        "duration",
        "errors",
        "overhead",
        "requests",
        "tokens",
        "tpot",
        "ttft",
        "unpriced",
    )

    def __init__(self, requests: Add, duration: Observe, overhead: Observe) -> None:
        self.requests = requests
        self.duration = duration
        self.overhead = overhead
        self.ttft: Observe | None = None
        self.tpot: Observe | None = None
        self.errors: Add | None = None
        self.tokens: list[Add | None] = [None] * len(_TOKEN_TYPES)
        self.cost: Add | None = None
        self.unpriced: Add | None = None


class _Attempt:
    """The series of one upstream attempt's label combination."""

    __slots__ = ("duration", "requests", "retries")

    def __init__(self, requests: Add, duration: Observe) -> None:
        self.requests = requests
        self.duration = duration
        self.retries: Add | None = None


class MetricsRecorder:
    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._lock = write_lock(metrics)
        self._requests: dict[RequestKey, _Request] = {}
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """A bound child of a series updated rarely (fallbacks, cache, rate-limit gauges)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def __call__(self, event: UsageEvent) -> None:
        key = (
            event.model,
            event.backend,
            event.provider,
            event.key,
            event.team,
            event.outcome,
            event.status,
            event.error_type,
            event.stream,
            event.token_source,
        )
        bundle = self._requests.get(key)
        if bundle is None:
            bundle = self._requests[key] = self._request(key)
        with self._lock:  # every series bound with caller_locked=True is written under it
            bundle.requests(1.0)
            bundle.duration(event.duration)
            bundle.overhead(event.overhead)
            for attempt in event.attempts:
                self._attempt(attempt)
            ttft = event.ttft
            if ttft is not None:
                (bundle.ttft or self._ttft(bundle, key))(ttft)
                tpot = event.time_per_output_token
                if tpot is not None:
                    (bundle.tpot or self._tpot(bundle, key))(tpot)
            if event.error_type is not None and event.outcome is Outcome.ERROR:
                (bundle.errors or self._errors(bundle, key))(1.0)
            usage = event.usage
            if usage.input:
                self._tokens(bundle, key, 0, usage.input)
            if usage.output:
                self._tokens(bundle, key, 1, usage.output)
            if usage.cached_input:
                self._tokens(bundle, key, 2, usage.cached_input)
            if usage.cache_write_input:
                self._tokens(bundle, key, 3, usage.cache_write_input)
            if usage.reasoning:
                self._tokens(bundle, key, 4, usage.reasoning)
            cost = event.cost
            if cost is not None:
                if cost:
                    amount = float(cost)
                    if amount < 0:
                        raise ValueError(NEGATIVE)
                    (bundle.cost or self._cost(bundle, key))(amount)
            elif usage.input or usage.output:
                (bundle.unpriced or self._unpriced(bundle, key))(1.0)
        if event.fallbacks or event.cache != "off" or event.saved_usage is not None:
            self._routing(event)
        if event.ratelimit_remaining_requests is not None:
            self._child(self._m.ratelimit_requests, event.backend, event.upstream_model).set(
                event.ratelimit_remaining_requests
            )
        if event.ratelimit_remaining_tokens is not None:
            self._child(self._m.ratelimit_tokens, event.backend, event.upstream_model).set(
                event.ratelimit_remaining_tokens
            )

    def _attempt(self, a: Attempt) -> None:
        """One upstream call of the request: one sample each (no double counting of the
        request itself, which ``llm_requests_total`` counts once)."""
        key = (a.model, a.backend, a.provider, a.error_type, a.retried)
        bundle = self._attempts.get(key)
        if bundle is None:
            bundle = self._attempts[key] = self._bind_attempt(key)
        bundle.requests(1.0)
        bundle.duration(a.duration)
        if a.retried:
            if bundle.retries is None:
                kind = a.error_type.value if a.error_type is not None else "none"
                bundle.retries = adder(self._m.retries.labels(a.backend, kind), caller_locked=True)
            bundle.retries(1.0)

    def _routing(self, event: UsageEvent) -> None:
        """Fallbacks and the response cache: gateway-only and rarer, so bound per use."""
        m, child = self._m, self._child
        for origin, target in event.fallbacks:
            child(m.fallbacks, origin, target, event.outcome.value).inc()
        if event.cache != "off":
            child(m.cache_requests, event.model, event.cache).inc()
        saved = event.saved_usage
        if saved is not None:
            for kind in _TOKEN_TYPES:
                count = getattr(saved, kind)
                if count:
                    child(m.cache_saved_tokens, event.model, kind).inc(count)
            if event.saved_cost:
                child(m.cache_saved_cost, event.model).inc(float(event.saved_cost))

    # -- binding a bundle's series (first use of a label combination) -----------------

    def _request(self, key: RequestKey) -> _Request:
        outcome, status, stream = key[5], key[6], key[8]
        flag = "true" if stream else "false"
        m = self._m
        return _Request(
            adder(
                m.requests.labels(*key[:5], outcome.value, f"{status // 100}xx"), caller_locked=True
            ),
            observer(m.request_duration.labels(*key[:3], outcome.value, flag), caller_locked=True),
            observer(m.overhead.labels(flag), caller_locked=True),
        )

    def _bind_attempt(self, key: AttemptKey) -> _Attempt:
        error_type = key[3]
        kind = error_type.value if error_type is not None else "none"
        outcome = "success" if error_type is None else "error"
        m = self._m
        return _Attempt(
            adder(m.upstream_requests.labels(*key[:3], outcome, kind), caller_locked=True),
            observer(m.upstream_duration.labels(*key[:3]), caller_locked=True),
        )

    def _ttft(self, bundle: _Request, key: RequestKey) -> Observe:
        bundle.ttft = observer(self._m.ttft.labels(*key[:3]), caller_locked=True)
        return bundle.ttft

    def _tpot(self, bundle: _Request, key: RequestKey) -> Observe:
        bundle.tpot = observer(self._m.tpot.labels(*key[:3]), caller_locked=True)
        return bundle.tpot

    def _errors(self, bundle: _Request, key: RequestKey) -> Add:
        error_type = key[7]
        assert error_type is not None  # only bound for an error with a type
        bundle.errors = adder(self._m.errors.labels(*key[:3], error_type.value), caller_locked=True)
        return bundle.errors

    def _tokens(self, bundle: _Request, key: RequestKey, index: int, count: int) -> None:
        if count < 0:
            raise ValueError(NEGATIVE)
        add = bundle.tokens[index]
        if add is None:
            labels = (*key[:5], _TOKEN_TYPES[index], key[9].value)
            add = bundle.tokens[index] = adder(self._m.tokens.labels(*labels), caller_locked=True)
        add(count)

    def _cost(self, bundle: _Request, key: RequestKey) -> Add:
        bundle.cost = adder(self._m.cost.labels(*key[:5]), caller_locked=True)
        return bundle.cost

    def _unpriced(self, bundle: _Request, key: RequestKey) -> Add:
        bundle.unpriced = adder(self._m.unpriced.labels(*key[:3]), caller_locked=True)
        return bundle.unpriced


_write_locks: WeakKeyDictionary[Metrics, threading.Lock] = WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def write_lock(metrics: Metrics) -> threading.Lock:
    """The one lock under which every recorder of ``metrics`` writes its series (two
    recorders of one ``Metrics`` must not write the same series under different locks)."""
    with _write_locks_guard:
        lock = _write_locks.get(metrics)
        if lock is None:
            lock = _write_locks[metrics] = threading.Lock()
        return lock
