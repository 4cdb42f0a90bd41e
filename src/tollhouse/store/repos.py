"""Simple repositories: create, read, update and block teams, users and keys.

Only CRUD lives here; deciding what a key may do is ``identity``'s job and
budget arithmetic is ``limits``'s. Every method opens its own short
transaction; none holds a connection between calls.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store.crud import (
    UNSET,
    Repo,
    Unset,
    changes,
    limits_of,
    limits_values,
    models_of,
    new_id,
    now,
)
from tollhouse.store.models import NO_LIMITS, ApiKey, EndUser, Limits, ModelLimit, Team, User
from tollhouse.store.tables import api_keys, end_users, teams, users

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX_MAX = 12  # more of the secret than this must never reach the database


class Teams(Repo[Team]):
    table = teams
    kind = "team"

    def _record(self, row: sa.Row[Any]) -> Team:
        m = row._mapping
        return Team(
            m["id"],
            m["alias"],
            limits_of(row),
            models_of(m["models"]),
            m["metadata"],
            m["blocked"],
            m["created_at"],
        )

    async def create(
        self,
        alias: str,
        *,
        limits: Limits = NO_LIMITS,
        models: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Team:
        values = changes(limits=limits, models=models, metadata=metadata or {})
        return await self._insert(
            {"id": new_id(), "alias": alias, "blocked": False, "created_at": now(), **values}
        )

    async def get_by_alias(self, alias: str) -> Team | None:
        return await self._one(teams.c.alias == alias)

    async def list(self, *, limit: int | None = None, offset: int = 0) -> builtins.list[Team]:
        return await self._many(sa.true(), limit, offset)

    async def update(
        self,
        id: str,
        *,
        alias: str | Unset = UNSET,
        limits: Limits | Unset = UNSET,
        models: Sequence[str] | Unset | None = UNSET,
        metadata: Mapping[str, Any] | Unset = UNSET,
    ) -> Team | None:
        """Change the given fields; ``None`` when no team has this id."""
        return await self._update(
            id, changes(alias=alias, limits=limits, models=models, metadata=metadata)
        )


class Users(Repo[User]):
    table = users
    kind = "user"

    def _record(self, row: sa.Row[Any]) -> User:
        m = row._mapping
        return User(
            m["id"],
            m["alias"],
            m["email"],
            m["team_id"],
            limits_of(row),
            m["metadata"],
            m["blocked"],
            m["created_at"],
        )

    async def create(
        self,
        alias: str,
        *,
        email: str | None = None,
        team_id: str | None = None,
        limits: Limits = NO_LIMITS,
        metadata: Mapping[str, Any] | None = None,
    ) -> User:
        values = changes(email=email, team_id=team_id, limits=limits, metadata=metadata or {})
        return await self._insert(
            {"id": new_id(), "alias": alias, "blocked": False, "created_at": now(), **values}
        )

    async def get_by_alias(self, alias: str) -> User | None:
        return await self._one(users.c.alias == alias)

    async def list(
        self, *, team_id: str | None = None, limit: int | None = None, offset: int = 0
    ) -> builtins.list[User]:
        where = sa.true() if team_id is None else users.c.team_id == team_id
        return await self._many(where, limit, offset)

    async def update(
        self,
        id: str,
        *,
        alias: str | Unset = UNSET,
        email: str | Unset | None = UNSET,
        team_id: str | Unset | None = UNSET,
        limits: Limits | Unset = UNSET,
        metadata: Mapping[str, Any] | Unset = UNSET,
    ) -> User | None:
        """Change the given fields; ``None`` when no user has this id."""
        return await self._update(
            id,
            changes(alias=alias, email=email, team_id=team_id, limits=limits, metadata=metadata),
        )


class Keys(Repo[ApiKey]):
    """Virtual keys, found by the sha256 of the secret the client presents."""

    table = api_keys
    kind = "key"

    def _record(self, row: sa.Row[Any]) -> ApiKey:
        m = row._mapping
        model_limits = m["model_limits"]
        if model_limits is not None:
            model_limits = {
                k: ModelLimit(v.get("rpm"), v.get("tpm")) for k, v in model_limits.items()
            }
        return ApiKey(
            m["id"],
            m["key_hash"],
            m["key_prefix"],
            m["alias"],
            m["team_id"],
            m["user_id"],
            models_of(m["models"]),
            model_limits,
            m["metadata"],
            m["expires_at"],
            m["blocked"],
            limits_of(row),
            m["created_at"],
            m["last_used_at"],
        )

    async def create(
        self,
        *,
        key_hash: str,
        key_prefix: str,
        alias: str,
        team_id: str | None = None,
        user_id: str | None = None,
        models: Sequence[str] | None = None,
        model_limits: Mapping[str, ModelLimit] | None = None,
        metadata: Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        limits: Limits = NO_LIMITS,
    ) -> ApiKey:
        """Store a key the caller generated; refuses anything that looks like a raw secret."""
        if not _SHA256_HEX.fullmatch(key_hash):
            raise ValueError("key_hash must be the lowercase hex sha256 of the secret")
        if len(key_prefix) > KEY_PREFIX_MAX:
            raise ValueError(f"key_prefix longer than {KEY_PREFIX_MAX} characters")
        values = changes(
            team_id=team_id,
            user_id=user_id,
            models=models,
            model_limits=model_limits,
            metadata=metadata or {},
            expires_at=expires_at,
            limits=limits,
        )
        return await self._insert(
            {
                "id": new_id(),
                "key_hash": key_hash,
                "key_prefix": key_prefix,
                "alias": alias,
                "blocked": False,
                "created_at": now(),
                **values,
            }
        )

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._one(api_keys.c.key_hash == key_hash)

    async def get_by_alias(self, alias: str) -> ApiKey | None:
        return await self._one(api_keys.c.alias == alias)

    async def list(
        self,
        *,
        team_id: str | None = None,
        user_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[ApiKey]:
        where = sa.and_(
            sa.true() if team_id is None else api_keys.c.team_id == team_id,
            sa.true() if user_id is None else api_keys.c.user_id == user_id,
        )
        return await self._many(where, limit, offset)

    async def update(
        self,
        id: str,
        *,
        alias: str | Unset = UNSET,
        models: Sequence[str] | Unset | None = UNSET,
        model_limits: Mapping[str, ModelLimit] | Unset | None = UNSET,
        metadata: Mapping[str, Any] | Unset = UNSET,
        expires_at: datetime | Unset | None = UNSET,
        limits: Limits | Unset = UNSET,
    ) -> ApiKey | None:
        """Change the given fields; ``None`` when no key has this id."""
        return await self._update(
            id,
            changes(
                alias=alias,
                models=models,
                model_limits=model_limits,
                metadata=metadata,
                expires_at=expires_at,
                limits=limits,
            ),
        )

    async def touch(self, id: str, at: datetime | None = None) -> None:
        """Record a use. One write per call: callers throttle it (e.g. once a minute per key)."""
        query = api_keys.update().where(api_keys.c.id == id).values(last_used_at=at or now())
        async with self._engine.begin() as conn:
            await conn.execute(query)


class EndUsers:
    """Per-end-user overrides, keyed by the client's ``user`` string."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, id: str) -> EndUser | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(end_users).where(end_users.c.id == id))).first()
        return None if row is None else EndUser(row.id, limits_of(row))

    async def with_budget(self) -> list[EndUser]:
        """The end users who have a budget of their own (for recovery at start-up)."""
        query = sa.select(end_users).where(end_users.c.max_budget_nusd.is_not(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.order_by(end_users.c.id))).all()
        return [EndUser(row.id, limits_of(row)) for row in rows]

    async def upsert(self, id: str, limits: Limits) -> EndUser:
        """Create or replace the overrides in one atomic statement."""
        values = limits_values(limits)
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        query = insert(end_users).values(id=id, **values)
        query = query.on_conflict_do_update(index_elements=[end_users.c.id], set_=values)
        async with self._engine.begin() as conn:
            await conn.execute(query)
        return EndUser(id, limits)
