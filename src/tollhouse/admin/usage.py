"""Usage analytics for the API and ``tollhouse usage``: totals and top-N time series.

Numbers come from ``store.analytics`` (the ledger, through its hourly roll-up),
so requests, tokens, cost and errors are exact and equal the Prometheus
counters for the same traffic. Latency percentiles are estimated from the
``llm_request_duration_seconds`` buckets kept per roll-up row, interpolated
within a bucket the way PromQL's ``histogram_quantile`` does, so they match
what a dashboard shows (and share its resolution).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store.analytics import GROUPS, Agg, Query, aggregate
from tollhouse.store.tables import LATENCY_BUCKETS_MS

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=400)
MAX_POINTS = 2000
OTHER = "__other__"
METRICS = ("requests", "tokens", "input_tokens", "output_tokens", "cost", "errors", "latency_p95")
_STEP = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}
PICO = Decimal(10) ** 12


def parse_time(text: str | None, default: datetime) -> datetime:
    """Unix seconds (``1732406400``, ``1732406400.5``) or RFC 3339 (``2024-11-24T00:00:00Z``)."""
    if text is None or text == "":
        return default
    value = _unix(text) or _rfc3339(text)
    if value is None:
        raise ValueError(f"not unix seconds or an RFC 3339 time with an offset: {text[:64]!r}")
    try:
        utc = value.astimezone(UTC)  # an offset can push year 1 or 9999 out of range
    except OverflowError:
        raise ValueError(f"time out of range: {text[:64]!r}") from None
    if not 1970 <= utc.year <= 9000:
        raise ValueError(f"time out of range: {text[:64]!r}")
    return utc


def _unix(text: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _rfc3339(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def window(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)``; the default is the 24 hours before now."""
    stop = parse_time(end, now)
    begin = parse_time(start, stop - DEFAULT_WINDOW)
    if begin >= stop:
        raise ValueError("start must be before end")
    if stop - begin > MAX_WINDOW:
        raise ValueError(f"the window may be at most {MAX_WINDOW.days} days")
    return begin, stop


