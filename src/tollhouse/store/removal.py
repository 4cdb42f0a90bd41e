"""Deleting teams, users, keys and end-user overrides, which the plain repositories never do.

Deleting is refused (``Conflict``) while other rows still point at the row
(a team with users or keys, a user with keys): the caller moves or deletes
those first. Ledger rows name keys, teams and users by alias, not by id, so
they keep their meaning after a delete.
"""

from __future__ import annotations

import builtins

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store.crud import limits_of, translate_integrity_errors
from tollhouse.store.models import Conflict, EndUser
from tollhouse.store.tables import api_keys, end_users, teams, users

_TABLES = {"team": teams, "user": users, "key": api_keys, "end_user": end_users}
_REFERRERS = {"team": ((users, "users"), (api_keys, "keys")), "user": ((api_keys, "keys"),)}


async def delete(engine: AsyncEngine, kind: str, id: str) -> bool:
    """Delete one row by id; ``False`` when it did not exist."""
    table = _TABLES[kind]
    async with engine.begin() as conn:
        # Write first: it takes the write lock (SQLite) or the row lock (PostgreSQL) before the
        # checks read, so no writer slips in between and SQLite never has to upgrade a reader.
        await conn.execute(table.update().where(table.c.id == id).values(id=table.c.id))
        for referrer, name in _REFERRERS.get(kind, ()):
            column = referrer.c.team_id if kind == "team" else referrer.c.user_id
            count = await conn.scalar(
                sa.select(sa.func.count()).select_from(referrer).where(column == id)
            )
            if count:
                raise Conflict(f"the {kind} still has {count} {name}; remove or move them first")
        with translate_integrity_errors():
            result = await conn.execute(table.delete().where(table.c.id == id))
    return bool(result.rowcount)


async def list_end_users(
    engine: AsyncEngine, *, limit: int | None = None, offset: int = 0
) -> builtins.list[EndUser]:
    query = sa.select(end_users).order_by(end_users.c.id).limit(limit).offset(offset)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [EndUser(row.id, limits_of(row)) for row in rows]
