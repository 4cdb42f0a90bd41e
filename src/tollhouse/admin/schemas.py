"""Request and response bodies of the management routes (they make the OpenAPI schema).

Inputs are bounded so that nothing a client sends can reach the database as a
value it refuses (a NUL byte, a lone surrogate, a number past BIGINT, a naive
or out-of-range timestamp): such input is a 400, never a 500.
Money is USD as a decimal (number or string) in, a decimal string out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tollhouse.identity.keys import PREFIX
from tollhouse.limits.base import NANO
from tollhouse.store.models import (
    MAX_RPM,
    MAX_TPM,
    MAX_USD,
    ApiKey,
    EndUser,
    Limits,
    Team,
    User,
)


def _clean(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _sane_time(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)  # an offset can push year 1 or 9999 out of range
    except OverflowError:
        raise ValueError("must be between the years 2000 and 9000") from None
    if not 2000 <= utc.year <= 9000:
        raise ValueError("must be between the years 2000 and 9000")
    return utc


Text = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_clean)]


def _not_a_secret(value: str) -> str:
    """A key pasted where its alias belongs must not travel on (into queries, driver logs)."""
    if value.startswith(PREFIX) and len(value) >= 20:
        raise ValueError("this looks like a secret key, not an alias; never send keys here")
    return value


Alias = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$"), AfterValidator(_not_a_secret)]
Models = Annotated[list[Text], Field(max_length=1000)]
Usd = Annotated[Decimal, Field(gt=0, le=MAX_USD, decimal_places=9, allow_inf_nan=False)]
Rpm = Annotated[int, Field(ge=1, le=MAX_RPM)]
Tpm = Annotated[int, Field(ge=1, le=MAX_TPM)]
Period = Annotated[str, Field(pattern=r"^(hourly|daily|weekly|monthly|[1-9][0-9]{0,3}[mhdw])$")]
Timestamp = Annotated[datetime, AfterValidator(_sane_time)]
Scalar = Text | Annotated[int, Field(ge=-(2**53), le=2**53)] | bool | None
Metadata = Annotated[dict[Text, Scalar], Field(max_length=50)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsIn(_In):
    """Budget (USD per period) and rate limits; in an update only the fields sent change,
    and ``null`` removes a limit."""

    max_budget_usd: Usd | None = None
    soft_budget_usd: Usd | None = None
    budget_period: Period | None = None
    rpm: Rpm | None = None
    tpm: Tpm | None = None


class LimitsOut(BaseModel):
    max_budget_usd: str | None
    soft_budget_usd: str | None
    budget_period: str | None
    rpm: int | None
    tpm: int | None

    @classmethod
    def of(cls, limits: Limits) -> LimitsOut:
        return cls(
            max_budget_usd=_usd(limits.max_budget_nusd),
            soft_budget_usd=_usd(limits.soft_budget_nusd),
            budget_period=limits.budget_period, rpm=limits.rpm, tpm=limits.tpm,
        )  # fmt: skip


def _usd(nano: int | None) -> str | None:
    return None if nano is None else str(Decimal(nano) / NANO)


class ModelLimitIn(_In):
    rpm: Rpm | None = None
    tpm: Tpm | None = None


ModelLimits = Annotated[dict[Text, ModelLimitIn], Field(max_length=200)]


class TeamCreate(_In):
    alias: Alias
    limits: LimitsIn = Field(default_factory=LimitsIn)
    models: Models | None = None
    metadata: Metadata = Field(default_factory=dict)


class TeamUpdate(_In):
    alias: Alias | None = None
    limits: LimitsIn | None = None
    models: Models | None = None
    metadata: Metadata | None = None


class TeamOut(BaseModel):
    id: str
    alias: str
    limits: LimitsOut
    models: list[str] | None
    metadata: dict[str, Any]
    blocked: bool
    created_at: datetime

    @classmethod
    def of(cls, t: Team) -> TeamOut:
        return cls(id=t.id, alias=t.alias, limits=LimitsOut.of(t.limits),
                   models=list(t.models) if t.models is not None else None,
                   metadata=dict(t.metadata), blocked=t.blocked, created_at=t.created_at)  # fmt: skip


class UserCreate(_In):
    alias: Alias
    email: Text | None = None
    team: Alias | None = None
    limits: LimitsIn = Field(default_factory=LimitsIn)
    metadata: Metadata = Field(default_factory=dict)


class UserUpdate(_In):
    alias: Alias | None = None
    email: Text | None = None
    team: Alias | None = None
    limits: LimitsIn | None = None
    metadata: Metadata | None = None


class UserOut(BaseModel):
    id: str
    alias: str
    email: str | None
    team_id: str | None
    limits: LimitsOut
    metadata: dict[str, Any]
    blocked: bool
    created_at: datetime

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(id=u.id, alias=u.alias, email=u.email, team_id=u.team_id,
                   limits=LimitsOut.of(u.limits), metadata=dict(u.metadata),
                   blocked=u.blocked, created_at=u.created_at)  # fmt: skip


class KeyCreate(_In):
    alias: Alias
    team: Alias | None = None
    user: Alias | None = None
    models: Models | None = None
    model_limits: ModelLimits | None = None
    limits: LimitsIn = Field(default_factory=LimitsIn)
    expires_in: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}[mhdw]$")] | None = None
    expires_at: Timestamp | None = None
    metadata: Metadata = Field(default_factory=dict)


class KeyUpdate(_In):
    alias: Alias | None = None
    models: Models | None = None
    model_limits: ModelLimits | None = None
    limits: LimitsIn | None = None
    expires_at: Timestamp | None = None
    metadata: Metadata | None = None


class ModelLimitOut(BaseModel):
    rpm: int | None
    tpm: int | None


class KeyOut(BaseModel):
    id: str
    alias: str
    prefix: str = Field(description="the first characters of the secret, for recognising it")
    team_id: str | None
    user_id: str | None
    models: list[str] | None
    model_limits: dict[str, ModelLimitOut] | None
    limits: LimitsOut
    metadata: dict[str, Any]
    expires_at: datetime | None
    blocked: bool
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, k: ApiKey) -> KeyOut:
        limits = None if k.model_limits is None else {
            m: ModelLimitOut(rpm=v.rpm, tpm=v.tpm) for m, v in k.model_limits.items()
        }  # fmt: skip
        return cls(id=k.id, alias=k.alias, prefix=k.key_prefix, team_id=k.team_id,
                   user_id=k.user_id, models=list(k.models) if k.models is not None else None,
                   model_limits=limits, limits=LimitsOut.of(k.limits),
                   metadata=dict(k.metadata), expires_at=k.expires_at, blocked=k.blocked,
                   created_at=k.created_at, last_used_at=k.last_used_at)  # fmt: skip


class KeyCreated(KeyOut):
    secret: str = Field(description="the key itself: shown in this response only, never again")


class EndUserSet(_In):
    limits: LimitsIn


class EndUserOut(BaseModel):
    id: str
    limits: LimitsOut

    @classmethod
    def of(cls, e: EndUser) -> EndUserOut:
        return cls(id=e.id, limits=LimitsOut.of(e.limits))


class Deleted(BaseModel):
    deleted: bool = True
    kind: str
    alias: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI-style error body, as on the proxy routes."""

    error: ErrorDetail
