"""Where the gateway's own time goes in one proxied request, segment by segment.

``bench.run`` says how much latency the gateway adds; this says where, inside the
gateway process, that time is spent. It starts a gateway whose hot path is
timestamped (by wrapping a few functions from outside: nothing in ``tollhouse``
knows about it), drives it with ``bench.run`` against the mock upstream, and on
exit prints the median of each segment of a non-streamed chat request:

1. request bytes arrive → the application is called (uvicorn: parse, scope, task);
2. application → upstream call starts (body, validation, auth, routing, limits);
3. upstream call → request bytes written to the upstream socket;
4. upstream answer bytes arrive → the request's task has the payload again;
5. payload → reply starts (parse usage, build the client's body);
6. reply → response bytes handed to the client socket.

The sum is the gateway's in-process share of its added latency; the rest is the
kernel and the extra process wake-ups any proxy pays (``bench/relay.py``). Run it
with the 50 ms upstream and then 0 ms to see what an idle wait does to each part
(``bench/README.md``, "Why the 50 ms rows at concurrency 1 add more").

    .venv/bin/python -m bench.segments --delay 50
    .venv/bin/python -m bench.segments --delay 0 --duration 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench.run import GATEWAY_CONFIG, _free_port, _wait_ready, sqlite_store

SEGMENTS = (
    ("1 bytes in → app", "t_in", "t_app"),
    ("2 app → upstream call", "t_app", "t_call"),
    ("3 upstream call → bytes out", "t_call", "t_up_out"),
    ("4 upstream bytes in → resumed", "t_up_in", "t_resumed"),
    ("5 resumed → reply", "t_resumed", "t_reply"),
    ("6 reply → bytes out", "t_reply", "t_out"),
)


def install(out: Path) -> None:
    """Timestamp the gateway's hot path; write the medians to ``out`` on SIGTERM."""
    from tollhouse import app, server
    from tollhouse.providers import h1_conn
    from tollhouse.proxy import chat, gateway

    ns = time.perf_counter_ns
    marks: dict[str, int] = {}
    rows: list[dict[str, int]] = []

    def stamp(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def stamped(*args: Any, **kwargs: Any) -> Any:
            marks[key] = ns()
            return original(*args, **kwargs)

        setattr(owner, name, stamped)

    after: dict[str, int] = {}  # the last answer's flush and sinks, for the next request
    original_received = server.GatewayHttpProtocol.data_received

    def received(self: Any, data: bytes) -> None:
        now = marks["t_in"] = ns()
        if "t_out" in after:
            marks["gap"] = now - after.pop("t_out")
            marks["sinks"] = after.pop("sinks", 0)
        original_received(self, data)

    original_done = gateway.Gateway.done

    def done(self: Any, ctx: Any) -> None:
        start = ns()
        original_done(self, ctx)
        after["sinks"] = ns() - start

    stamp(h1_conn.Conn, "start", "t_up_out")
    stamp(h1_conn.Conn, "data_received", "t_up_in")
    original_http = app.App._http

    async def http(self: Any, scope: Any, receive: Any, send: Any) -> None:
        marks["t_app"] = ns()
        await original_http(self, scope, receive, send)

    original_call = getattr(chat, "call_upstream")  # noqa: B009 (not re-exported)

    async def call_upstream(*args: Any) -> bytes:
        marks["t_call"] = ns()
        payload: bytes = await original_call(*args)
        marks["t_resumed"] = ns()
        return payload

    original_reply = getattr(chat, "reply_json")  # noqa: B009 (not re-exported)

    async def reply_json(*args: Any) -> None:
        marks["t_reply"] = ns()
        await original_reply(*args)

    original_flush = server._CoalescingTransport.flush

    def flush(self: Any) -> None:
        now = ns()
        original_flush(self)
        if "t_reply" in marks:  # the flush that carries a proxied answer
            rows.append({**marks, "t_out": now})
            marks.clear()
            after["t_out"] = now

    for owner, name, value in (
        (app.App, "_http", http),
        (chat, "call_upstream", call_upstream),
        (chat, "reply_json", reply_json),
        (server._CoalescingTransport, "flush", flush),
        (server.GatewayHttpProtocol, "data_received", received),
        (gateway.Gateway, "done", done),
    ):
        setattr(owner, name, value)

    def report(signum: int, frame: FrameType | None) -> None:
        out.write_text(summary(rows))
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)


def summary(rows: list[dict[str, int]]) -> str:
    """Median (p10-p90) µs of each segment and of their sum."""
    rows = [r for r in rows if all(k in r for _, a, b in SEGMENTS for k in (a, b))]
    if not rows:
        return "no proxied non-streamed request was timed\n"
    lines = [f"{len(rows)} requests; µs: median (p10-p90)"]
    totals = [sum(r[b] - r[a] for _, a, b in SEGMENTS) for r in rows]
    for name, a, b in SEGMENTS:
        lines.append(f"  {name:32} {_spread([r[b] - r[a] for r in rows])}")
    lines.append(f"  {'in the gateway, all six':32} {_spread(totals)}")
    follow = [r for r in rows if "gap" in r]
    if follow:
        lines.append("after the answer left (a closed loop sends the next request at once):")
        lines.append(f"  {'sinks (Gateway.done)':32} {_spread([r['sinks'] for r in follow])}")
        gaps = [r["gap"] for r in follow]
        lines.append(f"  {'answer out → next request in':32} {_spread(gaps)}")
    return "\n".join(lines) + "\n"


def _spread(values_ns: list[int]) -> str:
    v = sorted(values_ns)
    n = len(v)
    return f"{v[n // 2] / 1000:6.0f} ({v[n // 10] / 1000:.0f}-{v[n * 9 // 10] / 1000:.0f})"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:  # the gateway child: timestamp, then ``tollhouse serve``
        install(Path(args[1]))
        from tollhouse.cli import main as tollhouse_main

        sys.exit(tollhouse_main(args[2:]))
    parser = argparse.ArgumentParser(description="Where the gateway's own time goes.")
    parser.add_argument("--delay", type=int, default=50, help="upstream delay in ms (50)")
    parser.add_argument("--concurrency", type=int, default=1, help="(1)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    opts = parser.parse_args(args)
    taskset = shutil.which("taskset")
    pin = [taskset, "-c", "0"] if taskset and (os.cpu_count() or 1) >= 2 else []
    with tempfile.TemporaryDirectory(prefix="tollhouse-segments-") as tmp:
        work, mock_port, port = Path(tmp), _free_port(), _free_port()
        config = work / "tollhouse.yaml"
        config.write_text(
            GATEWAY_CONFIG.format(
                mock_port=mock_port, model="bench-model", store_url=sqlite_store(work)
            )
        )
        out = work / "segments.txt"
        serve = [sys.executable, "-m", "bench.segments", "--serve", str(out)]
        serve += ["serve", "--config", str(config), "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        with (work / "gateway.log").open("wb") as log:
            gateway = subprocess.Popen([*pin, *serve], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"{url}/health/ready", gateway, "gateway")
            load = [sys.executable, "-m", "bench.run", "--gateway-url", url]
            load += ["--mock-port", str(mock_port), "--delay", str(opts.delay)]
            load += ["--concurrency", str(opts.concurrency), "--mode", "json", "--no-relay"]
            load += ["--duration", str(opts.duration)]
            subprocess.run(load, check=True)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
        print(f"\nthe gateway's own time per request, {opts.delay} ms upstream:")
        print(out.read_text() if out.exists() else "no report (see the gateway's log)")


if __name__ == "__main__":
    main()
