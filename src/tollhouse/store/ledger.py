"""The spend ledger's queries: appending batches of rows and summing spend for recovery.

Rows are written by ``tollhouse.accounting.ledger.LedgerWriter``; this module
only knows SQL. Costs are integer pico-USD (see ``tables``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
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


class LedgerRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` in one transaction: all are written or none is.

        Sent as multi-row ``INSERT … VALUES (…), (…)`` statements: one for a
        default batch of 500, more only past 1000 rows or the driver's
        bound-parameter limit. Asking for the new ids is what makes SQLAlchemy
        render them ("insertmanyvalues", expanded from a cached one-row
        template). Without RETURNING the rows would go to the driver's
        executemany, one execution per row; ``insert().values(rows)`` would
        compile a new statement for every batch (~0.2 s per 500 rows).
        """
        if not rows:
            return
        query = ledger.insert().returning(ledger.c.id)
        async with self._engine.begin() as conn:
            await conn.execute(query, list(rows))

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
