"""Event-loop time per roll-up fold: what the background folder takes from requests.

The gateway folds new ledger rows into the hourly and daily roll-ups every two seconds
(``tollhouse.admin.background.Folder``), on the event loop that serves requests. Any
Python time a fold spends there is a stall for the requests arriving meanwhile. This
inserts ``--rows`` ledger rows into a fresh SQLite store, folds them, repeats, and
prints the median CPU time of the loop's thread per fold (``time.thread_time``: the
database's own work runs on aiosqlite's thread and is not counted) beside its wall time.

    .venv/bin/python -m bench.fold_bench [--rows 40] [--folds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollhouse.admin.background import Folder
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate


def ledger_row(i: int, rng: random.Random) -> dict[str, Any]:
    """A plausible ledger row (also the flush benchmark's)."""
    outcome = rng.choice(["success", "success", "error"])
    return {
        "request_id": f"r{i}", "ts": datetime.now(UTC), "operation": "chat",
        "key_alias": rng.choice("abc"), "team": "t", "user": "u", "end_user": "e",
        "model": rng.choice(["m1", "m2"]), "backend": "b", "provider": "p", "upstream_model": "x",
        "stream": False, "outcome": outcome, "status": 200,
        "error_type": "timeout" if outcome == "error" else None,
        "input_tokens": rng.randint(0, 50), "output_tokens": rng.randint(0, 50),
        "cached_input_tokens": 0, "cache_write_input_tokens": 0, "reasoning_tokens": 0,
        "token_source": "reported", "cost_pusd": rng.randint(0, 10**9), "price_source": None,
        "duration_ms": rng.uniform(1, 5000), "upstream_ms": None, "ttft_ms": None,
        "event_id": uuid.uuid4().hex,  # unique, as the ledger writer makes them
    }  # fmt: skip


async def run(rows: int, folds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tollhouse-fold-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}"
        await migrate(url)
        rng = random.Random(1)
        cpu: list[float] = []
        wall: list[float] = []
        async with Store(url) as store:
            folder = Folder(store.engine, interval=3600, settle=10.0)
            for n in range(folds):
                await store.ledger.insert([ledger_row(n * rows + i, rng) for i in range(rows)])
                cpu_0, wall_0 = time.thread_time(), time.perf_counter()
                await folder.fold_once()
                cpu.append(time.thread_time() - cpu_0)
                wall.append(time.perf_counter() - wall_0)
        warm = min(5, folds - 1)  # the first folds compile the SQL
        cpu, wall = sorted(cpu[warm:]), sorted(wall[warm:])
        print(f"fold of {rows} new rows, {len(cpu)} folds: event-loop thread CPU "
              f"median {cpu[len(cpu) // 2] * 1e3:.2f} ms (max {cpu[-1] * 1e3:.2f}), "
              f"wall median {wall[len(wall) // 2] * 1e3:.2f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fold_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=40, help="new ledger rows per fold (40)")
    parser.add_argument("--folds", type=int, default=60, help="(60; the first 5 are not counted)")
    args = parser.parse_args()
    if args.folds < 1:
        parser.error("--folds must be at least 1")
    asyncio.run(run(args.rows, args.folds))


if __name__ == "__main__":
    main()
