"""A daily roll-up beside the hourly one; both are rebuilt from the ledger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Written by hand and frozen. The roll-ups are derived data: this revision empties
``ledger_hourly`` and resets the watermark, so the gateway folds the whole ledger
into both tables again (queries stay exact meanwhile: rows above the watermark
are read from the ledger itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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


def upgrade() -> None:
    op.create_table(
        "ledger_daily",
        sa.Column("bucket", sa.BigInteger, nullable=False),
        *(sa.Column(name, sa.String, nullable=False) for name in (*DIMENSIONS, "error_type")),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS),
        sa.Column("duration_ms_sum", sa.Float, nullable=False),
        sa.Column("ttft_ms_sum", sa.Float, nullable=False),
        sa.Column("last_ts", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("bucket", *DIMENSIONS, "error_type", name="pk_ledger_daily"),
    )
    op.execute("DELETE FROM ledger_hourly")
    op.execute("DELETE FROM rollup_state")


def downgrade() -> None:
    op.drop_table("ledger_daily")
    op.execute("DELETE FROM ledger_hourly")
    op.execute("DELETE FROM rollup_state")
