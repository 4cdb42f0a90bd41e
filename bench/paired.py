"""Added latency at concurrency 1, with direct and gateway requests taking turns.

``bench.run`` measures a scenario's two legs one after the other, a few seconds each.
On a shared virtual machine the machine itself drifts between two such windows by
more than the gateway's whole overhead (2026-12-03, one code, one 50 ms row, three
runs: +0.77, +1.33 and +1.49 ms). Here one client alternates in a single window: a
request straight to the mock, then the same request through the gateway, each on its
own keep-alive connection, the order flipping every pair so neither leg always goes
first. Whatever the machine does, it does to both legs of a pair alike.

It reports each leg's median, ``+p50`` (the gateway's median minus the direct one, as
``bench.run`` computes it) and ``paired``: the median of the per-pair differences. For
streams, the same for the time to first token.

    python -m bench.paired http://127.0.0.1:9500/v1/chat/completions \\
        http://127.0.0.1:4000/v1/chat/completions [-d 10] [-w 1] [--stream] [--json]

``bench.run`` runs it after each upstream delay's rows at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Final

import orjson
import uvloop

from bench.loadgen import BadResponse, _read_response, encode_request, percentiles

LEGS: Final = ("direct", "gateway")
_BROKEN: Final = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


@dataclass(slots=True)
class PairedResult:
    """Medians in milliseconds over the pairs completed in the window."""

    stream: bool
    pairs: int
    errors: int
    direct_p50: float | None
    gateway_p50: float | None
    added_p50: float | None
    paired_p50: float | None
    added_ttft_p50: float | None
    paired_ttft_p50: float | None
    error_samples: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> PairedResult:
        return cls(**orjson.loads(data))


class _Leg:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, url: str, stream: bool) -> None:
        self.host, self.port, self.request = encode_request(url, stream=stream)
        self.stream = stream
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def once(self) -> tuple[float, float | None]:
        """One request: (latency, time to first token or None), in seconds."""
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.conn
        started = time.perf_counter()
        writer.write(self.request)
        try:
            first_token, keep_alive = await _read_response(reader, self.stream)
        except _BROKEN:
            self.close()
            raise
        finished = time.perf_counter()
        if not keep_alive:
            self.close()
        return finished - started, None if first_token is None else first_token - started

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


def _median(values: list[float]) -> float | None:
    p = percentiles([v * 1000 for v in values])
    return None if p is None else p.p50


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


async def run_paired(
    direct_url: str, gateway_url: str, *, stream: bool, duration: float, warmup: float
) -> PairedResult:
    """Alternate the two URLs for ``warmup + duration`` s; keep the pairs that ended after
    the warm-up and in which both requests succeeded."""
    legs = {"direct": _Leg(direct_url, stream), "gateway": _Leg(gateway_url, stream)}
    latency: dict[str, list[float]] = {name: [] for name in LEGS}
    ttft: dict[str, list[float]] = {name: [] for name in LEGS}
    errors: dict[str, int] = {}
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + duration
    turn = 0
    try:
        while time.perf_counter() < window_end:
            order = LEGS if turn % 2 == 0 else LEGS[::-1]
            turn += 1
            pair: dict[str, tuple[float, float | None]] = {}
            try:
                for name in order:
                    pair[name] = await legs[name].once()
            except (*_BROKEN, BadResponse) as exc:
                what = f"{name}: {type(exc).__name__}: {exc}"
                errors[what] = errors.get(what, 0) + 1
                await asyncio.sleep(0.01)  # do not spin on a dead server
                continue
            if time.perf_counter() < window_start:
                continue
            for name, (seconds, first) in pair.items():
                latency[name].append(seconds)
                if first is not None:
                    ttft[name].append(first)
    finally:
        for leg in legs.values():
            leg.close()
    diffs = [g - d for g, d in zip(latency["gateway"], latency["direct"], strict=True)]
    ttft_diffs = [g - d for g, d in zip(ttft["gateway"], ttft["direct"], strict=True)]
    direct_p50, gateway_p50 = _median(latency["direct"]), _median(latency["gateway"])
    return PairedResult(
        stream=stream,
        pairs=len(diffs),
        errors=sum(errors.values()),
        direct_p50=direct_p50,
        gateway_p50=gateway_p50,
        added_p50=_minus(gateway_p50, direct_p50),
        paired_p50=_median(diffs),
        added_ttft_p50=_minus(_median(ttft["gateway"]), _median(ttft["direct"])),
        paired_ttft_p50=_median(ttft_diffs),
        error_samples=[f"{what} (x{n})" for what, n in list(errors.items())[:5]],
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def describe(result: PairedResult) -> str:
    """One line: what the gateway adds, as a difference of medians and paired."""
    text = f"{_ms(result.added_p50)} ms p50 (paired {_ms(result.paired_p50)})"
    if result.stream:
        text += f", TTFT {_ms(result.added_ttft_p50)} (paired {_ms(result.paired_ttft_p50)})"
    return f"{text}, {result.pairs} pairs" + (f", {result.errors} errors" if result.errors else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.paired", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "direct_url", help="the mock, e.g. http://127.0.0.1:9500/v1/chat/completions"
    )
    parser.add_argument("gateway_url", help="the gateway, proxying to that mock")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured s (10)")
    parser.add_argument("-w", "--warmup", type=float, default=1.0, help="unmeasured s (1)")
    parser.add_argument("--stream", action="store_true", help='send "stream": true')
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = uvloop.run(
        run_paired(
            args.direct_url,
            args.gateway_url,
            stream=args.stream,
            duration=args.duration,
            warmup=args.warmup,
        )
    )
    sys.stdout.write(result.to_json().decode() if args.json else describe(result))
    sys.stdout.write("\n")
    for sample in result.error_samples:
        print(f"  error: {sample}", file=sys.stderr)


if __name__ == "__main__":
    main()
