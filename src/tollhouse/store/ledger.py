"""The spend ledger's queries: appending batches of rows and summing spend for recovery.

Rows are written by ``tollhouse.accounting.ledger.LedgerWriter``; this module
only knows SQL. Costs are integer pico-USD (see ``tables``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

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


def _sqlite_ts(value: Any) -> Any:
    """SQLAlchemy's SQLite DATETIME storage format: naive UTC, always with microseconds."""
    if isinstance(value, datetime):
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(sep=" ", timespec="microseconds")
    return value


class LedgerRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sql: str | None = None

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` in one transaction: all are written or none is.

        The ledger is the one table written on every request, so its batches go
        straight to the driver's ``executemany`` with positional tuples (one
        prepared statement, rows bound in C), skipping SQLAlchemy's per-value
        bind processing: measured at half the CPU per row of a Core insert.
        The only conversion that processing did is done here: SQLite stores the
        timestamp as naive UTC text in SQLAlchemy's format, so queries built with
        Core compare it the same way.
        """
        if not rows:
            return
        params: list[tuple[Any, ...]] = [_values(row) for row in rows]
        if self._engine.dialect.name == "sqlite":
            at = _TS
            params = [(*p[:at], _sqlite_ts(p[at]), *p[at + 1 :]) for p in params]
        async with self._engine.begin() as conn:
            await conn.exec_driver_sql(self._insert_sql(), params)

    def _insert_sql(self) -> str:
        if self._sql is None:
            dialect = self._engine.dialect
            if dialect.paramstyle == "qmark":
                marks = ", ".join("?" for _ in _COLUMNS)
            elif dialect.paramstyle == "numeric_dollar":
                marks = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
            else:
                marks = ", ".join("%s" for _ in _COLUMNS)
            quote = dialect.identifier_preparer.quote
            names = ", ".join(quote(c) for c in _COLUMNS)
            self._sql = f"INSERT INTO {quote(ledger.name)} ({names}) VALUES ({marks})"
        return self._sql

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
