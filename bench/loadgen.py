"""A small closed-loop HTTP/1.1 load generator for the gateway benchmark.

Why not aiohttp or httpx: on a 2-core machine the client competes with the servers it
measures, so it must cost as little as possible. Each of N workers owns one keep-alive
connection made with ``asyncio.open_connection`` (on uvloop), writes a pre-encoded
request, reads the answer (Content-Length or chunked) and immediately sends the next.

For streams it notes the arrival of the first ``data:`` line that carries content (an
OpenAI ``delta.content`` or an Anthropic ``text_delta``): the time to first token. A
stream only counts as a success if it ends with ``data: [DONE]`` or ``message_stop``.

Only requests that *complete* inside the measurement window (after the warm-up) are
counted; requests still in flight when it ends are abandoned and reported separately.

``python -m bench.loadgen http://127.0.0.1:9000/v1/chat/completions -c 16 -d 5 --stream``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
    uvloop = None  # type: ignore[assignment]

DEFAULT_BODY: Final[dict[str, Any]] = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 16,
}
_STREAM_END_MARKERS: Final = (b"[DONE]", b"message_stop")
_MAX_ERROR_SAMPLES: Final = 5


class BadResponse(Exception):
    """A response that arrived but is not a success (status, or a stream cut short)."""


@dataclass(slots=True)
class Percentiles:
    p50: float
    p90: float
    p99: float


@dataclass(slots=True)
class LoadResult:
    """What one measurement produced; times in milliseconds."""

    url: str
    stream: bool
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None
    abandoned: int
    error_samples: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> LoadResult:
        raw = orjson.loads(data)
        for key in ("latency_ms", "ttft_ms"):
            if raw[key] is not None:
                raw[key] = Percentiles(**raw[key])
        return cls(**raw)


def percentiles(values: list[float]) -> Percentiles | None:
    """Nearest-rank percentiles (no interpolation: every value reported was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))]

    return Percentiles(rank(50), rank(90), rank(99))


def _is_content_line(line: bytes) -> bool:
    """Does this SSE line carry generated text (not the role chunk, not usage)?"""
    if not line.startswith(b"data:"):
        return False
    payload = line[5:].strip()
    if not payload or payload == b"[DONE]":
        return False
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(event, dict):
        return False
    if event.get("type") == "content_block_delta":
        return True
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        return isinstance(delta, dict) and bool(delta.get("content"))
    return False


class _StreamWatcher:
    """Finds the first content line and the end marker across arbitrary chunk splits.

    Lines are only parsed until the first token is seen; after that only a short tail
    is kept to spot the end marker, so long streams cost almost nothing to follow.
    """

    __slots__ = ("done", "first_token_at", "pending")

    def __init__(self) -> None:
        self.pending = b""
        self.first_token_at: float | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        buffer = self.pending + data
        if self.first_token_at is None:
            *lines, rest = buffer.split(b"\n")
            for line in lines:
                if _is_content_line(line):
                    self.first_token_at = time.perf_counter()
                    break
            if self.first_token_at is None:
                self.pending = rest
                return
        if any(marker in buffer for marker in _STREAM_END_MARKERS):
            self.done = True
        self.pending = buffer[-16:]


