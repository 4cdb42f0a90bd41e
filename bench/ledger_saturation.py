"""Whether the ledger keeps up when one gateway process is saturated.

Why: every served request becomes a ledger row, written in batches off the request
path. If the writer cannot write rows as fast as the process serves requests, its
backlog (``tollhouse_ledger_backlog``) grows for as long as the load lasts: memory
grows, and a crash loses more. This starts the benchmark stack of ``bench.run`` (the
0 ms mock upstream and a real ``tollhouse serve``), drives it with ``bench.loadgen`` at
``--concurrency`` for ``--seconds``, scrapes the ledger's backlog and rows written every
``--every`` seconds, and prints them with the write rate, then how long the backlog
takes to drain once the load stops, and the load's own throughput and latency.

    python -m bench.ledger_saturation                      # SQLite, the default store
    python -m bench.ledger_saturation --store postgresql+asyncpg://postgres@127.0.0.1/test

The PostgreSQL database must be migrated and is not emptied (``tollhouse migrate
--store URL``). Compare code versions in the same session (``PYTHONPATH=<other
checkout>/src``): throughput on a shared machine drifts between runs.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.loadgen import LoadResult
from bench.run import Children, Pinning, _free_port, _last_line, _stack

_SERIES = re.compile(rb"^tollhouse_ledger_(backlog|rows_written_total) (\S+)$", re.M)


def scrape(url: str) -> tuple[int, int]:
    """The ledger's backlog and rows written so far, from the gateway's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        found = {m[1]: int(float(m[2])) for m in _SERIES.finditer(response.read())}
    return found[b"backlog"], found[b"rows_written_total"]


def run(args: argparse.Namespace) -> None:
    children = Children()
    no_pin = Pinning((), (), "none")
    try:
        with tempfile.TemporaryDirectory(prefix="tollhouse-saturation-") as tmp:
            stack = _stack(children, no_pin, 0, _free_port(), None, Path(tmp), args.store)
            with stack as (url, _pid):
                argv = [
                    sys.executable, "-m", "bench.loadgen", f"{url}/v1/chat/completions",
                    "--concurrency", str(args.concurrency), "--duration", str(args.seconds),
                    "--warmup", "0", "--json",
                ]  # fmt: skip
                result: list[str] = []
                load = threading.Thread(
                    target=lambda: result.append(
                        _last_line(children, argv, args.seconds, "load generator")
                    )
                )
                started = time.monotonic()
                load.start()
                print(f"{'s':>5} {'backlog':>9} {'written':>9} {'rows/s':>8}")
                last_at, last_written = started, scrape(url)[1]
                while load.is_alive() or time.monotonic() - started < args.seconds:
                    time.sleep(args.every)
                    backlog, written = scrape(url)
                    now = time.monotonic()
                    rate = (written - last_written) / (now - last_at)
                    print(f"{now - started:5.1f} {backlog:9,} {written:9,} {rate:8,.0f}")
                    last_at, last_written = now, written
                load.join()
                stopped = time.monotonic()
                backlog, written = scrape(url)
                while backlog:
                    time.sleep(0.1)
                    backlog, written = scrape(url)
                print(f"after the load: backlog written in {time.monotonic() - stopped:.1f} s")
                outcome = LoadResult.from_json(result[0])
                p = outcome.latency_ms
                print(
                    f"load: {outcome.rps:,.0f} requests/s, {outcome.errors} errors, "
                    + (f"p50 {p.p50:.2f} ms, p99 {p.p99:.2f} ms; " if p else "")
                    + f"{written:,} rows written in all"
                )
    finally:
        children.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_saturation", description=__doc__)
    parser.add_argument("--store", help="the gateway's store URL (a temporary SQLite file)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (64)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to load (20)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between scrapes (2)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
