"""What the repositories return: plain frozen records, and the store's own errors.

Records carry money as integer nano-USD, like the limits backends, so a budget
read from the store goes into a limiter without a conversion. ``None`` in a
limit means "no limit of that kind"; ``None`` in ``models`` means "every model".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

# The largest limits a key, team, user or end user may have (the admin API and the CLI
# check them; an rpm is a 32-bit column on PostgreSQL, tokens stay exact as doubles in
# Redis's scripts, money is nano-USD).
MAX_USD = Decimal(10**9)
MAX_RPM = 2**31 - 1
MAX_TPM = 2**53


class StoreError(Exception):
    """A write the database refused for a reason the caller can act on."""


class Conflict(StoreError):
    """A value that must be unique (an alias, a key hash) is already taken."""


class MissingReference(StoreError):
    """A ``team_id`` or ``user_id`` names a row that does not exist."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Spend per ``budget_period`` (nano-USD) and requests/tokens per minute."""

    max_budget_nusd: int | None = None
    soft_budget_nusd: int | None = None
    budget_period: str | None = None
    rpm: int | None = None
    tpm: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class ModelLimit:
    """A key's rate limits for one model."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    alias: str
    limits: Limits
    models: tuple[str, ...] | None
    metadata: Mapping[str, Any]
    blocked: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class User:
    id: str
    alias: str
    email: str | None
    team_id: str | None
    limits: Limits
    metadata: Mapping[str, Any]
    blocked: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A virtual key. The secret itself is never stored: only its sha256 and a display prefix."""

    id: str
    key_hash: str
    key_prefix: str
    alias: str
    team_id: str | None
    user_id: str | None
    models: tuple[str, ...] | None
    model_limits: Mapping[str, ModelLimit] | None
    metadata: Mapping[str, Any]
    expires_at: datetime | None
    blocked: bool
    limits: Limits
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class EndUser:
    """Overrides for one client-supplied ``user`` string (``id`` is that string)."""

    id: str
    limits: Limits
