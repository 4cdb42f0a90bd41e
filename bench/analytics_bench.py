"""Usage analytics on a large ledger: 1,000,000 rows over 30 days, SQLite and PostgreSQL.

Fills a fresh store with synthetic ledger rows (50 keys in 10 teams, 8 models on
4 backends and 3 providers, 200 end users, 5% errors and cancellations), folds
them into the hourly roll-up with the product's own ``rollup.fold`` (the same
call the gateway's background folder makes), then times the queries the admin
API runs: the 30-day global totals, the same for one key, one end user (read
from the ledger through its index), and a 30-day cost series per model.

    .venv/bin/python -m bench.analytics_bench                     # both stores, 1M rows
    .venv/bin/python -m bench.analytics_bench --rows 200000 --stores sqlite
    .venv/bin/python -m bench.analytics_bench --postgres postgresql://postgres@127.0.0.1/postgres

Bulk loading uses the drivers directly (``executemany`` on SQLite, ``COPY`` on
PostgreSQL): it is setup, not what is measured. The PostgreSQL database is
created for the run and dropped afterwards; the SQLite file lives in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tollhouse.admin import usage
from tollhouse.store import Store, migrate, rollup
from tollhouse.store.engine import normalize_url
from tollhouse.store.tables import LEDGER_COLUMNS, ledger_daily, ledger_hourly

DAYS = 30
ERRORS = ("rate_limit", "timeout", "server_error", "auth", "budget_exceeded")


def rows(count: int, now: datetime, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """Ledger rows as tuples in ``LEDGER_COLUMNS`` order, spread over the last 30 days."""
    rng = random.Random(seed)
    keys = [(f"key-{i}", f"team-{i % 10}", f"user-{i % 25}") for i in range(50)]
    models = [(f"model-{i}", f"backend-{i % 4}", f"provider-{i % 3}") for i in range(8)]
    span = DAYS * 86400
    for i in range(count):
        key, team, user = rng.choice(keys)
        model, backend, provider = rng.choice(models)
        roll = rng.random()
        outcome = "success" if roll < 0.95 else "error" if roll < 0.99 else "cancelled"
        error = rng.choice(ERRORS) if outcome == "error" else None
        tin, tout = rng.randint(10, 4000), rng.randint(0, 1000)
        stream = rng.random() < 0.5
        duration = rng.lognormvariate(6.5, 0.8)
        yield (
            f"bench-{i}", now - timedelta(seconds=rng.uniform(0, span)), "chat", key, team, user,
            f"end-user-{rng.randrange(200)}", model, backend, provider, model, stream, outcome,
            200 if outcome == "success" else 500, error, tin, tout, tin // 4, 0, 0,
            "reported", tin * 2_500_000 + tout * 10_000_000, "genai-prices", duration,
            duration * 0.95, duration * 0.2 if stream else None, f"bench-{seed}-{i}",
        )  # fmt: skip


def load_sqlite(path: str, count: int, now: datetime) -> None:
    conn = sqlite3.connect(path)
    names = ", ".join(f'"{c}"' for c in LEDGER_COLUMNS)
    marks = ", ".join("?" for _ in LEDGER_COLUMNS)
    fmt = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite storage format, as LedgerRepo writes it
    batch: list[tuple[Any, ...]] = []
    for row in rows(count, now):
        batch.append((*row[:1], row[1].strftime(fmt), *row[2:]))
        if len(batch) == 50_000:
            conn.executemany(f"INSERT INTO ledger ({names}) VALUES ({marks})", batch)
            batch.clear()
    conn.executemany(f"INSERT INTO ledger ({names}) VALUES ({marks})", batch)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


async def load_postgres(url: str, count: int, now: datetime) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(normalize_url(url).set(drivername="postgresql")
                                 .render_as_string(hide_password=False))  # fmt: skip
    try:
        await conn.copy_records_to_table("ledger", records=rows(count, now),
                                         columns=list(LEDGER_COLUMNS))  # fmt: skip
        await conn.execute("ANALYZE ledger")
    finally:
        await conn.close()


async def timed(label: str, call: Callable[[], Awaitable[Any]], runs: int = 5) -> Any:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - start)
    print(
        f"  {label:<44} first {times[0] * 1000:8.1f} ms   median {statistics.median(times) * 1000:8.1f} ms"
    )
    return result


async def measure(url: str, now: datetime) -> None:
    async with Store(url) as store:
        engine, start = store.engine, now - timedelta(days=DAYS)
        began = time.perf_counter()
        await rollup.fold_all(engine)
        print(f"  fold the ledger into the roll-ups          {time.perf_counter() - began:8.1f} s")
        async with engine.connect() as conn:
            for table in (ledger_hourly, ledger_daily):
                n = await conn.scalar(sa.select(sa.func.count()).select_from(table))
                print(f"  {table.name} rows{'':<{30 - len(table.name)}}{n:>12,}")
        total = await timed("30-day totals, global",
                            lambda: usage.totals(engine, start, now, {}))  # fmt: skip
        await timed(
            "30-day totals, one key", lambda: usage.totals(engine, start, now, {"key": "key-7"})
        )
        await timed("30-day totals, one end user (ledger)",
                    lambda: usage.totals(engine, start, now, {"end_user": "end-user-42"}))  # fmt: skip
        await timed("30-day cost per day, top 5 models + rest",
                    lambda: usage.series(engine, "cost", start, now, "1d", "model", 5, {}))  # fmt: skip
        await timed("30-day p95 latency per hour, top 3 keys",
                    lambda: usage.series(engine, "latency_p95", start, now, "1h", "key", 3, {}))  # fmt: skip
        print(
            f"  check: {total.requests:,} requests, ${total.cost_usd}, p95 {total.latency.p95_ms:.0f} ms"
        )


async def run_sqlite(count: int, now: datetime) -> None:
    with tempfile.TemporaryDirectory(prefix="tollhouse-bench-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await migrate(url)
        began = time.perf_counter()
        load_sqlite(f"{tmp}/bench.db", count, now)
        print(f"SQLite: loaded {count:,} rows in {time.perf_counter() - began:.1f} s")
        await measure(url, now)


async def run_postgres(base: str, count: int, now: datetime) -> None:
    import asyncpg

    name = f"tollhouse_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = normalize_url(base).set(database=name).render_as_string(hide_password=False)
        await migrate(url)
        began = time.perf_counter()
        await load_postgres(url, count, now)
        print(f"PostgreSQL: loaded {count:,} rows in {time.perf_counter() - began:.1f} s")
        await measure(url, now)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    now = datetime.now(UTC)
    stores = args.stores.split(",")
    if "sqlite" in stores:
        asyncio.run(run_sqlite(args.rows, now))
    if "postgresql" in stores:
        asyncio.run(run_postgres(args.postgres, args.rows, now))


if __name__ == "__main__":
    main()