async def _read_response(reader: asyncio.StreamReader, stream: bool) -> tuple[float | None, bool]:
    """Read one response; returns (first token time, keep connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    keep_alive = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = b"close" not in value.lower()
    watcher = _StreamWatcher() if stream and status == 200 else None
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            data = await reader.readexactly(size + 2)
            if watcher is not None:
                watcher.feed(data[:-2])
    elif length >= 0:
        data = await reader.readexactly(length)
        if watcher is not None:
            watcher.feed(data)
    else:
        data = await reader.read()
        keep_alive = False
        if watcher is not None:
            watcher.feed(data)
    if status != 200:
        raise BadResponse(f"status {status}")
    if watcher is not None:
        if watcher.first_token_at is None:
            raise BadResponse("stream without content")
        if not watcher.done:
            raise BadResponse("stream without end marker")
        return watcher.first_token_at, keep_alive
    return None, keep_alive


@dataclass(slots=True)
class _Shared:
    """Counters all workers write into (single-threaded, so no locks)."""

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0

    def error(self, what: str) -> None:
        """Count an error in the window, and remember a few distinct kinds for the report."""
        now = time.perf_counter()
        if not self.window_start <= now <= self.window_end:
            return
        self.errors += 1
        if what in self.error_kinds or len(self.error_kinds) < _MAX_ERROR_SAMPLES:
            self.error_kinds[what] = self.error_kinds.get(what, 0) + 1

    def error_samples(self) -> list[str]:
        return [f"{what} (x{count})" for what, count in self.error_kinds.items()]


async def _worker(host: str, port: int, request: bytes, stream: bool, shared: _Shared) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        while True:
            try:
                shared.in_flight += 1
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                started = time.perf_counter()
                writer.write(request)
                first_token, keep_alive = await _read_response(reader, stream)
                finished = time.perf_counter()
                shared.in_flight -= 1
                if shared.window_start <= finished <= shared.window_end:
                    shared.latencies.append(finished - started)
                    if first_token is not None:
                        shared.ttfts.append(first_token - started)
                if not keep_alive:
                    writer.close()
                    writer = None
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                shared.in_flight -= 1
                shared.error(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                    writer = None
                await asyncio.sleep(0.01)  # do not spin on a dead server
            except BadResponse as exc:
                shared.in_flight -= 1
                shared.error(str(exc))
    finally:
        if writer is not None:
            writer.close()


def encode_request(
    url: str,
    body: dict[str, Any] | None = None,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[str, int, bytes]:
    """The host, port and pre-encoded bytes of the benchmark's POST to ``url``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only plain http:// URLs are supported, not {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    payload = dict(DEFAULT_BODY if body is None else body)
    if stream:
        payload["stream"] = True
    encoded = orjson.dumps(payload)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(encoded)}",
        "Accept: */*",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded
    return parts.hostname, parts.port or 80, request


async def run_load(
    url: str,
    *,
    body: dict[str, Any] | None = None,
    stream: bool = False,
    concurrency: int = 16,
    duration: float = 5.0,
    warmup: float = 1.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Drive ``url`` with ``concurrency`` closed-loop connections; measure ``duration`` s."""
    host, port, request = encode_request(url, body, stream, headers)
    now = time.perf_counter()
    shared = _Shared(window_start=now + warmup, window_end=now + warmup + duration)
    tasks = [
        asyncio.create_task(_worker(host, port, request, stream, shared))
        for _ in range(concurrency)
    ]
    try:
        await asyncio.sleep(warmup + duration)
    finally:
        abandoned = shared.in_flight
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    ms = [value * 1000 for value in shared.latencies]
    ttft = [value * 1000 for value in shared.ttfts]
    return LoadResult(
        url=url,
        stream=stream,
        concurrency=concurrency,
        duration_s=duration,
        requests=len(ms),
        errors=shared.errors,
        rps=len(ms) / duration,
        latency_ms=percentiles(ms),
        ttft_ms=percentiles(ttft) if stream else None,
        abandoned=abandoned,
        error_samples=shared.error_samples(),
    )


def _format(result: LoadResult) -> str:
    def show(p: Percentiles | None) -> str:
        return "-" if p is None else f"p50 {p.p50:.2f}  p90 {p.p90:.2f}  p99 {p.p99:.2f} ms"

    lines = [
        f"{result.url}  stream={result.stream}  concurrency={result.concurrency}",
        f"  {result.requests} ok in {result.duration_s:g} s = {result.rps:,.0f} req/s, "
        f"{result.errors} errors, {result.abandoned} abandoned at the end",
        f"  latency  {show(result.latency_ms)}",
    ]
    if result.stream:
        lines.append(f"  TTFT     {show(result.ttft_ms)}")
    lines.extend(f"  error: {sample}" for sample in result.error_samples)
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("url", help="e.g. http://127.0.0.1:9000/v1/chat/completions")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="connections (16)")
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="measured s (5)")
    parser.add_argument("-w", "--warmup", type=float, default=1.0, help="unmeasured s (1)")
    parser.add_argument("--stream", action="store_true", help='send "stream": true')
    parser.add_argument("--body", help="JSON request body (default: the bench chat request)")
    parser.add_argument(
        "-H", "--header", action="append", default=[], help="extra 'Name: value' header"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m bench.loadgen``."""
    args = _parse_args(argv)
    headers = dict(
        (name.strip(), value.strip())
        for name, _, value in (header.partition(":") for header in args.header)
    )
    coro = run_load(
        args.url,
        body=orjson.loads(args.body) if args.body else None,
        stream=args.stream,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        headers=headers,
    )
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    sys.stdout.write(result.to_json().decode() + "\n" if args.json else _format(result) + "\n")


if __name__ == "__main__":
    main()
