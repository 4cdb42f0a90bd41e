"""Each event is one ledger row even when a batch is written twice.

The writer retries a batch until it is written. When the database committed it but the
acknowledgement was lost (the connection dropped in between), the retry used to write
the batch a second time: every token and dollar in it counted twice in the ledger, the
analytics and the spend recovered after a restart. Each row now carries an
``event_id`` (the writer's random prefix and the event's place in its queue) that is
unique in the ledger, and the insert skips ids already there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import mock_config, postgres_database, run_gateway, run_sync
from tests.tcp_cut import Forwarder
from tests.test_ledger_writer import EVENT, until
from tests.test_store_engine import BACKENDS, open_store
from tollhouse.accounting.ledger import LedgerWriter, event_row
from tollhouse.config.schema import LedgerConfig
from tollhouse.store import Store
from tollhouse.store.tables import ledger

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3}


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as store:
        yield store


async def stored(store: Store) -> list[tuple[str, str]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(ledger.c.request_id, ledger.c.event_id))
        return sorted((r.request_id, r.event_id) for r in rows)


async def test_a_batch_written_again_is_stored_once(store: Store) -> None:
    """The same rows inserted twice are there once; a batch mixing written and new rows
    adds only the new ones. Without the unique ``event_id`` the count would be 5, then 8."""
    repo = store.ledger
    rows = [event_row(replace(EVENT, request_id=f"r{i}"), f"id-{i}") for i in range(3)]
    await repo.insert(rows)
    await repo.insert(rows[1:])
    assert [r for r, _ in await stored(store)] == ["r0", "r1", "r2"]
    more = [event_row(replace(EVENT, request_id="r3"), "id-3")]
    await repo.insert(rows + more)
    assert await stored(store) == [(f"r{i}", f"id-{i}") for i in range(4)]


class LosingLedger:
    """The store's real ledger, whose first ``fail`` inserts commit and then report a
    failure, as a commit whose acknowledgement was lost does; it remembers every batch's
    ids."""

    def __init__(self, store: Store, fail: int) -> None:
        self._ledger = store.ledger
        self.fail = fail
        self.ids: list[list[str]] = []

    async def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        self.ids.append([row["event_id"] for row in rows])
        await self._ledger.insert(rows)
        if self.fail:
            self.fail -= 1
            raise ConnectionResetError("the acknowledgement was lost")


async def test_a_retried_batch_keeps_its_ids_and_counts_once(store: Store) -> None:
    """A batch that committed but "failed" is retried with the same ids, so the ledger
    holds each event once; the next batch's ids continue, and a second writer (another
    replica, or a restart) has ids of its own."""
    repo = LosingLedger(store, fail=2)
    writer = LedgerWriter(repo, LedgerConfig(flush_interval=0.02, retry_interval=0.02))
    await writer.start()
    for i in range(3):
        writer(replace(EVENT, request_id=f"a{i}"))
    await until(lambda: writer.written_total == 3)
    writer(replace(EVENT, request_id="a3"))
    await writer.stop()
    assert repo.ids[0] == repo.ids[1] == repo.ids[2] and len(repo.ids[0]) == 3
    assert writer.write_errors_total == 2
    other = LedgerWriter(store.ledger)
    await other.start()
    other(replace(EVENT, request_id="b0"))
    await other.stop()
    rows = await stored(store)
    assert [r for r, _ in rows] == ["a0", "a1", "a2", "a3", "b0"]
    assert len({event_id for _, event_id in rows}) == 5


def _ledger_request_ids(url: str) -> list[str]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return sorted(
                r["request_id"] for r in await conn.fetch("SELECT request_id FROM ledger")
            )
        finally:
            await conn.close()

    ids: list[str] = run_sync(read())
    return ids


def test_a_lost_commit_acknowledgement_does_not_double_the_ledger() -> None:
    """Through a real PostgreSQL: the forwarder lets the ledger's first COMMIT reach the
    server and drops the server's answer, then resets the connection. The writer sees a
    failure and retries the batch on a new connection; the rows were already committed,
    so the retry must add nothing. Before ``event_id``, the ledger held each request twice."""
    with postgres_database() as url, Forwarder(5432) as cut:
        cut.lose_reply(after=b"INSERT INTO ledger (", to=b"COMMIT")
        config = mock_config()
        config["store"] = {"url": url.replace("127.0.0.1:5432", f"127.0.0.1:{cut.port}")}
        config["ledger"] = {"flush_interval": 0.2, "retry_interval": 0.5}
        with run_gateway(config) as gw:
            sent = []
            for i in range(3):
                r = httpx.post(gw.v1 + "/chat/completions", json=BODY, timeout=10,
                               headers={"x-request-id": f"lost-ack-{i}"})  # fmt: skip
                assert r.status_code == 200
                sent.append(f"lost-ack-{i}")
            assert cut.reply_lost.wait(10), "the ledger's commit never went through"
            deadline = time.monotonic() + 10
            while gw.metric("tollhouse_ledger_backlog") or not gw.metric(
                "tollhouse_ledger_write_errors_total"
            ):
                assert time.monotonic() < deadline, "the writer did not retry and drain"
                time.sleep(0.05)
            time.sleep(0.3)  # nothing more is on its way
            assert _ledger_request_ids(url) == sent
            assert gw.metric("tollhouse_ledger_rows_written_total") == 3
