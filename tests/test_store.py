"""The store's contract, the same on SQLite and PostgreSQL: schema, repositories, spend sums."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.test_store_engine import BACKENDS, open_database
from tollhouse.store import (
    Conflict,
    Limits,
    MissingReference,
    ModelLimit,
    Store,
    migrate,
)
from tollhouse.store.migrate import MIGRATIONS
from tollhouse.store.tables import LEDGER_COLUMNS, metadata

TABLES = {"teams", "users", "api_keys", "end_users", "ledger", "alembic_version",
          "ledger_hourly", "ledger_daily", "rollup_state", "audit_log"}  # fmt: skip
HASH_A, HASH_B = "a" * 64, "b" * 64


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with open_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    await migrate(url)
    async with Store(url) as store:
        yield store


async def _tables(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def test_migrate_creates_every_table_and_is_idempotent(url: str) -> None:
    """A second upgrade finds the database at head and changes nothing."""
    await migrate(url)
    await migrate(url)
    async with Store(url) as store:
        assert await _tables(store) == TABLES
        async with store.engine.connect() as conn:
            versions = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).all()
    assert [v for (v,) in versions] == ["0004"]


async def test_migrated_schema_matches_the_tables_module(store: Store) -> None:
    """Alembic's comparison finds no difference between the migration and tables.py."""

    def diff(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


def test_the_migration_environment_lives_in_the_package() -> None:
    """env.py, the revision template and the revisions are package files, which hatch ships."""
    assert (MIGRATIONS / "env.py").is_file()
    assert (MIGRATIONS / "script.py.mako").is_file()
    assert (MIGRATIONS / "versions" / "0001_initial.py").is_file()


async def test_teams_round_trip(store: Store) -> None:
    """create, get, get_by_alias, list, update (only the given fields) and block."""
    limits = Limits(max_budget_nusd=5 * 10**9, soft_budget_nusd=4 * 10**9, budget_period="monthly")
    team = await store.teams.create("core", limits=limits, models=["gpt"], metadata={"cc": "42"})
    assert team.alias == "core" and team.limits == limits and team.models == ("gpt",)
    assert team.metadata == {"cc": "42"} and not team.blocked
    assert team.created_at.tzinfo == UTC
    assert await store.teams.get(team.id) == team
    assert await store.teams.get_by_alias("core") == team
    other = await store.teams.create("apps")
    assert other.models is None and other.limits == Limits()
    assert [t.alias for t in await store.teams.list()] == ["apps", "core"]
    assert [t.alias for t in await store.teams.list(limit=1, offset=1)] == ["core"]

    updated = await store.teams.update(team.id, alias="platform", models=None)
    assert updated is not None
    assert (updated.alias, updated.models, updated.limits) == ("platform", None, limits)
    blocked = await store.teams.block(team.id)
    assert blocked is not None and blocked.blocked
    assert await store.teams.update("nope", alias="x") is None
    assert await store.teams.get("nope") is None


async def test_users_round_trip(store: Store) -> None:
    """Users belong to an existing team or none; a missing team is refused."""
    team = await store.teams.create("core")
    user = await store.users.create("ada", email="ada@example.com", team_id=team.id)
    await store.users.create("bob")
    assert await store.users.get_by_alias("ada") == user
    assert [u.alias for u in await store.users.list(team_id=team.id)] == ["ada"]
    assert len(await store.users.list()) == 2
    updated = await store.users.update(user.id, email=None, limits=Limits(rpm=10, tpm=10**12))
    assert updated is not None and updated.email is None and updated.team_id == team.id
    assert updated.limits == Limits(rpm=10, tpm=10**12)
    with pytest.raises(MissingReference):
        await store.users.create("eve", team_id="no-such-team")


async def test_keys_round_trip(store: Store) -> None:
    """Keys are found by hash; every field survives; touch records the last use."""
    team = await store.teams.create("core")
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    key = await store.keys.create(
        key_hash=HASH_A,
        key_prefix="sk-th-abcdef",
        alias="ci",
        team_id=team.id,
        models=["gpt", "claude"],
        model_limits={"gpt": ModelLimit(rpm=5, tpm=None)},
        metadata={"owner": "ci"},
        expires_at=expires.astimezone(timezone(timedelta(hours=2))),
        limits=Limits(max_budget_nusd=1),
    )
    assert key.expires_at == expires and key.expires_at.tzinfo == UTC
    assert key.model_limits == {"gpt": ModelLimit(rpm=5, tpm=None)}
    assert await store.keys.get_by_hash(HASH_A) == key
    assert await store.keys.get_by_hash(HASH_B) is None
    assert await store.keys.get_by_alias("ci") == key
    assert key.last_used_at is None
    used = datetime(2031, 1, 1, tzinfo=UTC)
    await store.keys.touch(key.id, used)
    touched = await store.keys.get(key.id)
    assert touched is not None and touched.last_used_at == used

    updated = await store.keys.update(key.id, models=None, model_limits=None, expires_at=None)
    assert updated is not None
    assert (updated.models, updated.model_limits, updated.expires_at) == (None, None, None)
    assert updated.metadata == {"owner": "ci"}
    other = await store.keys.create(key_hash=HASH_B, key_prefix="sk-th-zzzz", alias="dev")
    assert [k.alias for k in await store.keys.list(team_id=team.id)] == ["ci"]
    assert [k.alias for k in await store.keys.list()] == ["ci", "dev"]
    blocked = await store.keys.block(other.id)
    assert blocked is not None and blocked.blocked


async def test_keys_refuse_what_looks_like_a_raw_secret(store: Store) -> None:
    """Only a sha256 hex digest and a short display prefix may be stored."""
    with pytest.raises(ValueError, match="sha256"):
        await store.keys.create(key_hash="sk-th-secret", key_prefix="sk-th", alias="x")
    with pytest.raises(ValueError, match="key_prefix"):
        await store.keys.create(key_hash=HASH_A, key_prefix="sk-th-" + "s" * 40, alias="x")


async def test_aliases_and_key_hashes_are_unique(store: Store) -> None:
    """A taken alias or key hash is a Conflict, on create and on update."""
    await store.teams.create("core")
    with pytest.raises(Conflict):
        await store.teams.create("core")
    await store.users.create("ada")
    with pytest.raises(Conflict):
        await store.users.create("ada")
    await store.keys.create(key_hash=HASH_A, key_prefix="sk-a", alias="one")
    with pytest.raises(Conflict):
        await store.keys.create(key_hash=HASH_A, key_prefix="sk-a", alias="two")
    with pytest.raises(Conflict):
        await store.keys.create(key_hash=HASH_B, key_prefix="sk-b", alias="one")
    apps = await store.teams.create("apps")
    with pytest.raises(Conflict):
        await store.teams.update(apps.id, alias="core")


async def test_end_user_overrides_upsert(store: Store) -> None:
    """upsert creates the override, then replaces it."""
    assert await store.end_users.get("user-1") is None
    await store.end_users.upsert("user-1", Limits(max_budget_nusd=10, budget_period="daily"))
    await store.end_users.upsert("user-1", Limits(max_budget_nusd=20))
    got = await store.end_users.get("user-1")
    assert got is not None and got.limits == Limits(max_budget_nusd=20)


def ledger_row(ts: datetime, cost: Decimal | None, **fields: Any) -> dict[str, Any]:
    """A ledger row with neutral values; ``cost`` in USD becomes pico-USD."""
    row: dict[str, Any] = dict.fromkeys(LEDGER_COLUMNS, "x")
    row.update(ts=ts, stream=False, status=200, error_type=None, price_source=None)
    row.update({c: 0 for c in LEDGER_COLUMNS if c.endswith("_tokens")})
    row.update(duration_ms=1.0, upstream_ms=None, ttft_ms=None)
    row["cost_pusd"] = None if cost is None else int(cost.scaleb(12))
    row["event_id"] = uuid.uuid4().hex  # unique, as the writer makes them
    row.update(fields)
    return row


async def test_spend_since_sums_pico_usd_exactly(store: Store) -> None:
    """Per-entity sums are exact to 1e-12 USD, skip unpriced and older rows, and pass 2**63."""
    now = datetime(2026, 3, 1, tzinfo=UTC)
    tiny, big, huge = Decimal("0.000000000001"), Decimal("1234.567890123456"), Decimal("4000000")
    rows = [
        ledger_row(now, tiny, team="a"),
        ledger_row(now, big, team="a"),
        ledger_row(now, None, team="a"),
        ledger_row(now - timedelta(seconds=1), big, team="a"),  # before the window
        ledger_row(now, None, team="unpriced"),
        *(ledger_row(now + timedelta(days=1), huge, team="whale") for _ in range(3)),
    ]
    await store.ledger.insert(rows)
    spend = await store.ledger.spend_since("team", now)
    assert spend == {"a": int((tiny + big).scaleb(12)), "whale": int((3 * huge).scaleb(12))}
    assert Decimal(spend["a"]).scaleb(-12) == Decimal("1234.567890123457")
    assert spend["whale"] > 2**63
    assert await store.ledger.spend_since("team", now.timestamp() + 1) == {"whale": spend["whale"]}
    assert await store.ledger.count_rows() == len(rows)
    with pytest.raises(ValueError, match="scope"):
        await store.ledger.spend_since("model; DROP TABLE ledger", now)  # type: ignore[arg-type]


async def test_a_batch_is_a_few_multi_row_inserts(store: Store) -> None:
    """500 rows go to the database as one executemany on PostgreSQL. On SQLite none goes
    through the engine: the ledger's appender writes them from the loop's thread
    (tests/test_ledger_sqlite.py; tests/test_ledger_writer.py has the rows per statement)."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split("(")[0].strip())

    now = datetime.now(UTC)
    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    await store.ledger.insert([ledger_row(now, Decimal(i)) for i in range(500)])
    sa.event.remove(store.engine.sync_engine, "before_cursor_execute", record)
    expected = 0 if store.dialect == "sqlite" else 1
    assert statements.count("INSERT INTO ledger") == expected
    assert await store.ledger.count_rows() == 500
