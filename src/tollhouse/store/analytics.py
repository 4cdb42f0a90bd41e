"""Usage over a time window, from the roll-ups where they can and the ledger where it must.

A window ``[start, end)`` is answered from up to five parts, read in one snapshot:

* whole days inside the window, from ``ledger_daily`` (rows up to the watermark);
* whole hours left over at either end, from ``ledger_hourly``;
* ledger rows above the watermark in those hours (not folded yet);
* the partial hours at both ends, from the ledger (its ``ts`` index).

So counts, tokens and cost are exact for any window whatever the roll-ups'
progress, and a 30-day query reads one roll-up row per active key, model and
outcome per day instead of every request. A filter on one end user reads the
ledger only (end users are not in the roll-ups; ``ix_ledger_end_user_ts``).
Steps that are not whole days (or hours) skip the coarser roll-up.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.store.rollup import HOUR, LEVELS, epoch_bucket, error_key, watermark
from tollhouse.store.tables import LATENCY_BUCKETS_MS, ROLLUP_DIMENSIONS, ledger

# Dimensions a query may filter on, by their API name; all but end_user are in the roll-ups.
FILTERS = {"key": "key_alias", "team": "team", "user": "user", "end_user": "end_user",
           "model": "model", "backend": "backend", "provider": "provider"}  # fmt: skip
GROUPS = ("key", "team", "model", "backend", "provider")
OUTCOMES = ("success", "error", "cancelled")
TOKENS = ("input", "output", "cached_input", "cache_write_input", "reasoning")
_SPLIT = 1_000_000  # cost is summed as micro-USD and remainder: SQLite's SUM stops at 2**63
_LAT = tuple(f"lat_le_{b}" for b in LATENCY_BUCKETS_MS)
INTS = ("requests", *OUTCOMES, *TOKENS, "cost_hi", "cost_lo", "unpriced", "duration_count",
        "ttft_count", *_LAT)  # fmt: skip
_I = {name: i for i, name in enumerate(INTS)}


FLOATS = ("duration_ms_sum", "ttft_ms_sum")
ALL = (*INTS, *FLOATS)


@dataclass
class Agg:
    """Additive usage numbers: merging two ``Agg`` equals aggregating their rows together.

    ``names`` says which sums it carries (all of them for totals; a series asks only for
    what its metric needs, which keeps large series cheap); ``values`` is aligned to it.
    """

    names: tuple[str, ...] = ALL
    values: list[Any] = field(default_factory=list)  # ints (Decimal from PostgreSQL), floats
    errors_by_type: dict[str, int] = field(default_factory=dict)
    last_ts: datetime | None = None

    def __post_init__(self) -> None:
        if not self.values:
            self.values = [0] * len(self.names)

    def add(self, values: Sequence[Any], error_type: str | None, last_ts: Any) -> None:
        """Add one aggregated row: values in ``names`` order, its error type, ``max(ts)``."""
        self.values = list(map(operator.add, self.values, values))
        if error_type and "error" in self.names:
            errors = int(values[self.names.index("error")])
            if errors:
                self.errors_by_type[error_type] = self.errors_by_type.get(error_type, 0) + errors
        self._seen(last_ts)

    def merge(self, other: Agg) -> None:
        self.values = list(map(operator.add, self.values, other.values))
        for k, v in other.errors_by_type.items():
            self.errors_by_type[k] = self.errors_by_type.get(k, 0) + v
        self._seen(other.last_ts)

    def _seen(self, ts: Any) -> None:
        if ts is not None:
            ts = _aware(ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def get(self, name: str) -> int:
        return int(self.values[self.names.index(name)])

    def sum(self, name: str) -> float:
        return float(self.values[self.names.index(name)])

    @property
    def requests(self) -> int:
        return self.get("requests")

    @property
    def outcomes(self) -> dict[str, int]:
        return {o: self.get(o) for o in OUTCOMES}

    @property
    def tokens(self) -> dict[str, int]:
        return {t: self.get(t) for t in TOKENS}

    @property
    def cost_pusd(self) -> int:
        return self.get("cost_hi") * _SPLIT + self.get("cost_lo")

    @property
    def latency_le(self) -> list[int]:
        return [self.get(name) for name in _LAT]


def _aware(value: Any) -> datetime:
    """``max(ts)`` comes back as text on SQLite (aggregates lose the column type)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _zero(expr: Any) -> Any:
    return sa.func.coalesce(expr, 0)


def _last(names: Sequence[str], column: Any) -> Any:
    """The last request's time, for totals only (series skip the per-row datetime parsing)."""
    return sa.func.max(column) if tuple(names) == ALL else sa.null()