def parse_step(text: str) -> int:
    """``1m``, ``5m``, ``1h``, ``1d``… in seconds."""
    match = _STEP.fullmatch(text)
    if match is None:
        raise ValueError(
            f"step must be a number followed by m, h or d (e.g. 1h), not {text[:32]!r}"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def quantile(q: float, total: int, cumulative: list[int]) -> float | None:
    """Milliseconds at quantile ``q`` of ``total`` observations from cumulative bucket counts
    (``le`` each of ``LATENCY_BUCKETS_MS``), interpolated as ``histogram_quantile`` does."""
    if total == 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for upper, count in zip(LATENCY_BUCKETS_MS, cumulative, strict=True):
        if count >= rank:
            if count == below:
                return float(upper)
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = float(upper), count
    return float(LATENCY_BUCKETS_MS[-1])  # in the +Inf bucket: the highest finite bound


class Tokens(BaseModel):
    input: int
    output: int
    cached_input: int
    cache_write_input: int
    reasoning: int


class Latency(BaseModel):
    avg_ms: float | None
    p50_ms: float | None = Field(description="estimated from the latency histogram buckets")
    p95_ms: float | None = Field(description="estimated from the latency histogram buckets")


class UsageTotals(BaseModel):
    start: datetime
    end: datetime
    filters: dict[str, str]
    requests: int
    successes: int
    errors: int
    cancelled: int
    success_rate: float | None
    errors_by_type: dict[str, int]
    tokens: Tokens
    cost_usd: str = Field(description="exact decimal string (priced requests only)")
    unpriced_requests: int
    latency: Latency
    avg_ttft_ms: float | None
    last_request_at: datetime | None


def cost_usd(agg: Agg) -> Decimal:
    return Decimal(agg.cost_pusd) / PICO


def p(q: float, agg: Agg) -> float | None:
    return quantile(q, agg.get("duration_count"), agg.latency_le)


def totals_of(agg: Agg, start: datetime, end: datetime, filters: Mapping[str, str]) -> UsageTotals:
    ok = agg.outcomes.get("success", 0)
    durations, ttfts = agg.get("duration_count"), agg.get("ttft_count")
    return UsageTotals(
        start=start, end=end, filters=dict(filters), requests=agg.requests, successes=ok,
        errors=agg.outcomes.get("error", 0), cancelled=agg.outcomes.get("cancelled", 0),
        success_rate=ok / agg.requests if agg.requests else None,
        errors_by_type=dict(sorted(agg.errors_by_type.items())), tokens=Tokens(**agg.tokens),
        cost_usd=str(cost_usd(agg)), unpriced_requests=agg.get("unpriced"),
        latency=Latency(
            avg_ms=agg.sum("duration_ms_sum") / durations if durations else None,
            p50_ms=p(0.5, agg), p95_ms=p(0.95, agg),
        ),
        avg_ttft_ms=agg.sum("ttft_ms_sum") / ttfts if ttfts else None,
        last_request_at=agg.last_ts,
    )  # fmt: skip


async def totals(
    engine: AsyncEngine, start: datetime, end: datetime, filters: Mapping[str, str]
) -> UsageTotals:
    parts = await aggregate(engine, Query(start, end, dict(filters), by_error_type=True))
    agg = Agg()
    for part in parts.values():
        agg.merge(part)
    return totals_of(agg, start, end, filters)


class Series(BaseModel):
    group: str
    total: float | None = Field(description="the metric over the whole window")
    values: list[float | None] = Field(description="one per timestamp")


class UsageSeries(BaseModel):
    metric: str
    step: str
    start: datetime
    end: datetime
    group_by: str | None
    filters: dict[str, str]
    timestamps: list[datetime] = Field(description="the start of each step, aligned to the step")
    series: list[Series]


# The sums each metric needs ("requests" first: it marks a non-empty row and ranks latency).
NEEDS: dict[str, tuple[str, ...]] = {
    "requests": ("requests",),
    "tokens": ("requests", "input", "output"),
    "input_tokens": ("requests", "input"),
    "output_tokens": ("requests", "output"),
    "cost": ("requests", "cost_hi", "cost_lo"),
    "errors": ("requests", "error"),
    "latency_p95": ("requests", "duration_count", *(f"lat_le_{b}" for b in LATENCY_BUCKETS_MS)),
}


def value(metric: str, agg: Agg | None) -> float | None:
    if agg is None:
        return None if metric == "latency_p95" else 0.0
    if metric == "requests":
        return float(agg.requests)
    if metric == "tokens":
        return float(agg.get("input") + agg.get("output"))
    if metric in ("input_tokens", "output_tokens"):
        return float(agg.get(metric.removesuffix("_tokens")))
    if metric == "cost":
        return float(cost_usd(agg))
    if metric == "errors":
        return float(agg.get("error"))
    return p(0.95, agg)


def _buckets(start: datetime, end: datetime, step: int) -> list[int]:
    first = int(start.timestamp()) // step * step
    return list(range(first, int(end.timestamp()), step))


async def series(engine: AsyncEngine, metric: str, start: datetime, end: datetime, step: str,
                 group_by: str | None, top: int, filters: Mapping[str, str]) -> UsageSeries:  # fmt: skip
    """``metric`` per step, the ``top`` groups by their window total and the rest as ``__other__``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    if group_by is not None and group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    seconds = parse_step(step)
    stamps = _buckets(start, end, seconds)
    if len(stamps) > MAX_POINTS:
        raise ValueError(
            f"too many points ({len(stamps)}); use a larger step (at most {MAX_POINTS})"
        )
    fields = NEEDS[metric]
    query = Query(start, end, dict(filters), group_by, seconds, fields=fields)
    per_group: dict[str, dict[int, Agg]] = {}
    for (t, g), agg in (await aggregate(engine, query)).items():
        per_group.setdefault(g or "all", {})[int(t or 0)] = agg
    totals = {g: _total(fields, points) for g, points in per_group.items()}
    rank = {g: float(a.requests) if metric == "latency_p95" else value(metric, a) or 0.0
            for g, a in totals.items()}  # fmt: skip
    ranked = sorted(per_group, key=lambda g: (-rank[g], g))
    keep, rest = ranked[:top], ranked[top:]
    if rest:
        other: dict[int, Agg] = {}
        for g in rest:
            for t, agg in per_group[g].items():
                other.setdefault(t, Agg(fields)).merge(agg)
        per_group[OTHER], totals[OTHER] = other, _total(fields, other)
        keep.append(OTHER)
    out = [Series(group=g, total=value(metric, totals[g]),
                  values=[value(metric, per_group[g].get(t)) for t in stamps]) for g in keep]  # fmt: skip
    return UsageSeries(
        metric=metric, step=step, start=start, end=end, group_by=group_by, filters=dict(filters),
        timestamps=[datetime.fromtimestamp(t, UTC) for t in stamps], series=out,
    )  # fmt: skip


def _total(fields: tuple[str, ...], points: Mapping[int, Agg]) -> Agg:
    whole = Agg(fields)
    for agg in points.values():
        whole.merge(agg)
    return whole
