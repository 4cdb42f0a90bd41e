"""How long the gateway's background work holds the event loop at a stretch.

Why: every request that arrives while the loop runs something else waits for it to
finish, so one 10 ms stretch of background work is a 10 ms p99 for everything in
flight, however fast the request path is. The background work here is the real
one: the app's lifespan is opened from the benchmark's config (SQLite store in a
temp dir, the ledger writer, the roll-up folder, metrics), and a feeder hands
``--rate`` real UsageEvents per second to the gateway's sinks, as served requests
would. A ticker task yields to the loop over and over and records the gap between
two of its turns: the time the loop spent on other work. Printed: the longest
gaps, how many exceeded 1 and 5 ms, and the ledger rows written.

    python -m bench.stall_bench [--rate 1000] [--seconds 10]

Compare code versions in the same session (``PYTHONPATH=<other checkout>/src``).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

from bench.pieces import served_context
from bench.run import GATEWAY_CONFIG, sqlite_store


async def run(rate: int, seconds: float) -> None:
    from tollhouse.app import App
    from tollhouse.config import load_config

    with tempfile.TemporaryDirectory(prefix="tollhouse-stall-") as tmp:
        config = Path(tmp) / "tollhouse.yaml"
        text = GATEWAY_CONFIG.format(store_url=sqlite_store(tmp), mock_port=9, model="bench-model")
        config.write_text(text.replace("access_log: true", "access_log: false"))
        async with App(load_config(str(config))).lifespan() as gw:
            template = (await served_context(gw, "stall-0")).finish(gw.prices)
            stop = asyncio.Event()
            gaps = array("d")  # not tracked by the garbage collector, unlike a list
            fed = 0

            async def feeder() -> None:
                nonlocal fed
                started = time.perf_counter()
                while not stop.is_set():
                    due = int((time.perf_counter() - started) * rate)
                    while fed < due:
                        gw.sinks.emit(replace(template, request_id=f"stall-{fed}"))
                        fed += 1
                    await asyncio.sleep(0.001)

            async def ticker() -> None:
                last = time.perf_counter()
                while not stop.is_set():
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            tasks = [asyncio.create_task(feeder()), asyncio.create_task(ticker())]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            sinks: list[Any] = list(gw.sinks._sinks)
            ledger = next(sink for sink in sinks if sink.name == "ledger")
        written = ledger.written_total  # the lifespan's end wrote what was still queued
    gaps = array("d", sorted(gaps))
    worst = ", ".join(f"{g * 1e3:.1f}" for g in reversed(gaps[-5:]))
    over_1 = sum(g > 0.001 for g in gaps)
    over_5 = sum(g > 0.005 for g in gaps)
    print(
        f"{fed:,} events at {rate}/s over {seconds:g} s, {written:,} ledger rows written; "
        f"loop held by other work: longest {worst} ms; over 1 ms {over_1}, over 5 ms {over_5}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stall_bench", description=__doc__)
    parser.add_argument("--rate", type=int, default=1000, help="events per second (1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to measure (10)")
    args = parser.parse_args()
    uvloop.run(run(args.rate, args.seconds))


if __name__ == "__main__":
    main()
