"""A unique ``event_id`` per ledger row, so a retried batch is written once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Written by hand and frozen. A batch whose commit succeeded but whose acknowledgement
was lost (the connection dropped in between) is retried by the writer; with this
column and its unique index the retry's rows conflict and are skipped
(``ON CONFLICT (event_id) DO NOTHING``) instead of being counted twice. Rows written
before this revision keep ``NULL`` (a unique index admits many ``NULL``s).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ledger", sa.Column("event_id", sa.String, nullable=True))
    op.create_index("ux_ledger_event_id", "ledger", ["event_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_ledger_event_id", table_name="ledger")
    with op.batch_alter_table("ledger") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("event_id")
