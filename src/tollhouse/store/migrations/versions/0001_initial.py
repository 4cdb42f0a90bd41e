"""Teams, users, virtual keys, end-user overrides and the spend ledger.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand and frozen: it must not import ``tollhouse.store.tables``,
which describes the *latest* schema, not this revision's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _limits() -> list[sa.Column[Any]]:
    return [
        sa.Column("max_budget_nusd", sa.BigInteger, nullable=True),
        sa.Column("soft_budget_nusd", sa.BigInteger, nullable=True),
        sa.Column("budget_period", sa.String, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.BigInteger, nullable=True),
    ]


def _identity_tables() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("alias", sa.String, nullable=False),
        *_limits(),
        sa.Column("models", JSON, nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.UniqueConstraint("alias", name="uq_teams_alias"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("alias", sa.String, nullable=False),
        sa.Column("email", sa.String, nullable=True),
        sa.Column("team_id", sa.String, nullable=True),
        *_limits(),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("alias", name="uq_users_alias"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_users_team_id_teams"),
    )
    op.create_index("ix_users_team_id", "users", ["team_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_prefix", sa.String, nullable=False),
        sa.Column("alias", sa.String, nullable=False),
        sa.Column("team_id", sa.String, nullable=True),
        sa.Column("user_id", sa.String, nullable=True),
        sa.Column("models", JSON, nullable=True),
        sa.Column("model_limits", JSON, nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
        *_limits(),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.UniqueConstraint("alias", name="uq_api_keys_alias"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_api_keys_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
    )
    op.create_index("ix_api_keys_team_id", "api_keys", ["team_id"])
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "end_users",
        sa.Column("id", sa.String, nullable=False),
        *_limits(),
        sa.PrimaryKeyConstraint("id", name="pk_end_users"),
    )


def _ledger() -> None:
    text = ["operation", "key_alias", "team", "user", "end_user", "model", "backend"]
    text += ["provider", "upstream_model"]
    tokens = ["input", "output", "cached_input", "cache_write_input", "reasoning"]
    op.create_table(
        "ledger",
        # SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid).
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("request_id", sa.String, nullable=False),
        sa.Column("ts", TIMESTAMP, nullable=False),
        *(sa.Column(name, sa.String, nullable=False) for name in text),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String, nullable=True),
        *(sa.Column(f"{name}_tokens", sa.BigInteger, nullable=False) for name in tokens),
        sa.Column("token_source", sa.String, nullable=False),
        sa.Column("cost_pusd", sa.BigInteger, nullable=True),
        sa.Column("price_source", sa.String, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("upstream_ms", sa.Float, nullable=True),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ledger"),
    )
    op.create_index("ix_ledger_request_id", "ledger", ["request_id"])
    op.create_index("ix_ledger_ts", "ledger", ["ts"])
    for column in ("key_alias", "team", "model", "backend"):
        op.create_index(f"ix_ledger_{column}_ts", "ledger", [column, "ts"])


def upgrade() -> None:
    _identity_tables()
    _ledger()


def downgrade() -> None:
    for table in ("ledger", "end_users", "api_keys", "users", "teams"):
        op.drop_table(table)
