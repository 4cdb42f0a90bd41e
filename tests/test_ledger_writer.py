"""The ledger writer on SQLite and PostgreSQL: every event becomes exactly one row, even through an outage."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.test_store_engine import BACKENDS, open_store
from tollhouse.accounting.event import Outcome, TokenSource, UsageEvent
from tollhouse.accounting.ledger import CATCH_UP_BATCHES, LedgerWriter, cost_to_pusd, event_row
from tollhouse.accounting.usage import Usage
from tollhouse.config.schema import LedgerConfig
from tollhouse.errors import ErrorType
from tollhouse.store import Store
from tollhouse.store.ledger import CHUNK_ROWS
from tollhouse.store.sqlite import Appender
from tollhouse.store.tables import LEDGER_COLUMNS, ledger

EVENT = UsageEvent(
    request_id="req-0",
    started_at=1_767_225_600.25,  # 2026-01-01T00:00:00.25Z
    operation="chat",
    model="gpt",
    backend="mock",
    provider="openai",
    upstream_model="gpt-4o-2024",
    key="ci",
    team="core",
    user="ada",
    end_user="",
    stream=False,
    outcome=Outcome.SUCCESS,
    status=200,
    error_type=None,
    usage=Usage(input=10, output=20, cached_input=5, cache_write_input=1, reasoning=3),
    token_source=TokenSource.REPORTED,
    cost=Decimal("0.000123"),
    price_source="config",
    duration=0.25,
    upstream_duration=0.2,
    overhead=0.05,
    ttft=None,
)


class RecordingLedger:
    """The store's real ledger, remembering the size of every batch it was asked to write."""

    def __init__(self, store: Store) -> None:
        self._ledger = store.ledger
        self.batches: list[int] = []

    async def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        self.batches.append(len(rows))
        await self._ledger.insert(rows)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as store:
        yield store


def writer_for(store: Store, **config: Any) -> tuple[LedgerWriter, RecordingLedger]:
    repo = RecordingLedger(store)
    return LedgerWriter(repo, LedgerConfig(**config)), repo  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def set_ledger_online(store: Store, online: bool) -> None:
    """Simulate an outage of the ledger table (and its end) by renaming it."""
    old, new = ("ledger_offline", "ledger") if online else ("ledger", "ledger_offline")
    async with store.engine.begin() as conn:
        await conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_cost_converts_to_pico_usd_exactly_rounding_half_even() -> None:
    """Twelve decimal places are kept exactly; a thirteenth rounds half to even."""
    cases = {
        "0.000000000001": 1,
        "1234.567890123456": 1_234_567_890_123_456,
        "0.0000000000005": 0,
        "0.0000000000015": 2,
        "0.00000000000151": 2,
        "2.5E-6": 2_500_000,
        "0": 0,
    }
    for usd, pusd in cases.items():
        assert cost_to_pusd(Decimal(usd)) == pusd, usd
    assert cost_to_pusd(None) is None


async def test_ten_thousand_events_become_ten_thousand_rows_with_the_exact_cost(
    store: Store,
) -> None:
    """No row is lost or doubled, no write exceeds CATCH_UP_BATCHES batches, and the cost
    sum is exact."""
    writer, repo = writer_for(store, batch_size=500, flush_interval=0.01)
    await writer.start()
    expected = Decimal(0)
    for i in range(10_000):
        cost = None if i % 97 == 0 else Decimal(i) * Decimal("0.000000123456") + Decimal("1e-12")
        expected += cost or 0
        writer(replace(EVENT, request_id=f"req-{i}", cost=cost))
        if i % 300 == 0:
            await asyncio.sleep(0)  # let the writer interleave with the "requests"
    await writer.stop()
    assert await store.ledger.count_rows() == 10_000
    assert await store.ledger.spend_since("team", 0) == {"core": int(expected.scaleb(12))}
    assert (writer.written_total, writer.backlog, writer.write_errors_total) == (10_000, 0, 0)
    assert sum(repo.batches) == 10_000 and max(repo.batches) <= 500 * CATCH_UP_BATCHES


