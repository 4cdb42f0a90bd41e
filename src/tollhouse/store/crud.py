"""The shared machinery of the repositories: one table, a string ``id``, plain records.

Unique and foreign-key violations come back as ``Conflict`` / ``MissingReference``
(from either driver), so callers never catch a driver's exception.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.store.models import Conflict, Limits, MissingReference, ModelLimit


class Unset(Enum):
    """The type of ``UNSET``: "leave this field as it is" in an update."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET
R = TypeVar("R")

# SQLSTATE (PostgreSQL) or extended result code name (SQLite) of each violation.
_UNIQUE = {"23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
_FOREIGN_KEY = {"23503", "SQLITE_CONSTRAINT_FOREIGNKEY"}


def new_id() -> str:
    """A short random id (64 bits, hex): unguessable enough to appear in admin URLs."""
    return secrets.token_hex(8)


def now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def translate_integrity_errors() -> Iterator[None]:
    try:
        yield
    except sa.exc.IntegrityError as err:
        code = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "sqlite_errorname", None)
        message = str(err.orig).splitlines()[0] if err.orig is not None else str(err)
        if code in _UNIQUE:
            raise Conflict(message) from err
        if code in _FOREIGN_KEY:
            raise MissingReference(message) from err
        raise


def limits_values(limits: Limits) -> dict[str, Any]:
    return {
        "max_budget_nusd": limits.max_budget_nusd,
        "soft_budget_nusd": limits.soft_budget_nusd,
        "budget_period": limits.budget_period,
        "rpm": limits.rpm,
        "tpm": limits.tpm,
    }


def limits_of(row: sa.Row[Any]) -> Limits:
    m = row._mapping
    return Limits(
        m["max_budget_nusd"], m["soft_budget_nusd"], m["budget_period"], m["rpm"], m["tpm"]
    )


def models_of(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def changes(**fields: Any) -> dict[str, Any]:
    """Column values for an insert or update; fields left ``UNSET`` are not touched."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is UNSET:
            continue
        if name == "limits":
            out.update(limits_values(value))
        elif name == "models":
            out[name] = None if value is None else list(value)
        elif name == "model_limits":
            out[name] = _model_limits_value(value)
        elif name == "metadata":
            out[name] = dict(value)
        else:
            out[name] = value
    return out


def _model_limits_value(value: Mapping[str, ModelLimit] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {model: {"rpm": lim.rpm, "tpm": lim.tpm} for model, lim in value.items()}


class Repo(Generic[R]):
    """Reads and writes of one table whose primary key is a string ``id``."""

    table: sa.Table
    kind: str  # what a row is, in messages ("team", "key")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _record(self, row: sa.Row[Any]) -> R:
        raise NotImplementedError

    async def get(self, id: str) -> R | None:
        return await self._one(self.table.c.id == id)

    async def block(self, id: str, blocked: bool = True) -> R | None:
        """Block (or unblock) rather than delete, so ledger rows naming it keep their meaning."""
        return await self._update(id, {"blocked": blocked})

    async def _one(self, where: sa.ColumnElement[bool]) -> R | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(self.table).where(where))).first()
        return None if row is None else self._record(row)

    async def _many(
        self, where: sa.ColumnElement[bool], limit: int | None, offset: int
    ) -> builtins.list[R]:
        query = sa.select(self.table).where(where).order_by(self.table.c.alias)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit).offset(offset))).all()
        return [self._record(row) for row in rows]

    async def _insert(self, values: dict[str, Any]) -> R:
        query = self.table.insert().values(values).returning(self.table)
        with self._alias_taken(values), translate_integrity_errors():
            async with self._engine.begin() as conn:
                row = (await conn.execute(query)).one()
        return self._record(row)

    @contextmanager
    def _alias_taken(self, values: Mapping[str, Any]) -> Iterator[None]:
        """Say which alias is taken, for a create or a rename, not the database's own
        constraint text (which differs between SQLite and PostgreSQL)."""
        try:
            yield
        except Conflict:
            if "alias" not in values:
                raise
            raise Conflict(f"a {self.kind} with alias {values['alias']!r} already exists") from None

    async def _update(self, id: str, values: dict[str, Any]) -> R | None:
        if not values:
            return await self.get(id)
        query = self.table.update().where(self.table.c.id == id).values(values)
        with self._alias_taken(values), translate_integrity_errors():
            async with self._engine.begin() as conn:
                row = (await conn.execute(query.returning(self.table))).first()
        return None if row is None else self._record(row)
