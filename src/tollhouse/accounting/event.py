"""The UsageEvent: one record per client request, never changed once built.

It is the single source of truth: the metrics recorder, the access log, the
ledger and the limiter settlement all consume the same event and none of them
recomputes tokens or cost.

``UsageEvent`` and ``Attempt`` are immutable by convention, not enforced: a
frozen dataclass sets each field through ``object.__setattr__``, which made
building the 30-field event cost ~3 µs, the largest single item of a library-mode
call (``bench/instrument_bench.py``). Never assign to a field, since every sink
holds the same instance; build a new one with ``dataclasses.replace``. They stay
hashable by value, as they were when frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType

NONE = "none"  # label value for a dimension the request never reached (e.g. no backend)


class Outcome(StrEnum):
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"


class TokenSource(StrEnum):
    REPORTED = "reported"
    ESTIMATED = "estimated"


@dataclass(slots=True, unsafe_hash=True)
class Attempt:
    """One upstream call made for a request (retries and fallbacks make several).

    Immutable by convention (see the module docstring)."""

    model: str  # the public model (group) this attempt served
    backend: str
    provider: str
    upstream_model: str
    error_type: ErrorType | None  # None: the call succeeded
    duration: float
    retried: bool  # another attempt in the same group followed this one


@dataclass(slots=True, unsafe_hash=True)
class UsageEvent:
    """What one request did and cost. Immutable by convention (see the module docstring)."""

    request_id: str
    started_at: float  # unix seconds
    operation: str  # "chat" | "embeddings"
    model: str  # public model name, or NONE
    backend: str
    provider: str
    upstream_model: str
    key: str  # key alias (never the raw key); "anonymous" without auth
    team: str
    user: str
    end_user: str
    stream: bool
    outcome: Outcome
    status: int
    error_type: ErrorType | None
    usage: Usage
    token_source: TokenSource
    cost: Decimal | None  # None: the model has no known price
    price_source: str | None
    duration: float  # seconds, whole request as the gateway saw it
    upstream_duration: float | None
    overhead: float  # gateway's own time (duration minus time spent waiting on the upstream)
    ttft: float | None  # streams: time to first content chunk, from request start
    ratelimit_remaining_requests: float | None = None
    ratelimit_remaining_tokens: float | None = None
    attempts: tuple[Attempt, ...] = ()
    fallbacks: tuple[tuple[str, str], ...] = ()  # (from model, to model), in order
    cache: str = "off"  # "hit", "miss" or "off"
    saved_usage: Usage | None = None  # a cache hit: what the original call used
    saved_cost: Decimal | None = None

    @property
    def status_class(self) -> str:
        return f"{self.status // 100}xx"

    @property
    def time_per_output_token(self) -> float | None:
        """Seconds per generated token after the first (streams with 2+ tokens only)."""
        if self.ttft is None or self.usage.output < 2:
            return None
        return max(0.0, self.duration - self.ttft) / (self.usage.output - 1)


Sink = Callable[[UsageEvent], None]


class Sinks:
    """Fans one event out to every sink; a failing sink is logged, never fatal."""

    def __init__(self, sinks: Sequence[Sink], on_error: Callable[[Sink, Exception], None]) -> None:
        self._sinks = tuple(sinks)
        self._on_error = on_error

    def emit(self, event: UsageEvent) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception as err:  # a broken sink must not fail a served request
                self._on_error(sink, err)
