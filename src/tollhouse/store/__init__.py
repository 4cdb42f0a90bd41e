"""Persistence: SQLAlchemy Core tables, migrations, SQLite (default) and PostgreSQL.

``Store`` owns the engine and the repositories; ``migrate`` brings a database
to the latest schema. Everything else in this package is an implementation detail.
"""

from tollhouse.store.crud import UNSET, Unset
from tollhouse.store.engine import Store, create_engine, normalize_url
from tollhouse.store.ledger import SPEND_SCOPES, LedgerRepo, SpendScope
from tollhouse.store.migrate import migrate
from tollhouse.store.models import (
    NO_LIMITS,
    ApiKey,
    Conflict,
    EndUser,
    Limits,
    MissingReference,
    ModelLimit,
    StoreError,
    Team,
    User,
)
from tollhouse.store.repos import EndUsers, Keys, Teams, Users

__all__ = [
    "NO_LIMITS",
    "SPEND_SCOPES",
    "UNSET",
    "ApiKey",
    "Conflict",
    "EndUser",
    "EndUsers",
    "Keys",
    "LedgerRepo",
    "Limits",
    "MissingReference",
    "ModelLimit",
    "SpendScope",
    "Store",
    "StoreError",
    "Team",
    "Teams",
    "Unset",
    "User",
    "Users",
    "create_engine",
    "migrate",
    "normalize_url",
]