def _ledger_values(names: Sequence[str]) -> list[Any]:
    c = ledger.c
    cost, duration = c.cost_pusd, c.duration_ms
    unpriced = sa.and_(cost.is_(None), sa.or_(c.input_tokens > 0, c.output_tokens > 0))
    exprs: dict[str, Any] = {
        "requests": sa.func.count(),
        **{o: sa.func.sum(sa.case((c.outcome == o, 1), else_=0)) for o in OUTCOMES},
        **{t: _zero(sa.func.sum(c[f"{t}_tokens"])) for t in TOKENS},
        "cost_hi": _zero(sa.func.sum(cost // _SPLIT)),
        "cost_lo": _zero(sa.func.sum(cost % _SPLIT)),
        "unpriced": sa.func.sum(sa.case((unpriced, 1), else_=0)),
        "duration_count": sa.func.count(duration), "ttft_count": sa.func.count(c.ttft_ms),
        **{f"lat_le_{b}": sa.func.sum(sa.case((duration <= b, 1), else_=0))
           for b in LATENCY_BUCKETS_MS},
        "duration_ms_sum": _zero(sa.func.sum(duration)),
        "ttft_ms_sum": _zero(sa.func.sum(c.ttft_ms)),
    }  # fmt: skip
    return [exprs[n] for n in names] + [_last(names, c.ts)]


def _rollup_values(t: Any, names: Sequence[str]) -> list[Any]:
    exprs: dict[str, Any] = {
        "requests": sa.func.sum(t.requests),
        **{o: sa.func.sum(sa.case((t.outcome == o, t.requests), else_=0)) for o in OUTCOMES},
        **{k: sa.func.sum(t[f"{k}_tokens"]) for k in TOKENS},
        "cost_hi": sa.func.sum(t.cost_pusd // _SPLIT),
        "cost_lo": sa.func.sum(t.cost_pusd % _SPLIT),
        "unpriced": sa.func.sum(t.unpriced_requests),
        **{n: sa.func.sum(t[n]) for n in ("duration_count", "ttft_count", *_LAT, *FLOATS)},
    }  # fmt: skip
    return [exprs[n] for n in names] + [_last(names, t.last_ts)]


@dataclass(frozen=True, slots=True)
class Query:
    """What to aggregate: a window, equality filters (API names), optional grouping."""

    start: datetime
    end: datetime
    filters: Mapping[str, str] = field(default_factory=dict)
    group_by: str | None = None  # one of GROUPS
    step: int | None = None  # seconds; None: one bucket for the whole window
    by_error_type: bool = False  # split errors by type (totals); series do not need it
    fields: tuple[str, ...] = ALL  # which sums to compute ("requests" first, always)


Key = tuple[int | None, str | None]  # (time bucket, group value)


async def aggregate(engine: AsyncEngine, q: Query) -> dict[Key, Agg]:
    """Usage per (time bucket, group) over the window, exact, in one read snapshot."""
    out: dict[Key, Agg] = {}
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one snapshot for the watermark and every part
            await conn.execution_options(isolation_level="REPEATABLE READ")
        for rows in await _parts(conn, q):
            for row in rows:
                if not row[3]:  # no rows matched (an ungrouped aggregate still answers once)
                    continue
                key = (None if row[0] is None else int(row[0]), row[1])
                agg = out.get(key)
                if agg is None:
                    agg = out[key] = Agg(q.fields)
                agg.add(row[3:-1], row[2], row[-1])
    return out


def _whole(start: datetime, end: datetime, size: int) -> tuple[int, int]:
    """The first and past-the-last whole ``size``-second buckets inside ``[start, end)``."""
    return -(-int(start.timestamp()) // size) * size, int(end.timestamp()) // size * size


async def _parts(conn: AsyncConnection, q: Query) -> list[Any]:
    c = ledger.c
    h0, h1 = _whole(q.start, q.end, HOUR)
    if "end_user" in q.filters or (q.step or HOUR) % HOUR or h0 >= h1:
        return [await _ledger(conn, q, c.ts >= q.start, c.ts < q.end)]
    ranges = _plan(q, h0, h1)
    mark = await watermark(conn)
    at = [datetime.fromtimestamp(x, UTC) for x in (h0, h1)]
    parts = [await _rollup(conn, q, table, a, b) for table, a, b in ranges]
    return [
        *parts,
        await _ledger(conn, q, c.id > mark, c.ts >= at[0], c.ts < at[1]),
        await _ledger(conn, q, c.ts >= q.start, c.ts < at[0]),
        await _ledger(conn, q, c.ts >= at[1], c.ts < q.end),
    ]


def _plan(q: Query, h0: int, h1: int) -> list[tuple[sa.Table, int, int]]:
    """Cover ``[h0, h1)`` with the coarsest roll-up whose buckets fit the window and step."""
    for size, table in LEVELS:
        if (q.step or size) % size:
            continue
        b0, b1 = _whole(datetime.fromtimestamp(h0, UTC), datetime.fromtimestamp(h1, UTC), size)
        if b0 >= b1:
            continue
        if size == HOUR:
            return [(table, h0, h1)]
        hourly = LEVELS[-1][1]
        edges = [(hourly, a, b) for a, b in ((h0, b0), (b1, h1)) if a < b]
        return [(table, b0, b1), *edges]
    return []


def _keys(table: sa.Table, q: Query, bucket: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(key columns t, g, e; their GROUP BY; filter conditions) for ``table``."""
    t = table.c
    group = t[FILTERS[q.group_by]] if q.group_by is not None else None
    error = error_key(t.error_type) if q.by_error_type else None
    keys = [x if x is not None else sa.null() for x in (bucket, group, error)]
    where = [t[FILTERS[name]] == value for name, value in q.filters.items()]
    return keys, [x for x in (bucket, group, error) if x is not None], where


async def _ledger(conn: AsyncConnection, q: Query, *where: Any) -> Any:
    bucket = None if q.step is None else epoch_bucket(ledger.c.ts, q.step, conn.dialect.name)
    keys, groups, conds = _keys(ledger, q, bucket)
    query = sa.select(*keys, *_ledger_values(q.fields)).where(*where, *conds).group_by(*groups)
    return (await conn.execute(query)).all()


async def _rollup(conn: AsyncConnection, q: Query, table: sa.Table, first: int, last: int) -> Any:
    r = table.c
    size = None if q.step is None else sa.literal_column(str(q.step), sa.BigInteger)
    bucket = None if size is None else (r.bucket // size) * size
    keys, groups, conds = _keys(table, q, bucket)
    query = sa.select(*keys, *_rollup_values(r, q.fields)).where(
        r.bucket >= first, r.bucket < last, *conds
    )
    return (await conn.execute(query.group_by(*groups))).all()


assert set(FILTERS.values()) - {"end_user"} == set(ROLLUP_DIMENSIONS)
