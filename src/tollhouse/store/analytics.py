"""Usage over a time window, from the roll-up where it can and the ledger where it must.

A window ``[start, end)`` is answered from three parts, read in one snapshot:

* whole hours inside the window, from ``ledger_hourly`` (rows up to the watermark);
* ledger rows above the watermark in those hours (not folded yet);
* the partial hours at both ends, from the ledger (its ``ts`` index).

So counts, tokens and cost are exact for any window whatever the roll-up's
progress, and a 30-day query reads about a thousand roll-up rows per active
key and model instead of every request. A filter on one end user reads the
ledger only (end users are not in the roll-up; ``ix_ledger_end_user_ts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.store.rollup import HOUR, epoch_bucket, error_key, ledger_sums, watermark
from tollhouse.store.tables import LATENCY_BUCKETS_MS, ROLLUP_DIMENSIONS, ledger, ledger_hourly

# Dimensions a query may filter on, by their API name; all but end_user are in the roll-up.
FILTERS = {"key": "key_alias", "team": "team", "user": "user", "end_user": "end_user",
           "model": "model", "backend": "backend", "provider": "provider"}  # fmt: skip
GROUPS = ("key", "team", "model", "backend", "provider")
_SPLIT = 1_000_000  # cost is summed as micro-USD and remainder: SQLite's SUM stops at 2**63
_TOKENS = ("input", "output", "cached_input", "cache_write_input", "reasoning")


@dataclass
class Agg:
    """Additive usage numbers: merging two ``Agg`` equals aggregating their rows together."""

    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    errors_by_type: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKENS, 0))
    cost_pusd: int = 0
    unpriced: int = 0
    duration_ms_sum: float = 0.0
    duration_count: int = 0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    latency_le: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    last_ts: datetime | None = None

    def add_row(self, m: Mapping[str, Any]) -> None:
        """Add one aggregated row (from the roll-up or the ledger; same labels)."""
        n = int(m["requests"])
        self.requests += n
        self.outcomes[m["outcome"]] = self.outcomes.get(m["outcome"], 0) + n
        if m["outcome"] == "error" and m["error_type"]:
            self.errors_by_type[m["error_type"]] = self.errors_by_type.get(m["error_type"], 0) + n
        for t in _TOKENS:
            self.tokens[t] += int(m[f"{t}_tokens"])
        self.cost_pusd += int(m["cost_hi"]) * _SPLIT + int(m["cost_lo"])
        self.unpriced += int(m["unpriced_requests"])
        self.duration_ms_sum += float(m["duration_ms_sum"])
        self.duration_count += int(m["duration_count"])
        self.ttft_ms_sum += float(m["ttft_ms_sum"])
        self.ttft_count += int(m["ttft_count"])
        for i, b in enumerate(LATENCY_BUCKETS_MS):
            self.latency_le[i] += int(m[f"lat_le_{b}"])
        ts = m["last_ts"]
        if ts is not None:
            ts = _aware(ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def merge(self, other: Agg) -> None:
        self.requests += other.requests
        for k, v in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        for k, v in other.errors_by_type.items():
            self.errors_by_type[k] = self.errors_by_type.get(k, 0) + v
        for t in _TOKENS:
            self.tokens[t] += other.tokens[t]
        self.cost_pusd += other.cost_pusd
        self.unpriced += other.unpriced
        self.duration_ms_sum += other.duration_ms_sum
        self.duration_count += other.duration_count
        self.ttft_ms_sum += other.ttft_ms_sum
        self.ttft_count += other.ttft_count
        self.latency_le = [a + b for a, b in zip(self.latency_le, other.latency_le, strict=True)]
        if other.last_ts is not None:
            self.last_ts = (
                other.last_ts if self.last_ts is None else max(self.last_ts, other.last_ts)
            )


def _aware(value: Any) -> datetime:
    """``max(ts)`` comes back as text on SQLite (aggregates lose the column type)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cost_split(column: Any) -> list[sa.ColumnElement[Any]]:
    return [
        sa.func.coalesce(sa.func.sum(column // _SPLIT), 0).label("cost_hi"),
        sa.func.coalesce(sa.func.sum(column % _SPLIT), 0).label("cost_lo"),
    ]


def _rollup_sums() -> list[sa.ColumnElement[Any]]:
    r = ledger_hourly.c
    names = [c.name for c in ledger_sums() if c.name not in ("cost_pusd", "last_ts")]
    return [
        *(sa.func.sum(r[n]).label(n) for n in names),
        *_cost_split(r.cost_pusd),
        sa.func.max(r.last_ts).label("last_ts"),
    ]


def _ledger_sums() -> list[sa.ColumnElement[Any]]:
    out = [c for c in ledger_sums() if c.name != "cost_pusd"]
    return [*out, *_cost_split(ledger.c.cost_pusd)]


@dataclass(frozen=True, slots=True)
class Query:
    """What to aggregate: a window, equality filters (API names), optional grouping."""

    start: datetime
    end: datetime
    filters: Mapping[str, str] = field(default_factory=dict)
    group_by: str | None = None  # one of GROUPS
    step: int | None = None  # seconds; None: one bucket for the whole window

    @property
    def uses_rollup(self) -> bool:
        return "end_user" not in self.filters and (self.step is None or self.step % HOUR == 0)


Key = tuple[int | None, str | None]  # (time bucket, group value)


async def aggregate(engine: AsyncEngine, q: Query) -> dict[Key, Agg]:
    """Usage per (time bucket, group) over the window, exact, in one read snapshot."""
    out: dict[Key, Agg] = {}
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one snapshot for the watermark and every part
            await conn.execution_options(isolation_level="REPEATABLE READ")
        for rows in await _parts(conn, q):
            for row in rows:
                m = row._mapping
                key = (m.get("t"), m.get("g"))
                out.setdefault(key, Agg()).add_row(m)
    return out


async def _parts(conn: AsyncConnection, q: Query) -> list[Any]:
    c = ledger.c
    first = -(-int(q.start.timestamp()) // HOUR) * HOUR  # the first whole hour
    last = int(q.end.timestamp()) // HOUR * HOUR  # the end of the last whole hour
    if not q.uses_rollup or first >= last:
        return [await _ledger(conn, q, c.ts >= q.start, c.ts < q.end)]
    mark = await watermark(conn)
    h0, h1 = datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last, UTC)
    return [
        await _rollup(conn, q, first, last),
        await _ledger(conn, q, c.id > mark, c.ts >= h0, c.ts < h1),
        await _ledger(conn, q, c.ts >= q.start, c.ts < h0),
        await _ledger(conn, q, c.ts >= h1, c.ts < q.end),
    ]


def _shape(
    table: sa.Table, q: Query, bucket: sa.ColumnElement[Any] | None
) -> tuple[list[Any], list[Any], list[Any]]:
    """(extra select columns, group-by expressions, filter conditions) for ``table``."""
    t = table.c
    cols: list[Any] = [t.outcome, error_key(t.error_type).label("error_type")]
    groups: list[Any] = [t.outcome, error_key(t.error_type)]
    if bucket is not None:
        cols.append(bucket.label("t"))
        groups.append(bucket)
    if q.group_by is not None:
        column = t[FILTERS[q.group_by]]
        cols.append(column.label("g"))
        groups.append(column)
    where = [t[FILTERS[name]] == value for name, value in q.filters.items()]
    return cols, groups, where


async def _ledger(conn: AsyncConnection, q: Query, *where: Any) -> Any:
    bucket = None if q.step is None else epoch_bucket(ledger.c.ts, q.step, conn.dialect.name)
    cols, groups, conds = _shape(ledger, q, bucket)
    query = sa.select(*cols, *_ledger_sums()).where(*where, *conds).group_by(*groups)
    return (await conn.execute(query)).all()


async def _rollup(conn: AsyncConnection, q: Query, first: int, last: int) -> Any:
    r = ledger_hourly.c
    size = sa.literal_column(str(q.step), sa.BigInteger)
    bucket = None if q.step is None else (r.bucket // size) * size
    cols, groups, conds = _shape(ledger_hourly, q, bucket)
    query = sa.select(*cols, *_rollup_sums()).where(r.bucket >= first, r.bucket < last, *conds)
    return (await conn.execute(query.group_by(*groups))).all()


assert set(FILTERS.values()) - {"end_user"} == set(ROLLUP_DIMENSIONS)
