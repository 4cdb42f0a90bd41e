"""How far a leaner request core would go: the gateway's own pieces served at seven depths.

``bench/segments.py`` says where the gateway's time goes and ``bench/floor_proxy.py``
what the least HTTP-parsing proxy costs. This measures the ground between them, for
the redesign of the request path that the last speed target of issue 2 needs
(concurrency 1, 50 ms upstream): if the path were rebuilt without a layer, what would
the gateway add? Each depth serves the benchmark's non-streamed chat request against
the benchmark's mock, with the real ``Gateway`` built from the benchmark's config
(access log, ledger, metrics, every sink), one layer more than the depth before:

``floor``
    no gateway at all: parse, JSON in and out, a raw upstream connection, all in
    protocol callbacks (what ``bench/floor_proxy.py`` does);
``callbacks``
    + the request's context, validation, routing, the adapter's usage parse, the
    response headers, and every sink after the reply (``Gateway.done``), still in callbacks;
``task``
    + one task per request, the upstream body built by the adapter and sent through the
    gateway's own HTTP client (``call_upstream``);
``executor``
    + the retry and fallback executor (``Gateway.execute``);
``gate``
    + authentication, the prompt estimate and admission: ``chat.handle`` minus the
    response cache and ASGI;
``asgi``
    the real ``routes.proxied`` and ``chat.handle``, called through a minimal ASGI
    shim on the same server protocol (no uvicorn);
``uvicorn``
    ``tollhouse serve`` itself.

The depths below ``uvicorn`` are measuring prototypes (``bench/depth_servers.py``), not
servers: they answer only the benchmark's request.

For each depth it starts a server pinned to CPU 0 (as ``bench.run`` pins the gateway),
drives it with ``bench.run`` at concurrency 1, and prints what ``bench.run`` measured
(added p50) beside the server's own time per request, median µs, from the client's
bytes arriving to the upstream request written, and from the upstream's answer
arriving to the client's answer written. Depths alternate within each round, so
drift on a shared machine hits all of them alike::

    .venv/bin/python -m bench.depths                       # 50 ms upstream, 2 rounds (~4 min)
    .venv/bin/python -m bench.depths --rounds 3 --depths callbacks,gate,uvicorn
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.depth_servers import serve
from bench.run import GATEWAY_CONFIG, _free_port, _wait_ready, sqlite_store

DEPTHS = ("floor", "callbacks", "task", "executor", "gate", "asgi", "uvicorn")


def _measure(depth: str, work: Path, delay: int, duration: float) -> dict[str, Any]:
    """Start ``depth``, drive it at concurrency 1 with ``bench.run``, return its numbers."""
    port, mock_port = _free_port(), _free_port()
    config = work / f"{depth}.yaml"
    config.write_text(
        GATEWAY_CONFIG.format(
            mock_port=mock_port, model="bench-model", store_url=sqlite_store(work)
        )
    )
    for stale in work.glob("bench-store.db*"):
        stale.unlink()
    out = work / f"{depth}.json"
    out.unlink(missing_ok=True)
    taskset = shutil.which("taskset")
    pin = [taskset, "-c", "0"] if taskset and (os.cpu_count() or 1) >= 2 else []
    child = [sys.executable, "-m", "bench.depths", "--serve", depth, str(config)]
    child += [str(port), str(mock_port), str(out)]
    with (work / f"{depth}.log").open("wb") as log:
        proc = subprocess.Popen([*pin, *child], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health/ready", proc, depth)
        load = [sys.executable, "-m", "bench.run", "--gateway-url", f"http://127.0.0.1:{port}"]
        load += ["--mock-port", str(mock_port), "--delay", str(delay), "--concurrency", "1"]
        load += ["--mode", "json", "--no-relay", "--duration", str(duration)]
        run = subprocess.run(load, check=True, capture_output=True, text=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    row = next(
        line.split() for line in run.stdout.splitlines() if line.strip().startswith(f"{delay}ms")
    )
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result["added_p50"] = row[8]
    return result


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        depth, config, port, upstream, out = args[1:6]
        serve(depth, config, int(port), int(upstream), Path(out))
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench.depths", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--delay", type=int, default=50, help="upstream delay in ms (50)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (5)")
    parser.add_argument("--rounds", type=int, default=2, help="(2)")
    parser.add_argument("--depths", default=",".join(DEPTHS), help="comma-separated (all)")
    opts = parser.parse_args(args)
    depths = [d for d in opts.depths.split(",") if d]
    unknown = set(depths) - set(DEPTHS)
    if unknown:
        parser.error(f"unknown depth(s): {', '.join(sorted(unknown))}; known: {', '.join(DEPTHS)}")
    print(f"upstream delay {opts.delay} ms, concurrency 1, non-streamed; "
          "µs are the server's own time per request (medians)")  # fmt: skip
    print(f"{'round':>5}  {'depth':10} {'+p50 ms':>8} {'in → upstream':>14} "
          f"{'upstream → out':>15} {'sum':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tollhouse-depths-") as tmp:
        for n in range(1, opts.rounds + 1):
            for depth in depths:
                r = _measure(depth, Path(tmp), opts.delay, opts.duration)
                if "in" in r:
                    print(f"{n:>5}  {depth:10} {r['added_p50']:>8} {r['in']:>14.0f} "
                          f"{r['out']:>15.0f} {r['in'] + r['out']:>6.0f}", flush=True)  # fmt: skip
                else:
                    print(f"{n:>5}  {depth:10} {r['added_p50']:>8}  (no request timed: see "
                          "the server's log)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
