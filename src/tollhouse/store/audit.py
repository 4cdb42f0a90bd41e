"""The audit log's queries: append one row per admin mutation, read them back with filters.

Callers hand in changes already stripped of secrets (``tollhouse.admin.audit``);
this module only knows SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store.crud import now
from tollhouse.store.tables import audit_log


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: datetime
    actor: str
    action: str
    target_type: str
    target: str
    address: str | None
    request_id: str | None
    changes: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # paging: rows older than the last one seen
    limit: int = 100


class AuditRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(
        self,
        *,
        actor: str,
        action: str,
        target_type: str,
        target: str,
        address: str | None,
        request_id: str | None,
        changes: Mapping[str, Any] | None,
    ) -> AuditEntry:
        values = {
            "ts": now(), "actor": actor, "action": action, "target_type": target_type,
            "target": target, "address": address, "request_id": request_id,
            "changes": None if changes is None else dict(changes),
        }  # fmt: skip
        async with self._engine.begin() as conn:
            row = (await conn.execute(audit_log.insert().values(values).returning(audit_log))).one()
        return _entry(row)

    async def query(self, f: AuditFilter) -> list[AuditEntry]:
        """Newest first."""
        c = audit_log.c
        conds: list[Any] = [
            column == value
            for column, value in ((c.actor, f.actor), (c.action, f.action),
                                  (c.target_type, f.target_type), (c.target, f.target))
            if value is not None
        ]  # fmt: skip
        if f.since is not None:
            conds.append(c.ts >= f.since)
        if f.until is not None:
            conds.append(c.ts < f.until)
        if f.before_id is not None:
            conds.append(c.id < f.before_id)
        query = sa.select(audit_log).where(*conds).order_by(c.id.desc()).limit(f.limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_entry(row) for row in rows]


def _entry(row: sa.Row[Any]) -> AuditEntry:
    m = row._mapping
    return AuditEntry(
        m["id"], m["ts"], m["actor"], m["action"], m["target_type"], m["target"],
        m["address"], m["request_id"], m["changes"],
    )  # fmt: skip
