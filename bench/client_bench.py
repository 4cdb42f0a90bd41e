"""Upstream client cost: aiohttp's ``HttpTransport`` against the lean ``H1Transport``.

Both clients are driven through the gateway's one-method ``Transport`` seam (``send``,
then ``read()`` or ``iter_lines()``, then ``aclose()``), in the same process, against the
same server, in alternating runs (the order flips every round so neither always gets the
warmer machine). Sequential calls (c=1) show the per-request latency a proxied request
pays; 64 concurrent workers show the CPU cost per call as throughput. A third "client",
``raw``, is the floor: asyncio streams with a pre-encoded request that understand only
Content-Length answers (json mode only), for what any real client could approach.

By default it starts ``python -m bench.mock_upstream`` in a child process (so the server
does not share this process's GIL) and, with ``taskset`` on a machine with two CPUs or
more, pins the mock to CPU 1 and this process to CPU 0. ``--url`` measures any other
OpenAI-compatible chat endpoint instead.

    .venv/bin/python -m bench.client_bench
    .venv/bin/python -m bench.client_bench --rounds 5 --stream
    .venv/bin/python -m bench.client_bench --url http://127.0.0.1:9000/v1/chat/completions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import orjson

from tollhouse.config.schema import Timeouts
from tollhouse.providers.base import Transport, UpstreamRequest
from tollhouse.providers.h1 import H1Transport
from tollhouse.providers.http import HttpTransport

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
    uvloop = None  # type: ignore[assignment]

REPO: Final = Path(__file__).resolve().parent.parent
BODY: Final = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 16,
}


class _RawResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {}
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def iter_lines(self) -> AsyncIterator[bytes]:
        for line in self._body.split(b"\n"):
            yield line

    async def aclose(self) -> None:
        pass


class RawFloor:
    """The floor, not a client: asyncio streams, the request encoded once, and only
    Content-Length answers (so json mode only). What any real client is compared to."""

    def __init__(self) -> None:
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []
        self._wire = b""

    async def send(self, request: UpstreamRequest) -> _RawResponse:
        url = urlsplit(request.url)
        if not self._wire:
            fields = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
            self._wire = (
                f"{request.method} {url.path} HTTP/1.1\r\nhost: {url.netloc}\r\n{fields}"
                f"content-length: {len(request.body)}\r\n\r\n"
            ).encode() + request.body
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            self._all.append(writer)
        writer.write(self._wire)
        head = await reader.readuntil(b"\r\n\r\n")
        at = head.lower().index(b"content-length:") + 15
        body = await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
        self._idle.append((reader, writer))
        return _RawResponse(int(head[9:12]), body)

    async def aclose(self) -> None:
        for writer in self._all:
            writer.close()
        for writer in self._all:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


CLIENTS: Final[dict[str, Callable[[], Transport]]] = {
    "aiohttp": lambda: HttpTransport(Timeouts(), 1000),
    "h1": lambda: H1Transport(Timeouts(), 1000),
    "raw": RawFloor,
}


@dataclass
class Sample:
    """Every latency (seconds) and the wall time of the runs of one (client, c, mode)."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    requests: int = 0
    rps: list[float] = field(default_factory=list)


async def _one(transport: Transport, request: UpstreamRequest) -> float:
    started = time.perf_counter()
    resp = await transport.send(request)
    try:
        if request.stream:
            async for _ in resp.iter_lines():
                pass
        else:
            await resp.read()
    finally:
        await resp.aclose()
    if resp.status != 200:
        raise RuntimeError(f"upstream answered {resp.status}")
    return time.perf_counter() - started


