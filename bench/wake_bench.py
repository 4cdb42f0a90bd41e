"""The same request path, run back to back and after idle gaps: what waking up costs here.

At concurrency 1 with a 50 ms upstream, ``bench.run`` shows the gateway adding
more latency than with a 0 ms one, although it runs the same code. This
measures why, with no network and no other process in the way: it drives the
real ASGI app in-process (in-process mock provider, SQLite ledger, metrics and
access log on) and times one request after sleeping 0, 2, 10 and 50 ms.

On a virtual machine a vCPU that goes idle is halted, and its physical core
serves other work meanwhile; code that runs right after the wake-up finds cold
caches and runs several times slower. A large working set (an interpreter, a
web stack, the gateway's state) pays that in full, a tiny one (``bench.relay``)
hardly at all. So the 50 ms rows at concurrency 1 measure this machine's wake-up
as much as the gateway; the 0 ms rows are the gateway's own overhead.

    python -m bench.wake_bench
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from tollhouse.app import create_app
from tollhouse.config.schema import Config

BODY = orjson.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 16,
    }
)
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/chat/completions",
    "raw_path": b"/v1/chat/completions",
    "query_string": b"",
    "root_path": "",
    "headers": [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ],
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 2),
}
GAPS_MS = (0, 2, 10, 50)


def _config(workdir: Path) -> Config:
    return Config.model_validate(
        {
            "server": {"access_log": True},
            "auth": {"required": False},
            "store": {"url": f"sqlite+aiosqlite:///{workdir}/wake-bench.db"},
            "backends": [
                {"name": "mock", "provider": "mock", "prices": {"input": 1.0, "output": 2.0}}
            ],
            "models": [{"name": "bench-model", "backend": "mock", "model": "mock-chat"}],
        }
    )


async def _measure(workdir: Path, requests: int) -> dict[int, float]:
    app = create_app(_config(workdir))
    lifespan: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_receive() -> dict[str, str]:
        return await lifespan.get()

    async def lifespan_send(message: dict[str, Any]) -> None:
        started.set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_receive, lifespan_send)
    )
    await lifespan.put({"type": "lifespan.startup"})
    await started.wait()
    try:
        for _ in range(2000):  # warm every cache the process controls
            await app(dict(SCOPE), receive, send)
            await asyncio.sleep(0)
        medians: dict[int, float] = {}
        for gap in GAPS_MS:
            times = []
            for _ in range(requests):
                if gap:
                    await asyncio.sleep(gap / 1000)
                t0 = time.perf_counter()
                await app(dict(SCOPE), receive, send)
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(0)  # the sinks run on the next loop turn, as in serving
            medians[gap] = statistics.median(times)
        if set(statuses) != {200}:
            raise RuntimeError(f"unexpected statuses: {sorted(set(statuses))}")
        return medians
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        await task


def _compute() -> int:
    """Arithmetic on a few locals: its working set fits in the first-level cache."""
    total = 0
    for i in range(3000):
        total += i * i
    return total


_HEAP: list[dict[str, int | str]] = [{"n": i, "s": str(i)} for i in range(200_000)]


def _walk() -> int:
    """Reads 4,000 dicts spread over the heap: the cache behaviour of a request path."""
    return sum(int(d["n"]) for d in _HEAP[::50])


def _references(requests: int) -> dict[str, dict[int, float]]:
    """The same gaps for the two kinds of work above, to tell a slow CPU from cold caches."""
    out: dict[str, dict[int, float]] = {}
    for name, work in (("compute loop", _compute), ("memory walk", _walk)):
        out[name] = {}
        for gap in GAPS_MS:
            times = []
            for _ in range(requests):
                if gap:
                    time.sleep(gap / 1000)
                t0 = time.perf_counter()
                work()
                times.append(time.perf_counter() - t0)
            out[name][gap] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wake_bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=60, help="timed requests per gap")
    args = parser.parse_args()
    logging.getLogger("tollhouse.access").disabled = True  # measured, not printed
    with tempfile.TemporaryDirectory(prefix="tollhouse-wake-") as tmp:
        medians = uvloop.run(_measure(Path(tmp), args.requests))
    rows = {"gateway request (in-process app)": medians, **_references(args.requests)}
    print("median time of one unit of work after sleeping; x = relative to back to back")
    print(f"  {'work':<34}" + "".join(f"{f'after {gap} ms':>20}" for gap in GAPS_MS))
    for name, row in rows.items():
        cells = "".join(
            f"{f'{row[gap] * 1e6:.1f} µs ({row[gap] / row[0]:.1f}x)':>20}" for gap in GAPS_MS
        )
        print(f"  {name:<34}{cells}")


if __name__ == "__main__":
    main()
