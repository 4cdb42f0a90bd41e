"""Folding the ledger into hourly and daily roll-ups, so long usage queries stay short.

The roll-ups (``tables.ledger_hourly`` and ``ledger_daily``) hold exact integer
sums of every ledger row with ``id <= watermark``. ``fold`` moves the watermark forward in one
transaction: it locks the watermark row, aggregates the next ledger rows into each
roll-up with one ``INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE`` and stores the new
watermark, so two folders (two replicas) never count a row twice.

Rows are folded by id, not by time, because the ledger is written in batches
and a long stream's row lands well after its start: every row is folded once,
into the hour and the day it started in. Queries stay exact whatever the watermark, since
they read rows above it from the ledger itself (``analytics``).

The SQL expressions both the fold and the queries aggregate with live here too,
so a roll-up row and a raw-ledger answer can never disagree on what they sum.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.store.tables import (
    LATENCY_BUCKETS_MS,
    ROLLUP_DIMENSIONS,
    ROLLUP_SUMS,
    ledger,
    ledger_daily,
    ledger_hourly,
    rollup_state,
)

HOUR = 3600
DAY = 86400
LEVELS: tuple[tuple[int, sa.Table], ...] = ((DAY, ledger_daily), (HOUR, ledger_hourly))
"""Each roll-up with its bucket size in seconds, coarsest first."""
STATE = "ledger_rollups"
DEFAULT_BATCH = 50_000  # rows per fold transaction: keeps SQLite write locks short
_TOKENS = ("input", "output", "cached_input", "cache_write_input", "reasoning")


def epoch_bucket(column: Any, step: int, dialect: str) -> sa.ColumnElement[int]:
    """Unix seconds of the start of the ``step``-second bucket ``column`` (a timestamp) is in.

    SQLite stores the timestamp as text; its fraction is cut off before converting,
    because ``strftime('%s')`` rounds to the millisecond and would move a row at
    ``01:59:59.9996`` into the next hour, unlike the timestamp comparisons queries use.
    """
    size = sa.literal_column(str(int(step)), sa.BigInteger)  # inline: GROUP BY must match it
    if dialect == "sqlite":
        text = sa.func.substr(column, sa.literal_column("1"), sa.literal_column("19"))
        seconds = sa.cast(sa.func.strftime(sa.literal_column("'%s'"), text), sa.BigInteger)
        return (seconds // size) * size
    floored = sa.func.floor(sa.extract("epoch", column) / size) * size
    return sa.cast(floored, sa.BigInteger)


def ledger_sums() -> list[sa.ColumnElement[Any]]:
    """The roll-up's sums computed from ledger rows, labelled with the roll-up's column names."""
    c = ledger.c
    cost, duration = c.cost_pusd, c.duration_ms
    unpriced = sa.and_(cost.is_(None), sa.or_(c.input_tokens > 0, c.output_tokens > 0))
    columns: dict[str, sa.ColumnElement[Any]] = {
        "requests": sa.func.count(),
        **{f"{t}_tokens": sa.func.coalesce(sa.func.sum(c[f"{t}_tokens"]), 0) for t in _TOKENS},
        "cost_pusd": sa.func.coalesce(sa.func.sum(cost), 0),
        "unpriced_requests": sa.func.sum(sa.case((unpriced, 1), else_=0)),
        "duration_count": sa.func.count(duration),
        "ttft_count": sa.func.count(c.ttft_ms),
        **{f"lat_le_{b}": sa.func.sum(sa.case((duration <= b, 1), else_=0))
           for b in LATENCY_BUCKETS_MS},
    }  # fmt: skip
    assert tuple(columns) == ROLLUP_SUMS
    extra = {
        "duration_ms_sum": sa.func.coalesce(sa.func.sum(duration), 0.0),
        "ttft_ms_sum": sa.func.coalesce(sa.func.sum(c.ttft_ms), 0.0),
        "last_ts": sa.func.max(c.ts),
    }
    return [expr.label(name) for name, expr in {**columns, **extra}.items()]


def error_key(column: Any) -> sa.ColumnElement[str]:
    """``error_type`` as the roll-up keys it: "" for none."""
    return sa.func.coalesce(column, sa.literal_column("''"))


_WATERMARK = sa.select(rollup_state.c.watermark).where(rollup_state.c.name == STATE)
_NEWEST = sa.select(sa.func.max(ledger.c.id))
_BUMP = rollup_state.update().where(rollup_state.c.name == STATE)
_HOLD = _BUMP.values(watermark=rollup_state.c.watermark)
_MOVE = _BUMP.values(watermark=sa.bindparam("high"))


async def watermark(conn: AsyncConnection) -> int:
    return int(await conn.scalar(_WATERMARK) or 0)


async def _lock(conn: AsyncConnection) -> None:
    """Take the watermark row's write lock first, so concurrent folders queue up here."""
    result = await conn.execute(_HOLD)
    if result.rowcount == 0:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(
            insert(rollup_state).values(name=STATE, watermark=0).on_conflict_do_nothing()
        )
        await conn.execute(_HOLD)


