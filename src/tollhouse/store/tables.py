"""The schema, as SQLAlchemy Core tables (the one place column names are spelled).

Money is never a float. Budgets are integer nano-USD (1e-9), the unit the limits
backends count in. Ledger costs are integer pico-USD (1e-12): a price quoted
with up to 6 decimal places per million tokens is a whole number of pico-USD
per token, so every cost the gateway computes is stored exactly and sums over
millions of rows stay exact; a price with more decimal places rounds (half to
even) at 1e-12 USD per request. NULL cost means the model had no known price.

Timestamps are timezone-aware UTC in Python on every backend (see
``UtcDateTime``). ``versions/0001_initial.py`` creates the same schema by hand;
``tests/test_store.py`` checks the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

# Deterministic constraint names, the same on every backend, so later migrations can name them.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSON columns keep Python None as SQL NULL ("no restriction"), not the JSON value null.
Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid), never a BIGINT one.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which stores naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _limit_columns() -> list[sa.Column[Any]]:
    """Budget (nano-USD per period) and rate limits; NULL means no limit of that kind."""
    return [
        sa.Column("max_budget_nusd", sa.BigInteger, nullable=True),
        sa.Column("soft_budget_nusd", sa.BigInteger, nullable=True),
        sa.Column("budget_period", sa.String, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.BigInteger, nullable=True),
    ]


teams = sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("alias", sa.String, nullable=False, unique=True),
    *_limit_columns(),
    sa.Column("models", Json, nullable=True),  # NULL: every model
    sa.Column("metadata", Json, nullable=False),
    sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("alias", sa.String, nullable=False, unique=True),
    sa.Column("email", sa.String, nullable=True),
    sa.Column("team_id", sa.String, sa.ForeignKey("teams.id"), nullable=True, index=True),
    *_limit_columns(),
    sa.Column("metadata", Json, nullable=False),
    sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex of the secret
    sa.Column("key_prefix", sa.String, nullable=False),  # first 12 characters, for display
    sa.Column("alias", sa.String, nullable=False, unique=True),
    sa.Column("team_id", sa.String, sa.ForeignKey("teams.id"), nullable=True, index=True),
    sa.Column("user_id", sa.String, sa.ForeignKey("users.id"), nullable=True, index=True),
    sa.Column("models", Json, nullable=True),  # NULL: every model the team/user may use
    sa.Column("model_limits", Json, nullable=True),  # {model: {"rpm": n, "tpm": n}}
    sa.Column("metadata", Json, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=True),
    sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
    *_limit_columns(),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_used_at", UtcDateTime, nullable=True),
)

# Overrides for one client-supplied ``user`` string; absent rows use the configured default.
end_users = sa.Table(
    "end_users",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    *_limit_columns(),
)

# One row per UsageEvent. Text columns have no length limit and values are
# cleaned before insert, so no row can be refused and block the batches behind it.
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String, nullable=False, index=True),  # not unique: retries
    sa.Column("ts", UtcDateTime, nullable=False, index=True),  # the request's start
    sa.Column("operation", sa.String, nullable=False),
    sa.Column("key_alias", sa.String, nullable=False),
    sa.Column("team", sa.String, nullable=False),
    sa.Column("user", sa.String, nullable=False),
    sa.Column("end_user", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("backend", sa.String, nullable=False),
    sa.Column("provider", sa.String, nullable=False),
    sa.Column("upstream_model", sa.String, nullable=False),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_type", sa.String, nullable=True),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_write_input_tokens", sa.BigInteger, nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
    sa.Column("token_source", sa.String, nullable=False),
    sa.Column("cost_pusd", sa.BigInteger, nullable=True),  # pico-USD; NULL: unpriced
    sa.Column("price_source", sa.String, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=True),
    sa.Column("upstream_ms", sa.Float, nullable=True),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    # Unique per event, assigned by the writer: a retried batch's rows are skipped, not
    # doubled (NULL in rows written before revision 0004).
    sa.Column("event_id", sa.String, nullable=True),
    sa.Index("ux_ledger_event_id", "event_id", unique=True),
    sa.Index(None, "key_alias", "ts"),
    sa.Index(None, "team", "ts"),
    sa.Index(None, "model", "ts"),
    sa.Index(None, "backend", "ts"),
)

LEDGER_COLUMNS = tuple(c.name for c in ledger.columns if c.name != "id")
"""Every column a ledger row dict carries (``id`` is assigned by the database)."""

# --- admin API: roll-ups for usage analytics, their watermark, the audit log -------------

# Upper bounds (milliseconds) of the latency histogram kept per roll-up row: the buckets of
# ``llm_request_duration_seconds``, so percentiles from the API and from Prometheus'
# ``histogram_quantile`` are estimated from the same counts.
LATENCY_BUCKETS_MS = (
    10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920, 163840, 327680,
)  # fmt: skip
ROLLUP_DIMENSIONS = ("key_alias", "team", "user", "model", "backend", "provider")
ROLLUP_SUMS = (
    "requests", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "reasoning_tokens", "cost_pusd", "unpriced_requests",
    "duration_count", "ttft_count", *(f"lat_le_{b}" for b in LATENCY_BUCKETS_MS),
)  # fmt: skip


def _rollup(name: str) -> sa.Table:
    """The ledger folded into time buckets: one row per (bucket, who, where, outcome, error
    type). Counts, tokens and pico-USD are exact integer sums of the ledger rows folded in
    (``rollup_state`` says which); ``error_type`` is "" for rows without one, so it can sit
    in the primary key. End users are left out on purpose: they are unbounded and would make
    a roll-up as large as the ledger; end-user queries read the ledger through
    ``ix_ledger_end_user_ts``."""
    return sa.Table(
        name,
        metadata,
        sa.Column("bucket", sa.BigInteger, primary_key=True),  # unix seconds, bucket start (UTC)
        *(sa.Column(n, sa.String, primary_key=True) for n in ROLLUP_DIMENSIONS),
        sa.Column("outcome", sa.String, primary_key=True),
        sa.Column("error_type", sa.String, primary_key=True),
        *(sa.Column(n, sa.BigInteger, nullable=False) for n in ROLLUP_SUMS),
        sa.Column("duration_ms_sum", sa.Float, nullable=False),
        sa.Column("ttft_ms_sum", sa.Float, nullable=False),
        sa.Column("last_ts", UtcDateTime, nullable=False),
    )


# Hours serve windows and steps in whole hours; days serve long windows, where the hourly
# roll-up of a busy month is still hundreds of thousands of rows. Both are folded together.
ledger_hourly = _rollup("ledger_hourly")
ledger_daily = _rollup("ledger_daily")

# How far the ledger has been folded: every ledger row with ``id <= watermark`` is in the roll-up.
rollup_state = sa.Table(
    "rollup_state",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("watermark", sa.BigInteger, nullable=False),
)

# Every admin mutation: who (admin key alias), what, when, from where, and the change with
# secrets removed (``tollhouse.admin.audit`` redacts before anything reaches this table).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ts", UtcDateTime, nullable=False, index=True),
    sa.Column("actor", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=False),
    sa.Column("target_type", sa.String, nullable=False),
    sa.Column("target", sa.String, nullable=False),
    sa.Column("address", sa.String, nullable=True),
    sa.Column("request_id", sa.String, nullable=True),
    sa.Column("changes", Json, nullable=True),
    sa.Index(None, "target_type", "target", "ts"),
    sa.Index(None, "actor", "ts"),
)

# Usage of one end user over a long window reads the ledger; this keeps that a range scan.
ledger_end_user_ts = sa.Index("ix_ledger_end_user_ts", ledger.c.end_user, ledger.c.ts)
