"""The spend ledger's queries: appending batches of rows and summing spend for recovery.

Rows are written by ``tollhouse.accounting.ledger.LedgerWriter``; this module
only knows SQL. Costs are integer pico-USD (see ``tables``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store.sqlite import Appender, is_sqlite_file
from tollhouse.store.tables import ledger

SpendScope = Literal["key_alias", "team", "user", "end_user", "backend", "provider"]
SPEND_SCOPES: tuple[str, ...] = get_args(SpendScope)

# SQLite's SUM of integers fails past 2**63 (about 9.2 million USD in pico-USD),
# so spend is summed as whole micro-USD plus the pico-USD remainder: both sums
# stay far below 2**63 for any real volume, and their recombination is exact.
_SPLIT = 1_000_000


_COLUMNS: tuple[str, ...] = tuple(c.name for c in ledger.columns if c.name != "id")
_values = itemgetter(*_COLUMNS)  # a row dict's values in column order, in one C call
_TS = _COLUMNS.index("ts")


# Rows per SQLite INSERT statement. Statements run on the event loop (store.sqlite), so
# each must be short: 16 rows take 0.1-0.3 ms. Each connection keeps its prepared
# statements, one per row count: at most 16 texts of at most 16 rows.
CHUNK_ROWS = 16


@cache
def _chunk() -> int:
    """CHUNK_ROWS, or fewer if this SQLite build binds fewer values per statement
    (999 before SQLite 3.32)."""
    with closing(sqlite3.connect(":memory:")) as probe:
        limit = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(CHUNK_ROWS, limit // len(_COLUMNS)))


def _sqlite_params(rows: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """One statement's parameters: each row's values in column order, flat, with the
    timestamp as SQLite stores it."""
    flat: list[Any] = []
    for row in rows:
        values = _values(row)
        flat.extend(values[:_TS])
        flat.append(_sqlite_ts(values[_TS]))
        flat.extend(values[_TS + 1 :])
    return tuple(flat)


def _sqlite_ts(value: Any) -> Any:
    """SQLAlchemy's SQLite DATETIME storage format: naive UTC, always with microseconds."""
    if isinstance(value, datetime):
        naive = (value if value.tzinfo is UTC else value.astimezone(UTC)).replace(tzinfo=None)
        return naive.isoformat(sep=" ", timespec="microseconds")
    return value


class LedgerRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sql: dict[int, str] = {}
        # A SQLite file's ledger is written by its own connection, from the loop's thread.
        url = engine.url
        self._appender = Appender(url.database or "") if is_sqlite_file(url) else None

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` in one transaction: all are written or none is. A row whose
        ``event_id`` is already there is skipped, so writing a batch again is harmless.

        The ledger is the one table written on every request, so its batches go
        straight to the driver with positional tuples (prepared statements, rows
        bound in C), skipping SQLAlchemy's per-value bind processing: measured at
        half the CPU per row of a Core insert.
        The only conversion that processing did is done here: SQLite stores the
        timestamp as naive UTC text in SQLAlchemy's format, so queries built with
        Core compare it the same way.
        """
        if not rows:
            return
        if self._engine.dialect.name != "sqlite":
            params = [_values(row) for row in rows]
            async with self._engine.begin() as conn:
                await conn.exec_driver_sql(self._insert_sql(1), params)
            return
        # SQLite: from the loop's thread (store.sqlite says why), CHUNK_ROWS rows to a
        # statement, each chunk's parameters made in the appender's slices: a whole batch
        # at once would hold the loop for milliseconds (bench/stall_bench.py).
        size = _chunk()
        chunks = (rows[start : start + size] for start in range(0, len(rows), size))
        statements = ((self._insert_sql(len(c)), _sqlite_params(c), len(c)) for c in chunks)
        if self._appender is not None:
            await self._appender.append(statements)
            return
        async with self._engine.begin() as conn:  # in memory: only the engine's connection
            for sql, chunk, _ in statements:
                await conn.exec_driver_sql(sql, chunk)

    async def aclose(self) -> None:
        """Close the SQLite appender's connection (nothing to do for PostgreSQL)."""
        if self._appender is not None:
            await self._appender.aclose()

    def _insert_sql(self, rows: int) -> str:
        """``INSERT`` of ``rows`` rows, its text kept per row count (at most ``_chunk()``)."""
        sql = self._sql.get(rows)
        if sql is None:
            dialect = self._engine.dialect
            if dialect.paramstyle == "qmark":  # SQLite: the only store that sends rows > 1
                marks = ", ".join("?" for _ in _COLUMNS)
            elif dialect.paramstyle == "numeric_dollar":
                marks = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
            else:
                marks = ", ".join("%s" for _ in _COLUMNS)
            quote = dialect.identifier_preparer.quote
            names = ", ".join(quote(c) for c in _COLUMNS)
            values = ", ".join([f"({marks})"] * rows)
            # A retried batch whose first commit did land conflicts on event_id: skipped.
            sql = self._sql[rows] = (
                f"INSERT INTO {quote(ledger.name)} ({names}) VALUES {values} "
                f"ON CONFLICT ({quote('event_id')}) DO NOTHING"
            )
        return sql

    async def count_rows(self) -> int:
        async with self._engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(ledger))
        return int(count or 0)

    async def spend_since(
        self, scope_column: SpendScope, since_ts: datetime | float
    ) -> dict[str, int]:
        """Priced spend in pico-USD per value of ``scope_column`` over rows with ``ts >= since_ts``.

        ``since_ts`` is an aware datetime or unix seconds. This is how budgets
        recover their counters after a restart: the ledger is the durable truth.
        Unpriced rows (NULL cost) add nothing; entities with no priced row are absent.
        """
        if scope_column not in SPEND_SCOPES:
            raise ValueError(f"scope_column must be one of {', '.join(SPEND_SCOPES)}")
        since = (
            since_ts if isinstance(since_ts, datetime) else datetime.fromtimestamp(since_ts, UTC)
        )
        entity = ledger.c[scope_column]
        cost = ledger.c.cost_pusd
        query = (
            sa.select(entity, sa.func.sum(cost // _SPLIT), sa.func.sum(cost % _SPLIT))
            .where(ledger.c.ts >= since, cost.is_not(None))
            .group_by(entity)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {name: int(high) * _SPLIT + int(low) for name, high, low in rows}