def _upsert(dialect: str, table: sa.Table, size: int) -> Any:
    """Fold ledger ids in (``:low``, ``:high``] into ``table``; built once per dialect."""
    c = ledger.c
    dims = [c[name] for name in ROLLUP_DIMENSIONS]
    bucket = epoch_bucket(c.ts, size, dialect)
    select = (
        sa.select(bucket.label("bucket"), *dims, c.outcome,
                  error_key(c.error_type).label("error_type"), *ledger_sums())
        .where(c.id > sa.bindparam("low"), c.id <= sa.bindparam("high"))
        .group_by(bucket, *dims, c.outcome, error_key(c.error_type))
    )  # fmt: skip
    names = [col.name for col in select.selected_columns]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).from_select(names, select)
    r, new = table.c, stmt.excluded
    greatest = sa.func.greatest if dialect == "postgresql" else sa.func.max
    set_: dict[str, Any] = {name: r[name] + new[name] for name in ROLLUP_SUMS}
    set_ |= {n: r[n] + new[n] for n in ("duration_ms_sum", "ttft_ms_sum")}
    set_["last_ts"] = greatest(r.last_ts, new.last_ts)
    keys = list(table.primary_key.columns)
    return stmt.on_conflict_do_update(index_elements=keys, set_=set_)


_UPSERTS: dict[str, list[Any]] = {}


def _upserts(dialect: str) -> list[Any]:
    """The fold's statements, built on first use and then reused.

    Building them (some forty labelled sums) and computing their cache keys took
    ~20 ms of event-loop time per fold when rebuilt every time: a stall in front of
    whatever request arrived during it, every ``rollup_interval``. A statement object
    keeps its cache key, so reusing it leaves only the execution.
    """
    built = _UPSERTS.get(dialect)
    if built is None:
        built = _UPSERTS[dialect] = [_upsert(dialect, table, size) for size, table in LEVELS]
    return built


async def prepare(engine: AsyncEngine) -> None:
    """Build the fold's statements and have SQLAlchemy compile them, at start-up.

    Left to the first fold that has rows to fold, building and compiling them held
    the event loop for ~20-30 ms (with the garbage collection their objects set
    off) in front of every request in flight, once per process
    (``bench/stall_bench.py``). A fold's statements run here over an empty id
    range, in a transaction that is rolled back: nothing is written.
    """
    async with engine.connect() as conn:
        await _lock(conn)
        low = await watermark(conn)
        await conn.scalar(_NEWEST)
        empty = {"low": low, "high": low}
        for statement in _upserts(conn.dialect.name):
            await conn.execute(statement, empty)
        await conn.execute(_MOVE, {"high": low})
        await conn.rollback()


async def fold(engine: AsyncEngine, up_to: int | None = None, batch: int = DEFAULT_BATCH) -> int:
    """Fold ledger rows above the watermark (at most ``batch``, none above ``up_to``).

    Returns how many ids the watermark moved (0: nothing to fold). Callers that
    run several replicas on PostgreSQL pass an ``up_to`` a few seconds old, so a
    row whose insert had not committed yet is not skipped behind the watermark.
    """
    async with engine.connect() as conn:  # nothing to fold: no write, no lock taken
        low, newest = await watermark(conn), await conn.scalar(_NEWEST)
    if int(newest or 0) <= low or (up_to is not None and up_to <= low):
        return 0
    async with engine.begin() as conn:
        await _lock(conn)
        low = await watermark(conn)
        newest = await conn.scalar(_NEWEST)
        high = min(int(newest or 0), low + batch, up_to if up_to is not None else low + batch)
        if high <= low:
            return 0
        bounds = {"low": low, "high": high}
        for statement in _upserts(conn.dialect.name):
            await conn.execute(statement, bounds)
        await conn.execute(_MOVE, {"high": high})
    return high - low


async def fold_all(engine: AsyncEngine, batch: int = DEFAULT_BATCH) -> int:
    """Fold until the watermark reaches the newest ledger row (tests, the benchmark)."""
    total = 0
    while moved := await fold(engine, batch=batch):
        total += moved
    return total


async def newest_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(_NEWEST) or 0)