async def _run(
    make: Callable[[], Transport], request: UpstreamRequest, concurrency: int, total: int
) -> tuple[list[float], float]:
    """``total`` calls spread over ``concurrency`` workers, after a short warm-up."""
    transport = make()
    try:
        await asyncio.gather(*(_one(transport, request) for _ in range(concurrency)))
        for _ in range(max(5, total // 20 // concurrency)):
            await asyncio.gather(*(_one(transport, request) for _ in range(concurrency)))
        latencies: list[float] = []
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                latencies.append(await _one(transport, request))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started
    finally:
        await transport.aclose()


async def _bench(args: argparse.Namespace) -> dict[tuple[str, int, bool], Sample]:
    modes = (False, True) if args.stream else (False,)
    results: dict[tuple[str, int, bool], Sample] = {}
    names = list(CLIENTS)
    for round_no in range(args.rounds):
        order = names if round_no % 2 == 0 else names[::-1]
        for stream in modes:
            body = dict(BODY, stream=True) if stream else BODY
            request = UpstreamRequest(
                "POST",
                args.url,
                {"authorization": "Bearer bench", "content-type": "application/json"},
                orjson.dumps(body),
                stream=stream,
            )
            for concurrency, total in ((1, args.sequential), (64, args.concurrent)):
                for name in order:
                    if name == "raw" and stream:
                        continue
                    latencies, wall = await _run(CLIENTS[name], request, concurrency, total)
                    sample = results.setdefault((name, concurrency, stream), Sample())
                    sample.latencies += latencies
                    sample.wall += wall
                    sample.requests += len(latencies)
                    sample.rps.append(len(latencies) / wall)
        print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
    return results


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _table(results: dict[tuple[str, int, bool], Sample]) -> str:
    head = f"{'mode':<7}{'c':>4}  {'client':<8}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
    lines = [head, "-" * len(head)]
    for stream in (False, True):
        for concurrency in (1, 64):
            base = results.get(("aiohttp", concurrency, stream))
            for name in CLIENTS:
                s = results.get((name, concurrency, stream))
                if s is None:
                    continue
                lines.append(
                    f"{'stream' if stream else 'json':<7}{concurrency:>4}  {name:<8}"
                    f"{statistics.median(s.rps):>9.0f}{_pct(s.latencies, 0.5):>9.3f}"
                    f"{_pct(s.latencies, 0.9):>9.3f}{_pct(s.latencies, 0.99):>9.3f}"
                )
            h1 = results.get(("h1", concurrency, stream))
            raw = results.get(("raw", concurrency, stream))
            if base is not None and h1 is not None:
                saved = _pct(base.latencies, 0.5) - _pct(h1.latencies, 0.5)
                ratio = statistics.median(h1.rps) / statistics.median(base.rps)
                note = f"h1 vs aiohttp: {-saved:+.3f} ms at p50, {ratio:.2f}x req/s"
                if raw is not None:
                    extra = _pct(h1.latencies, 0.5) - _pct(raw.latencies, 0.5)
                    note += f"; h1 vs raw floor: {extra:+.3f} ms at p50"
                lines.append(f"{'':<13}{note}")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _mock(pin: bool) -> Iterator[str]:
    """Start the mock upstream in a child process; yield its chat URL."""
    port = _free_port()
    argv = [sys.executable, "-m", "bench.mock_upstream", "--port", str(port)]
    taskset = shutil.which("taskset")
    if pin and taskset:
        argv = [taskset, "-c", "1", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the mock upstream did not start") from None
                time.sleep(0.1)
        yield base + "/v1/chat/completions"
    finally:
        proc.terminate()
        proc.wait(10)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.client_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", help="chat endpoint to measure (default: start the mock)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--sequential", type=int, default=2000, help="calls per c=1 run (2000)")
    parser.add_argument("--concurrent", type=int, default=20000, help="calls per c=64 run")
    parser.add_argument("--stream", action="store_true", help="also measure SSE streams")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    use_uvloop = args.loop == "uvloop" and uvloop is not None
    pinned = False
    with contextlib.ExitStack() as stack:
        if args.url is None:
            args.url = stack.enter_context(_mock(pin))
            if pin:
                os.sched_setaffinity(0, {0})
                pinned = True
        print(
            f"client bench: {args.url}, loop={'uvloop' if use_uvloop else 'asyncio'}, "
            f"{'mock on CPU 1, clients on CPU 0' if pinned else 'not pinned'}, "
            f"{args.rounds} rounds x ({args.sequential} calls at c=1, "
            f"{args.concurrent} at c=64)",
            flush=True,
        )
        coro = _bench(args)
        results = uvloop.run(coro) if use_uvloop else asyncio.run(coro)
    print(_table(results))


if __name__ == "__main__":
    main()
