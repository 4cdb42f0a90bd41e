"""Opening databases: SQLite files and PostgreSQL, and the per-test databases the store suites use.

``open_database`` is the one place the store tests get a database from: a
SQLite file under ``tmp_path``, or a fresh PostgreSQL database
(``tollhouse_test_<random>``) created through the maintenance database and
dropped afterwards. ``TOLLHOUSE_TEST_POSTGRES`` points at another server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from tests.conftest import need
from tollhouse.store import Store, create_engine, migrate, normalize_url
from tollhouse.store.migrate import alembic_config

BACKENDS = ["sqlite", "postgresql"]
POSTGRES = os.environ.get(
    "TOLLHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@asynccontextmanager
async def open_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of ``backend`` for one test; yields its SQLAlchemy URL."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tollhouse.db'}"
        return
    try:
        admin = await asyncpg.connect(POSTGRES, timeout=3)
    except (OSError, asyncpg.PostgresError) as err:
        where = normalize_url(POSTGRES).render_as_string(hide_password=True)
        need(False, f"PostgreSQL is not reachable at {where}: {err}")
        raise  # unreachable: need() skips or fails
    name = f"tollhouse_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = normalize_url(POSTGRES).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated store on a fresh database of ``backend``."""
    async with open_database(backend, tmp_path) as url:
        await migrate(url)
        async with Store(url) as store:
            yield store


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with open_database(request.param, tmp_path) as url:
        yield url


async def test_each_test_gets_an_empty_database(url: str) -> None:
    """The fixture's database has no tables until the test migrates it."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    finally:
        await engine.dispose()
    assert tables == []


async def test_ping_measures_a_round_trip(url: str) -> None:
    """ping() runs a query and returns the seconds it took."""
    async with Store(url) as store:
        assert 0 < await store.ping() < 5


def test_urls_without_an_async_driver_get_the_shipped_one() -> None:
    """sqlite:// and postgres(ql):// URLs mean aiosqlite and asyncpg."""
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"


async def test_relative_sqlite_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite+aiosqlite:///data/x.db creates ./data/x.db, directory included, and migrates."""
    monkeypatch.chdir(tmp_path)
    await migrate("sqlite+aiosqlite:///data/x.db")
    assert (tmp_path / "data" / "x.db").is_file()


async def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    """Every SQLite connection is configured, since pragmas are per connection."""
    async with Store(f"sqlite:///{tmp_path / 'x.db'}") as store, store.engine.connect() as conn:
        assert await conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(sa.text("PRAGMA busy_timeout")) == 5000
        assert await conn.scalar(sa.text("PRAGMA foreign_keys")) == 1


_MIGRATE_AT = """
import asyncio, sys, time
from tollhouse.store import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
asyncio.run(migrate(sys.argv[1]))
"""


async def test_replicas_starting_together_all_migrate_the_same_database(url: str) -> None:
    """Four processes migrate one fresh database at the same instant (``--workers 4``, or
    replicas rolled out together): every one starts, one applies the migrations and the
    rest find nothing to do. On SQLite a migration that read the schema before taking the
    write lock fails with "database is locked" when another writes first, however long
    the busy timeout: its snapshot is stale, so waiting cannot help."""
    start_at = time.time() + 2.0  # every interpreter imported and waiting by then
    argv = (sys.executable, "-c", _MIGRATE_AT, url, repr(start_at))
    out, err = asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT
    procs = [await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=err) for _ in range(4)]
    outputs = [(await p.communicate())[0].decode() for p in procs]
    failed = [out for p, out in zip(procs, outputs, strict=True) if p.returncode]
    assert not failed, failed[0]
    async with Store(url) as store, store.engine.connect() as conn:
        revision = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    assert revision == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
