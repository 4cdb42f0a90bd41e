"""Managing keys, teams and users: the operations the CLI (and later the admin API) share.

Money comes in as USD (``Decimal``) and is stored as integer nano-USD; a new
key's secret is returned exactly once and only its hash is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tollhouse.identity import keys as keygen
from tollhouse.limits.periods import parse_period
from tollhouse.limits.policy import nano_usd
from tollhouse.store.engine import Store
from tollhouse.store.models import ApiKey, EndUser, Limits, ModelLimit, Team, User
from tollhouse.store.repos import EndUsers, Keys, Teams, Users


@dataclass(frozen=True, slots=True)
class LimitsInput:
    max_budget_usd: Decimal | None = None
    soft_budget_usd: Decimal | None = None
    budget_period: str | None = None
    rpm: int | None = None
    tpm: int | None = None

    def to_limits(self) -> Limits:
        if self.budget_period is not None:
            parse_period(self.budget_period)  # raises ValueError with a clear message
        if self.soft_budget_usd is not None and self.max_budget_usd is None:
            raise ValueError("a soft budget needs a max budget")
        if self.soft_budget_usd is not None and self.max_budget_usd is not None \
                and self.soft_budget_usd > self.max_budget_usd:  # fmt: skip
            raise ValueError("the soft budget must not exceed the max budget")
        for name, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        return Limits(
            max_budget_nusd=nano_usd(self.max_budget_usd)
            if self.max_budget_usd is not None
            else None,
            soft_budget_nusd=nano_usd(self.soft_budget_usd)
            if self.soft_budget_usd is not None
            else None,
            budget_period=self.budget_period,
            rpm=self.rpm,
            tpm=self.tpm,
        )


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, never stored


def expiry(duration: str | None, now: datetime | None = None) -> datetime | None:
    """``30d``, ``12h``, ``90m``, ``2w`` from now (UTC), or ``None``."""
    if not duration:
        return None
    units = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = duration[:-1], duration[-1:]
    if unit not in units or not number.isdigit() or int(number) < 1:
        raise ValueError(f"invalid duration {duration!r}: use a number followed by m, h, d or w")
    try:
        at = (now or datetime.now(UTC)) + timedelta(seconds=int(number) * units[unit])
    except OverflowError:
        at = datetime.max.replace(tzinfo=UTC)
    if at.year > 9000:  # the admin API's bound for expires_at
        raise ValueError(f"invalid duration {duration!r}: expires after the year 9000")
    return at


class Manager:
    def __init__(self, store: Store) -> None:
        self.keys = Keys(store.engine)
        self.teams = Teams(store.engine)
        self.users = Users(store.engine)
        self.end_users = EndUsers(store.engine)

    async def _team_id(self, alias: str | None) -> str | None:
        if alias is None:
            return None
        team = await self.teams.get_by_alias(alias)
        if team is None:
            raise LookupError(f"no team with alias {alias!r}")
        return team.id

    async def _user_id(self, alias: str | None) -> str | None:
        if alias is None:
            return None
        user = await self.users.get_by_alias(alias)
        if user is None:
            raise LookupError(f"no user with alias {alias!r}")
        return user.id

    async def create_team(
        self, alias: str, limits: LimitsInput, models: Sequence[str] | None
    ) -> Team:
        return await self.teams.create(alias=alias, limits=limits.to_limits(), models=models)

    async def create_user(self, alias: str, limits: LimitsInput, team: str | None = None,
                          email: str | None = None) -> User:  # fmt: skip
        team_id = await self._team_id(team)
        return await self.users.create(alias=alias, email=email, team_id=team_id,
                                       limits=limits.to_limits())  # fmt: skip

    async def create_key(
        self,
        alias: str,
        *,
        team: str | None = None,
        user: str | None = None,
        models: Sequence[str] | None = None,
        model_limits: dict[str, ModelLimit] | None = None,
        limits: LimitsInput = LimitsInput(),
        expires_in: str | None = None,
        cache: bool | None = None,
    ) -> NewKey:
        secret, key_hash, prefix = keygen.generate()
        team_id, user_id = await self._team_id(team), await self._user_id(user)
        key = await self.keys.create(
            key_hash=key_hash, key_prefix=prefix, alias=alias,
            team_id=team_id, user_id=user_id,
            models=models, model_limits=model_limits, limits=limits.to_limits(),
            expires_at=expiry(expires_in),
            metadata={} if cache is None else {"cache": cache},
        )  # fmt: skip
        return NewKey(key, secret)

    async def set_end_user(self, end_user: str, limits: LimitsInput) -> EndUser:
        """Give one end user (the request's ``user`` string) its own budget and limits."""
        return await self.end_users.upsert(end_user, limits.to_limits())

    async def block_key(self, alias: str, blocked: bool = True) -> ApiKey:
        key = await self.keys.get_by_alias(alias)
        if key is None:
            raise LookupError(f"no key with alias {alias!r}")
        updated = await self.keys.block(key.id, blocked)
        assert updated is not None
        return updated