async def test_full_batches_go_at_once_and_stop_flushes_the_rest(store: Store) -> None:
    """A full batch does not wait for flush_interval; stop() writes the partial tail."""
    writer, repo = writer_for(store, batch_size=10, flush_interval=3600)
    await writer.start()
    for i in range(25):
        writer(replace(EVENT, request_id=f"req-{i}"))
        if i in (9, 19):  # each full batch is written before the next row comes
            await until(lambda: writer.written_total == i + 1)  # noqa: B023
    assert writer.backlog == 5
    await writer.stop()
    assert repo.batches == [10, 10, 5]
    assert await store.ledger.count_rows() == 25 and writer.backlog == 0


async def test_a_backlog_is_written_many_batches_to_a_transaction(store: Store) -> None:
    """Fallen behind (an outage, a saturated loop), the writer takes up to CATCH_UP_BATCHES
    batches per transaction, so its rate grows with its backlog instead of staying one
    batch per commit; a partial batch still waits for its flush."""
    writer, repo = writer_for(store, batch_size=10, flush_interval=3600)
    for i in range(10 * CATCH_UP_BATCHES * 2 + 25):
        writer(replace(EVENT, request_id=f"b{i}"))
    await writer.start()
    await until(lambda: writer.written_total == 10 * CATCH_UP_BATCHES * 2 + 20)
    assert repo.batches == [10 * CATCH_UP_BATCHES, 10 * CATCH_UP_BATCHES, 20]
    assert writer.backlog == 5
    await writer.stop()
    assert repo.batches[-1] == 5 and await store.ledger.count_rows() == writer.written_total


async def test_a_partial_batch_is_written_after_flush_interval(store: Store) -> None:
    """A quiet gateway's rows reach the database within flush_interval, without stop()."""
    writer, _ = writer_for(store, batch_size=500, flush_interval=0.05)
    await writer.start()
    for i in range(3):
        writer(replace(EVENT, request_id=f"req-{i}"))
    await until(lambda: writer.written_total == 3, within=5)
    assert await store.ledger.count_rows() == 3
    await writer.stop()


