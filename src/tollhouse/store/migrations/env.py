"""Alembic's entry point for tollhouse's schema.

``tollhouse.store.migrate`` runs it with a connection already open (passed in
``config.attributes["connection"]``), so migrations share the caller's event
loop. Run by hand (``alembic`` with a config from ``migrate.alembic_config``)
it opens its own async engine, or renders SQL in offline mode.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from tollhouse.store.engine import create_engine
from tollhouse.store.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def _main() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        assert url is not None, "sqlalchemy.url is not set"
        asyncio.run(_run_with_own_engine(url))


_main()
