"""How long a ledger batch takes to reach SQLite while the event loop is busy.

Why: SQLite runs in a driver thread (aiosqlite), and that thread needs the GIL back
after each statement it executes and for each hand-off to and from the event loop.
While the loop is serving requests, every one of those waits on the loop, so a
batch's cost depends on how many statements and hand-offs it takes, not only on
SQLite. This times ``LedgerRepo.insert`` of one batch (500 rows, the default
``ledger.batch_size``) every 0.1 s for a few seconds, next to a task that keeps the
loop busy the way traffic does (``--busy-us`` of Python work, then ``--idle-us`` in
the poller), and prints the batch's median and worst wall time, how much of the busy
work got done, and the process's context switches.

    python -m bench.flush_bench                      # loop a third busy
    python -m bench.flush_bench --idle-us 10000      # an idle loop, for reference

Compare code versions in the same session (``PYTHONPATH=<other checkout>/src``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import tempfile
import time
import uuid
from pathlib import Path

import uvloop

from bench.fold_bench import ledger_row
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate


async def run(rows: int, seconds: float, busy_us: float, idle_us: float) -> None:
    with tempfile.TemporaryDirectory(prefix="tollhouse-flush-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}"
        await migrate(url)
        async with Store(url) as store:
            repo = store.ledger
            rng = random.Random(7)
            batch = [ledger_row(i, rng) for i in range(rows)]
            await repo.insert(batch)  # warm: statements prepared, pages allocated
            done = 0
            stop = asyncio.Event()

            async def traffic() -> None:
                nonlocal done
                while not stop.is_set():
                    until = time.perf_counter() + busy_us / 1e6
                    while time.perf_counter() < until:
                        pass
                    done += 1
                    await asyncio.sleep(idle_us / 1e6)

            task = asyncio.create_task(traffic())
            times: list[float] = []
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            end = started + seconds
            while time.perf_counter() < end:
                batch = [{**row, "event_id": uuid.uuid4().hex} for row in batch]  # new rows
                t = time.perf_counter()
                await repo.insert(batch)
                times.append(time.perf_counter() - t)
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            stop.set()
            await task
    times.sort()
    switches = after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw
    print(
        f"{rows}-row batches: {len(times)}, median {times[len(times) // 2] * 1e3:.1f} ms, "
        f"worst {times[-1] * 1e3:.1f} ms; busy work {done / elapsed:,.0f} units/s; "
        f"context switches {switches:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flush_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=500, help="rows per batch (500)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to measure (5)")
    parser.add_argument("--busy-us", type=float, default=50.0, help="work per unit (50 µs)")
    parser.add_argument("--idle-us", type=float, default=100.0, help="poll between units (100 µs)")
    args = parser.parse_args()
    uvloop.run(run(args.rows, args.seconds, args.busy_us, args.idle_us))


if __name__ == "__main__":
    main()