class SlowLedger:
    """A ledger whose every write takes ``seconds``, as a loaded database's would."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[int] = []

    async def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        await asyncio.sleep(self.seconds)
        self.batches.append(len(rows))


async def test_a_periodic_flush_under_steady_traffic_does_not_chase_new_rows() -> None:
    """Rows arriving during a flush wait for the next one: a flush per interval, not a
    stream of tiny transactions each holding what came in during the last one."""
    repo = SlowLedger(0.02)
    writer = LedgerWriter(repo, LedgerConfig(batch_size=100_000, flush_interval=0.25))  # type: ignore[arg-type]
    await writer.start()
    loop = asyncio.get_running_loop()
    end, sent = loop.time() + 1.5, 0
    while loop.time() < end:  # ~1,000 events/s, like a busy gateway at concurrency 1
        writer(replace(EVENT, request_id=f"req-{sent}"))
        sent += 1
        await asyncio.sleep(0.001)
    await writer.stop()
    assert sum(repo.batches) == sent
    # 1.5 s at one flush per 0.25 s is 6 flushes, plus the final one at stop; chasing the
    # tail writes a batch every 20 ms (dozens).
    assert len(repo.batches) <= 8, repo.batches


async def test_the_sink_is_a_plain_call_that_never_touches_the_database(store: Store) -> None:
    """Queueing 10,000 rows needs no await: the request path does no I/O."""
    writer, repo = writer_for(store, batch_size=100, flush_interval=0.01)
    await writer.start()
    assert not inspect.iscoroutinefunction(writer.__call__)
    for i in range(10_000):
        writer(replace(EVENT, request_id=f"req-{i}"))
    assert (writer.backlog, writer.written_total, repo.batches) == (10_000, 0, [])
    await writer.stop()
    assert await store.ledger.count_rows() == 10_000


async def test_a_row_holds_every_field_of_its_event(store: Store) -> None:
    """Each UsageEvent field lands in its column; unstorable text is cleaned, not refused."""
    event = replace(
        EVENT,
        stream=True,
        outcome=Outcome.ERROR,
        status=502,
        error_type=ErrorType.SERVER_ERROR,
        end_user="evil\x00user\ud800",
        cost=None,
        price_source=None,
        upstream_duration=None,
        ttft=0.125,
    )
    assert tuple(event_row(event, "e-1")) == LEDGER_COLUMNS
    writer, _ = writer_for(store)
    await writer.start()
    writer(event)
    await writer.stop()
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(ledger))).one()._asdict()
    assert row["ts"].isoformat() == "2026-01-01T00:00:00.250000+00:00"
    assert row["end_user"] == "evil\ufffduser?"
    assert {k: row[k] for k in ("stream", "outcome", "status", "error_type", "cost_pusd")} == {
        "stream": True, "outcome": "error", "status": 502, "error_type": "server_error",
        "cost_pusd": None,
    }  # fmt: skip
    tokens = [
        row[f"{t}_tokens"]
        for t in ("input", "output", "cached_input", "cache_write_input", "reasoning")
    ]
    assert tokens == [10, 20, 5, 1, 3]
    assert (row["duration_ms"], row["upstream_ms"], row["ttft_ms"]) == (250.0, None, 125.0)
    assert (row["key_alias"], row["upstream_model"], row["token_source"]) == (
        "ci",
        "gpt-4o-2024",
        "reported",
    )


async def test_sqlite_stores_the_time_exactly_as_sqlalchemy_core_would(tmp_path: Path) -> None:
    """The batch insert bypasses SQLAlchemy's type processing, so it formats SQLite's
    timestamp text itself; queries compare that text, so it must match Core's byte for byte,
    whole seconds and other time zones included."""
    times = [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    rows = [{**event_row(replace(EVENT, request_id=f"fast-{i}"), f"fast-{i}"), "ts": ts}
            for i, ts in enumerate(times)]  # fmt: skip
    async with open_store("sqlite", tmp_path) as store:
        await store.ledger.insert(rows)
        async with store.engine.begin() as conn:
            core = [
                {
                    **row,
                    "request_id": row["request_id"].replace("fast", "core"),
                    "event_id": row["event_id"].replace("fast", "core"),
                }
                for row in rows
            ]
            await conn.execute(ledger.insert(), core)
            stored = dict((await conn.execute(sa.text("SELECT request_id, ts FROM ledger"))).all())
    for i in range(len(times)):
        assert stored[f"fast-{i}"] == stored[f"core-{i}"]
    assert stored["fast-0"] == "2026-01-01 00:00:00.000000"


@pytest.mark.parametrize("count", [1, 63, 64, 65, 200])
async def test_rows_go_many_to_a_statement_and_all_arrive_in_order(
    store: Store, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite, rows go CHUNK_ROWS to an INSERT: each statement is a stretch of SQLite
    between yields to the loop, and a statement per row would cost a yield per row. On
    both stores every row arrives whole, in order, across the chunks' edges."""
    sent: list[int] = []  # rows per statement execution
    width = len(LEDGER_COLUMNS)

    def seen(*args: Any) -> None:  # PostgreSQL: through the engine
        statement, parameters, executemany = args[2], args[3], args[5]
        if statement.startswith("INSERT INTO"):
            sets = parameters if executemany else [parameters]
            sent.extend(len(p) // width for p in sets)

    real_append = Appender.append

    async def counted(self: Appender, statements: Iterable[tuple[str, Any, int]]) -> None:
        def each() -> Iterator[tuple[str, Any, int]]:  # SQLite: through the appender
            for sql, parameters, rows in statements:
                sent.append(len(parameters) // width)
                yield sql, parameters, rows

        await real_append(self, each())

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
    monkeypatch.setattr(Appender, "append", counted)
    rows = [event_row(replace(EVENT, request_id=f"r{i}", status=200 + i % 7), f"e{i}")
            for i in range(count)]  # fmt: skip
    await store.ledger.insert(rows)
    async with store.engine.connect() as conn:
        got = (
            await conn.execute(
                sa.select(ledger.c.request_id, ledger.c.status).order_by(ledger.c.id)
            )
        ).all()
    assert [tuple(r) for r in got] == [(f"r{i}", 200 + i % 7) for i in range(count)]
    assert sum(sent) == count
    if store.engine.dialect.name == "sqlite":
        chunk = min(CHUNK_ROWS, count)
        assert sent == [chunk] * (count // chunk) + ([count % chunk] if count % chunk else [])


async def test_a_batch_is_made_in_slices_so_requests_are_served_meanwhile(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Turning a 500-row batch into rows and SQL parameters is milliseconds of Python on the
    event loop; done at once, every request arriving meanwhile waits it out (a p99 stall).
    The writer and the store yield to the loop between slices of at most 64 rows, so a
    ticking task runs between them, and the rows still arrive whole and in order."""
    from tollhouse.accounting import ledger as writer_module
    from tollhouse.store import ledger as store_module

    ticks = 0
    stretches: list[tuple[str, int]] = []  # (what, the tick it ran at), one per row

    def ticking_row(event: UsageEvent, event_id: str) -> dict[str, Any]:
        stretches.append(("row", ticks))
        return event_row(event, event_id)

    real_params = store_module._sqlite_params

    def ticking_params(rows: Sequence[Any]) -> tuple[Any, ...]:
        stretches.extend(("params", ticks) for _ in rows)
        return real_params(rows)

    monkeypatch.setattr(writer_module, "event_row", ticking_row)
    monkeypatch.setattr(store_module, "_sqlite_params", ticking_params)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    writer, repo = writer_for(store, batch_size=500, flush_interval=3600)
    ticking = asyncio.create_task(ticker())
    await writer.start()
    for i in range(500):
        writer(replace(EVENT, request_id=f"s{i}"))
    await until(lambda: writer.written_total == 500)
    await writer.stop()
    ticking.cancel()
    for what in ("row", "params") if store.engine.dialect.name == "sqlite" else ("row",):
        at = [tick for kind, tick in stretches if kind == what]
        assert len(at) == 500
        runs = [at.count(tick) for tick in sorted(set(at))]
        assert max(runs) <= 64 and len(runs) >= 8, (what, runs)
    async with store.engine.connect() as conn:
        got = (await conn.execute(sa.select(ledger.c.request_id).order_by(ledger.c.id))).all()
    assert [r[0] for r in got] == [f"s{i}" for i in range(500)]
    assert repo.batches == [500]


async def test_an_outage_delays_rows_but_loses_none(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """While the table is gone the backlog grows and errors are counted; then it drains."""
    writer, _ = writer_for(store, batch_size=100, flush_interval=0.01, retry_interval=0.05)
    await writer.start()
    await set_ledger_online(store, False)
    for i in range(250):
        writer(replace(EVENT, request_id=f"before-{i}"))
    await until(lambda: writer.write_errors_total >= 2)
    for i in range(250):
        writer(replace(EVENT, request_id=f"during-{i}"))
    assert writer.backlog == 500 and writer.written_total == 0
    await set_ledger_online(store, True)
    await until(lambda: writer.backlog == 0)
    await writer.stop()
    assert await store.ledger.count_rows() == 500 == writer.written_total
    failures = [r.getMessage() for r in caplog.records if "ledger_write_failed" in r.getMessage()]
    assert failures and not any("INSERT" in message for message in failures)


async def test_stop_gives_up_after_its_timeout_and_reports_the_loss(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database down, stop() returns after `timeout`, logging the rows it could not write."""
    writer, _ = writer_for(store, retry_interval=0.05)
    await writer.start()
    await set_ledger_online(store, False)
    for i in range(5):
        writer(replace(EVENT, request_id=f"req-{i}"))
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.ERROR, logger="tollhouse.ledger"):
        await writer.stop(timeout=0.3)
    assert asyncio.get_running_loop().time() - started < 3
    assert writer.backlog == 5 and writer.write_errors_total > 0
    assert any("ledger_rows_lost rows=5" in r.getMessage() for r in caplog.records)
    await set_ledger_online(store, True)
    await writer.start()  # the rows were kept: a later start still writes them
    await writer.stop()
    assert await store.ledger.count_rows() == 5
