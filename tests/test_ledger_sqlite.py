"""The SQLite ledger's writes from the event loop's thread: one hand-off per batch, a
write lock waited for on the loop, and no half-written batch whatever stops it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.test_ledger_writer import EVENT
from tests.test_store_engine import open_store
from tollhouse.accounting.ledger import event_row
from tollhouse.store import Store
from tollhouse.store import sqlite as sqlite_module


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store("sqlite", tmp_path) as store:
        yield store


def rows(count: int, tag: str) -> list[dict[str, Any]]:
    return [event_row(replace(EVENT, request_id=f"{tag}-{i}"), f"{tag}-{i}") for i in range(count)]


def path_of(store: Store) -> str:
    assert store.engine.url.database
    return store.engine.url.database


def count(store: Store) -> int:
    """Rows in the ledger, read with a connection of the test's own."""
    with sqlite3.connect(path_of(store)) as db:
        return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])


async def test_a_batch_crosses_to_another_thread_once_whatever_its_size(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the loop is saturated, every return from another thread waits for it (0.1-0.7 s
    apiece under uvloop, bench/README.md), so the driver's thread, which came back once
    per statement, begin and commit, wrote ~1,400-2,100 rows/s at ~4,400 requests/s. The inserts
    now run on the loop and only the commit leaves it: one hand-off per batch."""
    loop = asyncio.get_running_loop()
    real = loop.call_soon_threadsafe
    returns: list[str] = []

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        returns.append(threading.current_thread().name)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    await store.ledger.insert(rows(2000, "big"))
    assert len(returns) == 1, returns
    await store.ledger.insert(rows(3, "small"))
    assert len(returns) == 2, returns
    assert count(store) == 2003


async def test_a_write_waits_on_the_loop_for_another_writer_to_finish(store: Store) -> None:
    """Another connection's write transaction (the roll-up fold, the admin API) makes the
    batch wait, in sleeps on the loop: a busy wait inside SQLite would hold every request."""
    other = sqlite3.connect(path_of(store), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    writing = asyncio.create_task(store.ledger.insert(rows(100, "waiting")))
    ticks = 0
    for _ in range(30):
        await asyncio.sleep(0.01)
        ticks += 1
    assert not writing.done() and ticks == 30
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(writing, 5)
    assert count(store) == 100


async def test_a_lock_held_past_the_busy_timeout_fails_the_batch_whole(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is bounded like every other connection's (5 s; 0.2 here). The batch fails
    with SQLite's own error, writes nothing, and can be written once the lock is free."""
    monkeypatch.setattr(sqlite_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    other = sqlite3.connect(path_of(store), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await store.ledger.insert(rows(100, "locked"))
    other.execute("COMMIT")
    other.close()
    assert count(store) == 0
    await store.ledger.insert(rows(100, "locked"))
    assert count(store) == 100


async def test_a_write_cancelled_between_statements_leaves_no_rows_and_no_lock(
    store: Store,
) -> None:
    """Cancelled mid-batch (the writer's stop timeout), the transaction is rolled back: no
    partial batch, and the next batch is not locked out."""
    writing = asyncio.create_task(store.ledger.insert(rows(1000, "cut")))
    for _ in range(3):  # the first statements have run; the transaction is open
        await asyncio.sleep(0)
    assert not writing.done()
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert count(store) == 0
    await asyncio.wait_for(store.ledger.insert(rows(10, "after")), 2)
    assert count(store) == 10


async def test_a_write_cancelled_during_its_commit_is_committed_whole(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the commit has left the loop, cancelling the caller does not stop it: the
    appender's thread commits, so the batch is all there (a retry would skip it by
    event_id), and the next batch waits for that commit rather than failing."""
    real = sqlite_module._commit
    committing = threading.Event()

    def slow_commit(conn: sqlite3.Connection) -> None:
        committing.set()
        threading.Event().wait(0.3)
        real(conn)

    monkeypatch.setattr(sqlite_module, "_commit", slow_commit)
    writing = asyncio.create_task(store.ledger.insert(rows(200, "late")))
    await asyncio.to_thread(committing.wait, 5)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    monkeypatch.setattr(sqlite_module, "_commit", real)
    await asyncio.wait_for(store.ledger.insert(rows(10, "next")), 5)  # waits for the lock
    assert count(store) == 210


async def test_a_statement_that_fails_rolls_the_whole_batch_back(store: Store) -> None:
    """A row SQLite refuses (here a NOT NULL column left empty) fails its batch: none of
    the rows before it stay, and the transaction is rolled back for the next batch."""
    batch = rows(300, "bad")
    batch[250] = {**batch[250], "request_id": None}
    with pytest.raises(sqlite3.IntegrityError):
        await store.ledger.insert(batch)
    assert count(store) == 0
    await store.ledger.insert(rows(5, "good"))
    assert count(store) == 5
