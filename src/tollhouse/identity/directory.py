"""Key hash → ``KeyGrant``: the key, its team and its user, folded into one ``Principal``.

Everything admission needs (allowed models, every budget and rate rule of the
key, its team and its user) is resolved here once per cache period, so the
request path only reads a frozen object.
"""

from __future__ import annotations

from tollhouse.identity.auth import KeyGrant
from tollhouse.identity.keys import hash_key
from tollhouse.identity.principal import NONE, BudgetRule, Principal, RateRule
from tollhouse.store.engine import Store
from tollhouse.store.models import ApiKey, Limits, Team, User
from tollhouse.store.repos import EndUsers, Keys, Teams, Users

DEFAULT_PERIOD = "monthly"
ADMIN = Principal(key_id=None, key="admin", team=NONE, user=NONE, models=None)


def budget_rules(scope: str, entity: str, limits: Limits) -> list[BudgetRule]:
    if limits.max_budget_nusd is None:
        return []
    period = limits.budget_period or DEFAULT_PERIOD
    return [BudgetRule(scope, entity, limits.max_budget_nusd, period, limits.soft_budget_nusd)]


def rate_rules(scope: str, entity: str, limits: Limits, model: str | None = None) -> list[RateRule]:
    rules = [RateRule(scope, entity, "rpm", limits.rpm, model)] if limits.rpm else []
    return rules + ([RateRule(scope, entity, "tpm", limits.tpm, model)] if limits.tpm else [])


def allowed_models(key: ApiKey, team: Team | None) -> frozenset[str] | None:
    sets = [set(m) for m in (key.models, team.models if team else None) if m is not None]
    if not sets:
        return None
    return frozenset(set.intersection(*sets))


def principal_of(key: ApiKey, team: Team | None, user: User | None) -> Principal:
    budgets = budget_rules("key", key.alias, key.limits)
    rates = rate_rules("key", key.alias, key.limits)
    for model, limit in (key.model_limits or {}).items():
        rates += rate_rules("key_model", key.alias, Limits(rpm=limit.rpm, tpm=limit.tpm), model)
    if team is not None:
        budgets += budget_rules("team", team.alias, team.limits)
        rates += rate_rules("team", team.alias, team.limits)
    if user is not None:
        budgets += budget_rules("user", user.alias, user.limits)
        rates += rate_rules("user", user.alias, user.limits)
    return Principal(
        key_id=key.id,
        key=key.alias,
        team=team.alias if team else NONE,
        user=user.alias if user else NONE,
        models=allowed_models(key, team),
        budgets=tuple(budgets),
        rates=tuple(rates),
        cache=_flag(key.metadata.get("cache")),
    )


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


class StoreDirectory:
    """Looks keys up in the store; the admin key (if configured) is a principal too."""

    def __init__(self, keys: Keys, teams: Teams, users: Users, admin_key: str | None) -> None:
        self._keys, self._teams, self._users = keys, teams, users
        self._admin_hash = hash_key(admin_key) if admin_key else None

    async def grant(self, key_hash: str) -> KeyGrant | None:
        if self._admin_hash is not None and key_hash == self._admin_hash:
            return KeyGrant(ADMIN, None, False)
        key = await self._keys.get_by_hash(key_hash)
        if key is None:
            return None
        team = await self._teams.get(key.team_id) if key.team_id else None
        user = await self._users.get(key.user_id) if key.user_id else None
        blocked = key.blocked or bool(team and team.blocked) or bool(user and user.blocked)
        return KeyGrant(principal_of(key, team, user), key.expires_at, blocked)


async def budget_rules_of(store: Store) -> list[BudgetRule]:
    """Every budget stored on a key, team, user or end user (for recovery and initial gauges)."""
    rules: list[BudgetRule] = []
    for key in await Keys(store.engine).list():
        rules += budget_rules("key", key.alias, key.limits)
    for team in await Teams(store.engine).list():
        rules += budget_rules("team", team.alias, team.limits)
    for user in await Users(store.engine).list():
        rules += budget_rules("user", user.alias, user.limits)
    for end_user in await EndUsers(store.engine).with_budget():
        rules += budget_rules("end_user", end_user.id, end_user.limits)
    return rules


async def rate_rules_of(store: Store) -> list[RateRule]:
    rules: list[RateRule] = []
    for key in await Keys(store.engine).list():
        rules += rate_rules("key", key.alias, key.limits)
        for model, limit in (key.model_limits or {}).items():
            rules += rate_rules("key_model", key.alias, Limits(rpm=limit.rpm, tpm=limit.tpm), model)
    for team in await Teams(store.engine).list():
        rules += rate_rules("team", team.alias, team.limits)
    for user in await Users(store.engine).list():
        rules += rate_rules("user", user.alias, user.limits)
    return rules
