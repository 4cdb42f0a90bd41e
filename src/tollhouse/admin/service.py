"""Management operations shared by the admin API and the CLI, each one audited.

Creation goes through ``identity.manage.Manager`` (hashing, validation, the
secret returned once); updates, blocks and deletes are added here. Every
mutation writes one audit row (``Actor`` says who) and then calls
``on_change`` so the process drops cached key lookups at once.
Entities are addressed by alias, as in metrics and the CLI; a missing one is
a ``LookupError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from tollhouse.admin.audit import Actor, Auditor
from tollhouse.identity.manage import LimitsInput, Manager, NewKey
from tollhouse.limits.base import NANO
from tollhouse.store import removal
from tollhouse.store.audit import AuditRepo
from tollhouse.store.engine import Store
from tollhouse.store.models import ApiKey, EndUser, Limits, ModelLimit, Team, User

NO_LIMITS = LimitsInput()
LIMIT_FIELDS = ("max_budget_usd", "soft_budget_usd", "budget_period", "rpm", "tpm")


def usd(nano: int | None) -> Decimal | None:
    return None if nano is None else Decimal(nano) / NANO


def limits_input(limits: Limits) -> LimitsInput:
    return LimitsInput(
        usd(limits.max_budget_nusd), usd(limits.soft_budget_nusd),
        limits.budget_period, limits.rpm, limits.tpm,
    )  # fmt: skip


def merge_limits(current: Limits, patch: Mapping[str, Any]) -> Limits:
    """``current`` with the fields named in ``patch`` replaced (``None`` removes a limit)."""
    base = limits_input(current)
    values = {name: patch.get(name, getattr(base, name)) for name in LIMIT_FIELDS}
    return LimitsInput(**values).to_limits()


def _jsonable(value: Any) -> Any:
    """Changes as JSON values for the audit row (money as exact decimal strings)."""
    if isinstance(value, LimitsInput):
        named = {name: getattr(value, name) for name in LIMIT_FIELDS}
        return {k: _jsonable(v) for k, v in named.items() if v is not None}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ModelLimit):
        return {"rpm": value.rpm, "tpm": value.tpm}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class AdminService:
    def __init__(self, store: Store, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.manager = Manager(store)
        self.auditor = Auditor(AuditRepo(store.engine))
        self._on_change = on_change
        # Updates read a row, merge the change (limits are validated as a whole) and write
        # it back: two at once would each write the row as they read it, losing one.
        # This process's updates queue here; see docs/admin-api.md for replicas.
        self._updates = asyncio.Lock()

    async def _audit(
        self, actor: Actor, action: str, kind: str, alias: str, changes: Mapping[str, Any] | None
    ) -> None:
        self._on_change()
        await self.auditor.record(actor, action, kind, alias, _jsonable(changes))

    # --- reads ---------------------------------------------------------------------------

    async def team(self, alias: str) -> Team:
        return _found(await self.store.teams.get_by_alias(alias), "team", alias)

    async def user(self, alias: str) -> User:
        return _found(await self.store.users.get_by_alias(alias), "user", alias)

    async def key(self, alias: str) -> ApiKey:
        return _found(await self.store.keys.get_by_alias(alias), "key", alias)

    async def end_user(self, id: str) -> EndUser:
        return _found(await self.store.end_users.get(id), "end user", id)

    # --- teams ---------------------------------------------------------------------------

    async def create_team(self, actor: Actor, alias: str, limits: LimitsInput,
                          models: Sequence[str] | None = None,
                          metadata: Mapping[str, Any] | None = None) -> Team:  # fmt: skip
        team = await self.manager.create_team(alias, limits, models)
        if metadata:
            team = _found(await self.store.teams.update(team.id, metadata=metadata), "team", alias)
        await self._audit(actor, "team.create", "team", alias,
                          {"limits": limits, "models": models, "metadata": metadata})  # fmt: skip
        return team

    async def update_team(self, actor: Actor, alias: str, changes: Mapping[str, Any]) -> Team:
        async with self._updates:
            return await self._update_team(actor, alias, changes)

    async def _update_team(self, actor: Actor, alias: str, changes: Mapping[str, Any]) -> Team:
        """``changes`` holds only what changes: alias, limits (partial), models, metadata."""
        team = await self.team(alias)
        fields = _fields(changes, ("alias", "models", "metadata"))
        if "limits" in changes:
            fields["limits"] = merge_limits(team.limits, changes["limits"])
        updated = _found(await self.store.teams.update(team.id, **fields), "team", alias)
        await self._audit(actor, "team.update", "team", alias, changes)
        return updated

    # --- users ---------------------------------------------------------------------------

    async def create_user(self, actor: Actor, alias: str, limits: LimitsInput,
                          team: str | None = None, email: str | None = None,
                          metadata: Mapping[str, Any] | None = None) -> User:  # fmt: skip
        user = await self.manager.create_user(alias, limits, team, email)
        if metadata:
            user = _found(await self.store.users.update(user.id, metadata=metadata), "user", alias)
        await self._audit(actor, "user.create", "user", alias,
                          {"limits": limits, "team": team, "email": email, "metadata": metadata})  # fmt: skip
        return user

    async def update_user(self, actor: Actor, alias: str, changes: Mapping[str, Any]) -> User:
        async with self._updates:
            return await self._update_user(actor, alias, changes)

    async def _update_user(self, actor: Actor, alias: str, changes: Mapping[str, Any]) -> User:
        user = await self.user(alias)
        fields = _fields(changes, ("alias", "email", "metadata"))
        if "team" in changes:
            fields["team_id"] = (await self.team(changes["team"])).id if changes["team"] else None
        if "limits" in changes:
            fields["limits"] = merge_limits(user.limits, changes["limits"])
        updated = _found(await self.store.users.update(user.id, **fields), "user", alias)
        await self._audit(actor, "user.update", "user", alias, changes)
        return updated

    # --- keys ----------------------------------------------------------------------------

    async def create_key(self, actor: Actor, alias: str, *, team: str | None = None,
                         user: str | None = None, models: Sequence[str] | None = None,
                         model_limits: dict[str, ModelLimit] | None = None,
                         limits: LimitsInput = NO_LIMITS, expires_in: str | None = None,
                         expires_at: datetime | None = None,
                         metadata: Mapping[str, Any] | None = None) -> NewKey:  # fmt: skip
        """A new key; its secret is in the result and nowhere else (not in the audit row)."""
        new = await self.manager.create_key(
            alias, team=team, user=user, models=models, model_limits=model_limits,
            limits=limits, expires_in=expires_in,
        )  # fmt: skip
        fields = _fields(
            {"expires_at": expires_at, "metadata": metadata}, ("expires_at", "metadata")
        )
        fields = {k: v for k, v in fields.items() if v}
        key = new.key
        if fields:
            key = _found(await self.store.keys.update(key.id, **fields), "key", alias)
        await self._audit(actor, "key.create", "key", alias, {
            "prefix": key.key_prefix, "team": team, "user": user, "models": models,
            "model_limits": model_limits, "limits": limits,
            "expires_at": key.expires_at, "metadata": metadata,
        })  # fmt: skip
        return NewKey(key, new.secret)

    async def update_key(self, actor: Actor, alias: str, changes: Mapping[str, Any]) -> ApiKey:
        async with self._updates:
            return await self._update_key(actor, alias, changes)

    async def _update_key(self, actor: Actor, alias: str, changes: Mapping[str, Any]) -> ApiKey:
        key = await self.key(alias)
        fields = _fields(changes, ("alias", "models", "metadata", "expires_at"))
        if "model_limits" in changes:
            raw = changes["model_limits"]
            fields["model_limits"] = None if raw is None else {
                m: v if isinstance(v, ModelLimit) else ModelLimit(v.get("rpm"), v.get("tpm"))
                for m, v in raw.items()
            }  # fmt: skip
        if "limits" in changes:
            fields["limits"] = merge_limits(key.limits, changes["limits"])
        updated = _found(await self.store.keys.update(key.id, **fields), "key", alias)
        await self._audit(actor, "key.update", "key", alias, changes)
        return updated

    # --- block and delete, for every kind --------------------------------------------------

    async def set_blocked(self, actor: Actor, kind: str, alias: str, blocked: bool) -> Any:
        entity = await self._get(kind, alias)
        repo = self._repo(kind)
        updated = _found(await repo.block(entity.id, blocked), kind, alias)
        await self._audit(actor, f"{kind}.{'block' if blocked else 'unblock'}", kind, alias,
                          {"blocked": blocked})  # fmt: skip
        return updated

    async def delete(self, actor: Actor, kind: str, alias: str) -> None:
        entity = await self._get(kind, alias)
        if not await removal.delete(self.store.engine, kind, entity.id):
            raise LookupError(f"no {kind.replace('_', ' ')} {alias!r}")
        await self._audit(actor, f"{kind}.delete", kind, alias, None)

    async def set_end_user(self, actor: Actor, id: str, limits: LimitsInput) -> EndUser:
        row = await self.manager.set_end_user(id, limits)
        await self._audit(actor, "end_user.set", "end_user", id, {"limits": limits})
        return row

    async def _get(self, kind: str, alias: str) -> Any:
        getters = {"team": self.team, "user": self.user, "key": self.key,
                   "end_user": self.end_user}  # fmt: skip
        return await getters[kind](alias)

    def _repo(self, kind: str) -> Any:
        return {"team": self.store.teams, "user": self.store.users, "key": self.store.keys}[kind]


def _fields(changes: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: changes[name] for name in names if name in changes}


T = TypeVar("T")


def _found(value: T | None, kind: str, alias: str) -> T:
    if value is None:
        raise LookupError(f"no {kind} with alias {alias!r}")
    return value
