"""The background folder: what it folds, when, and what each fold costs the event loop.

The folder runs on the gateway's event loop every ``rollup_interval`` seconds, so
whatever it does in Python is a stall in front of the requests arriving meanwhile.
These tests pin down that a fold only executes statements (built once, reused) and
issues no more of them than it needs, besides folding the right rows.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.test_admin_analytics import _row
from tests.test_store_engine import BACKENDS, open_store
from tollhouse.admin.background import Folder
from tollhouse.store import rollup
from tollhouse.store.engine import Store
from tollhouse.store.tables import ledger_hourly


def _rows(start: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(start)
    return [_row(i, datetime.now(UTC), rng) for i in range(start, start + count)]


async def _hourly_requests(store: Store) -> int:
    async with store.engine.connect() as conn:
        total = await conn.scalar(sa.select(sa.func.sum(ledger_hourly.c.requests)))
    return int(total or 0)


def _statements(store: Store) -> list[str]:
    """The verb of every query and write the store's engine sends from now on."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.split(None, 1)[0].upper()
        if verb in ("SELECT", "INSERT", "UPDATE"):  # not SQLite's explicit BEGIN
            seen.append(verb)

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_fold_folds_the_new_rows_and_builds_no_statement(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = rollup._upsert

    def counted(dialect: str, table: Any, size: int) -> Any:
        built.append(table.name)
        return original(dialect, table, size)

    monkeypatch.setattr(rollup, "_upsert", counted)
    monkeypatch.setattr(rollup, "_UPSERTS", {})
    async with open_store(backend, tmp_path) as store:
        folder = Folder(store.engine, interval=3600, settle=0)
        total = 0
        for n in range(4):
            await store.ledger.insert(_rows(n * 100, 40))
            assert await folder.fold_once() == 40
            total += 40
            assert await _hourly_requests(store) == total
        assert sorted(built) == ["ledger_daily", "ledger_hourly"]  # once each, for four folds
        assert folder.folded_total == 160


@pytest.mark.parametrize("backend", BACKENDS)
async def test_starting_the_folder_compiles_every_fold_statement_and_writes_nothing(
    backend: str, tmp_path: Path
) -> None:
    """Compiling the fold's statements in the first fold that has rows held the loop for
    ~20-30 ms in front of the requests in flight. ``start`` compiles them beforehand, so
    the first real fold adds nothing to SQLAlchemy's compiled cache; and the preparing
    itself leaves the roll-ups and the watermark as they were."""
    async with open_store(backend, tmp_path) as store:
        await store.ledger.insert(_rows(0, 10))
        folder = Folder(store.engine, interval=3600, settle=0)
        cache = store.engine.sync_engine._compiled_cache
        assert cache is not None
        await rollup.prepare(store.engine)
        assert await _hourly_requests(store) == 0
        async with store.engine.connect() as conn:
            assert await rollup.watermark(conn) == 0
        await folder.start()
        await folder.stop()  # its first fold may have run; the next one is the test's
        await store.ledger.insert(_rows(100, 10))
        compiled = len(cache)
        await folder.fold_once()
        assert len(cache) == compiled
        assert await _hourly_requests(store) == 20


async def test_a_sqlite_fold_sends_only_the_statements_it_needs(tmp_path: Path) -> None:
    """Two reads to see there is work, then one transaction; nothing at all when idle."""
    async with open_store("sqlite", tmp_path) as store:
        folder = Folder(store.engine, interval=3600, settle=0)
        await store.ledger.insert(_rows(0, 10))
        await folder.fold_once()  # creates the watermark row
        await store.ledger.insert(_rows(100, 10))
        sent = _statements(store)
        assert await folder.fold_once() == 10
        # watermark + newest id; then lock, watermark, newest id, two upserts, move
        assert sent.count("SELECT") == 4
        assert sent.count("INSERT") == 2
        assert sent.count("UPDATE") == 2
        sent.clear()
        assert await folder.fold_once() == 0
        assert sent == ["SELECT", "SELECT"]  # no write, no lock taken


async def test_on_postgresql_an_id_waits_out_the_settle_time(tmp_path: Path) -> None:
    """A row is folded only once it has been visible for ``settle`` seconds."""
    async with open_store("postgresql", tmp_path) as store:
        folder = Folder(store.engine, interval=3600, settle=0.3)
        await store.ledger.insert(_rows(0, 5))
        assert await folder.fold_once() == 0  # just seen: not settled yet
        await asyncio.sleep(0.35)
        await store.ledger.insert(_rows(100, 7))  # newer rows: not settled either
        assert await folder.fold_once() == 5
        assert await _hourly_requests(store) == 5
        await asyncio.sleep(0.35)
        assert await folder.fold_once() == 7
        assert await _hourly_requests(store) == 12
