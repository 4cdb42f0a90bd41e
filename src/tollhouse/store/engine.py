"""Opening the database: one async engine per process, SQLite or PostgreSQL.

The same SQLAlchemy Core code runs on both; only connection setup differs.
SQLite gets WAL (readers never block the ledger writer) and a busy timeout
(a writer waits for another instead of failing at once), set on every new
connection because SQLite pragmas are per connection. SQLite also gets real
transactions: the driver's default defers ``BEGIN`` until the first DML
statement, which would leave DDL (a half-applied migration) outside them.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tollhouse.store.ledger import LedgerRepo
from tollhouse.store.repos import EndUsers, Keys, Teams, Users
from tollhouse.store.sqlite import SQLITE_BUSY_TIMEOUT_MS, is_sqlite_file

# A URL without an async driver gets the one tollhouse ships with.
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def normalize_url(url: str | URL) -> URL:
    """``sqlite:///x.db`` and ``postgres(ql)://…`` mean the async drivers tollhouse ships with."""
    parsed = make_url(url)
    if parsed.drivername == "postgres":  # the spelling libpq and many hosting providers use
        parsed = parsed.set(drivername="postgresql")
    return parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))


def create_engine(
    url: str | URL, timeout: float | None = None, *, write_first: bool = False
) -> AsyncEngine:
    """An async engine for ``url``; a relative SQLite path is relative to the working directory.

    The directory of a SQLite file is created if missing, so ``sqlite:///data/x.db``
    works on a fresh machine. Bound parameters are kept out of error messages:
    they are usage data and do not belong in logs.

    ``timeout`` bounds, for a server database, connecting, each statement and the wait
    for a pooled connection: a database that stops answering (a network partition
    drops packets rather than refusing them) otherwise holds every request that
    needs it until TCP gives up, hours later. Migrations pass none: building an
    index on a large ledger may take longer.

    ``write_first`` makes every SQLite transaction take the write lock as it begins
    (``BEGIN IMMEDIATE``), for a transaction that reads and then writes while another
    process may write the same file: migrations. A plain ``BEGIN`` reads from a
    snapshot and asks for the lock only at its first write; if another connection
    wrote in between, that snapshot is stale and SQLite fails the write at once
    ("database is locked") instead of waiting out the busy timeout.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        if timeout is None:
            return create_async_engine(parsed, hide_parameters=True, pool_pre_ping=True)
        return create_async_engine(
            parsed, hide_parameters=True, pool_pre_ping=True, pool_timeout=timeout,
            connect_args={"timeout": timeout, "command_timeout": timeout},
        )  # fmt: skip
    if is_sqlite_file(parsed):
        assert parsed.database is not None
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, hide_parameters=True)
    sa.event.listen(engine.sync_engine, "connect", _configure_sqlite)
    sa.event.listen(engine.sync_engine, "begin", _begin_writing if write_first else _begin_sqlite)
    return engine


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the database could not be reached (refused, timed out, the
    connection lost), as opposed to a statement it refused: a caller may answer 503 and
    expect the same call to work later."""
    if isinstance(err, OSError):  # refused, reset, and TimeoutError (connect, command)
        return True
    if isinstance(err, sa.exc.DBAPIError):
        return err.connection_invalidated or isinstance(
            err, (sa.exc.OperationalError, sa.exc.InterfaceError)
        )
    return False


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (_begin_sqlite)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores REFERENCES without it
    finally:
        cursor.close()


def _begin_sqlite(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def _begin_writing(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """The engine and the repositories over it; opened and closed by the app's lifespan."""

    def __init__(self, url: str | URL, timeout: float | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url, timeout)
        self.teams = Teams(self.engine)
        self.users = Users(self.engine)
        self.keys = Keys(self.engine)
        self.end_users = EndUsers(self.engine)
        self.ledger = LedgerRepo(self.engine)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    async def ping(self) -> float:
        """Seconds for one ``SELECT 1`` round trip (including taking a pooled connection)."""
        start = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return time.perf_counter() - start

    async def aclose(self) -> None:
        """Close every pooled connection (SQLite's connection threads included)."""
        await self.ledger.aclose()
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
