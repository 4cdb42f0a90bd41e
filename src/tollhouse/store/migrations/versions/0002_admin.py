"""Usage roll-ups (``ledger_hourly``, ``rollup_state``), the audit log, an end-user index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Written by hand and frozen, like 0001: it does not import ``tollhouse.store.tables``.
The roll-up starts empty with its watermark at 0; the gateway folds the existing
ledger into it in the background after the upgrade (queries are exact meanwhile,
reading the not-yet-folded rows from the ledger itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
BUCKETS_MS = (
    10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920, 163840, 327680,
)  # fmt: skip
DIMENSIONS = ("key_alias", "team", "user", "model", "backend", "provider", "outcome")
SUMS = (
    "requests", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "reasoning_tokens", "cost_pusd", "unpriced_requests",
    "duration_count", "ttft_count", *(f"lat_le_{b}" for b in BUCKETS_MS),
)  # fmt: skip


def _rollup() -> None:
    key = ["bucket", *DIMENSIONS, "error_type"]
    op.create_table(
        "ledger_hourly",
        sa.Column("bucket", sa.BigInteger, nullable=False),
        *(sa.Column(name, sa.String, nullable=False) for name in (*DIMENSIONS, "error_type")),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS),
        sa.Column("duration_ms_sum", sa.Float, nullable=False),
        sa.Column("ttft_ms_sum", sa.Float, nullable=False),
        sa.Column("last_ts", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(*key, name="pk_ledger_hourly"),
    )
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("watermark", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_rollup_state"),
    )


def _audit() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("ts", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("target_type", sa.String, nullable=False),
        sa.Column("target", sa.String, nullable=False),
        sa.Column("address", sa.String, nullable=True),
        sa.Column("request_id", sa.String, nullable=True),
        sa.Column("changes", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])
    op.create_index(
        "ix_audit_log_target_type_target_ts", "audit_log", ["target_type", "target", "ts"]
    )
    op.create_index("ix_audit_log_actor_ts", "audit_log", ["actor", "ts"])


def upgrade() -> None:
    _rollup()
    _audit()
    op.create_index("ix_ledger_end_user_ts", "ledger", ["end_user", "ts"])


def downgrade() -> None:
    op.drop_index("ix_ledger_end_user_ts", table_name="ledger")
    for table in ("audit_log", "rollup_state", "ledger_hourly"):
        op.drop_table(table)
