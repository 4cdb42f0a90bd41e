"""Warm cost of each piece of the gateway's request path, in-process (no network).

``bench/segments.py`` times a request's segments as they run in a live gateway, where a
50 ms idle wait makes everything several times slower; ``bench/depths.py`` times whole
layers. This times the pieces themselves, back to back, on the real ``Gateway`` built
from the benchmark's config: a map of where the request path's own Python time goes
and a quick A/B check for a change to one piece (steadier than anything end to end).
The upstream is not called: ``parse_chat`` reads a canned answer.

``--gap 50`` sleeps that many ms before each request, as a gateway waiting on a 50 ms
upstream at concurrency 1 does, and prints each piece's median: what it costs cold. The
first row, ``nothing``, times two clock reads with nothing between them: the floor
under every other row.

    .venv/bin/python -m bench.pieces [--requests 20000]
    .venv/bin/python -m bench.pieces --gap 50 [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.run import GATEWAY_CONFIG, sqlite_store

BODY = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}'
)
HEADERS = [
    (b"host", b"gateway"),
    (b"content-type", b"application/json"),
    (b"content-length", b"90"),
]
ANSWER = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 16},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22},
})  # fmt: skip
PIECES = (
    "nothing", "context", "auth", "json", "validate", "route", "estimate", "admit", "upstream body",
    "parse answer", "charge", "headers", "sinks (after the answer)",
)  # fmt: skip


async def run(requests: int, gap_ms: float = 0.0) -> None:
    from tollhouse.accounting.tokens import estimate_prompt_tokens
    from tollhouse.app import App
    from tollhouse.config import load_config
    from tollhouse.proxy import validate
    from tollhouse.proxy.asgi import parse_json
    from tollhouse.proxy.context import RequestContext
    from tollhouse.proxy.exchange import response_headers

    with tempfile.TemporaryDirectory(prefix="tollhouse-pieces-") as tmp:
        config = Path(tmp) / "tollhouse.yaml"
        config.write_text(
            GATEWAY_CONFIG.format(store_url=sqlite_store(tmp), mock_port=9, model="bench-model")
        )
        async with App(load_config(str(config))).lifespan() as gw:
            spent: list[list[int]] = [[] for _ in PIECES]
            ns = time.perf_counter_ns
            for i in range(requests):
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
                t = [ns()]
                t.append(ns())
                ctx = RequestContext.begin(f"pieces-{i}", "chat")
                t.append(ns())
                ctx.principal = await gw.auth.authenticate(HEADERS)
                t.append(ns())
                body = parse_json(BODY)
                t.append(ns())
                params = validate.chat(body)
                t.append(ns())
                ctx.stream = False
                gw.route(ctx, params.model)
                t.append(ns())
                prompt = estimate_prompt_tokens(params.messages)
                t.append(ns())
                await gw.admit(ctx, prompt, params.max_tokens or 16)
                t.append(ns())
                assert ctx.group is not None
                dep = ctx.deployment = ctx.group.deployments[0]
                dep.adapter.chat_request(body, dep.target, stream=False)
                t.append(ns())
                parsed = dep.adapter.parse_chat(ANSWER, dep.target)
                t.append(ns())
                assert parsed.usage is not None
                ctx.charge(parsed.usage)
                ctx.status = 200
                t.append(ns())
                response_headers(ctx)
                t.append(ns())
                gw.done(ctx)
                t.append(ns())
                for k in range(len(PIECES)):
                    spent[k].append(t[k + 1] - t[k])
                if i % 50 == 49:  # let the ledger writer and the access log drain, as in service
                    await asyncio.sleep(0.001)
            if gap_ms:
                _print_cold(requests, gap_ms, spent)
                return
            sinks = await _sinks_apart(gw, requests)
    print(f"{requests} requests, warm, µs per request:")
    for name, times in zip(PIECES, spent, strict=True):
        print(f"  {name:26} {sum(times) / requests / 1000:6.2f}")
    print(f"  {'all':26} {sum(map(sum, spent)) / requests / 1000:6.2f}")
    print("the sinks apart (the same event each time):")
    for name, us in sinks.items():
        print(f"  {name:26} {us:6.2f}")


def _print_cold(requests: int, gap_ms: float, spent: list[list[int]]) -> None:
    print(f"{requests} requests, each after {gap_ms:g} ms idle; µs, median (p10-p90):")
    medians = []
    for name, times in zip(PIECES, spent, strict=True):
        v = sorted(times)
        n = len(v)
        medians.append(v[n // 2])
        spread = f"({v[n // 10] / 1000:.1f}-{v[n * 9 // 10] / 1000:.1f})"
        print(f"  {name:26} {v[n // 2] / 1000:6.1f} {spread}")
    print(f"  {'all (sum of medians)':26} {sum(medians) / 1000:6.1f}")


async def served_context(gw: Any, request_id: str = "pieces-apart") -> Any:
    """The context of one bench request served with the canned answer (no upstream):
    what ``ctx.finish`` turns into the request's UsageEvent (also ``bench.stall_bench``'s)."""
    from tollhouse.proxy.context import RequestContext

    ctx = RequestContext.begin(request_id, "chat")
    ctx.principal = await gw.auth.authenticate(HEADERS)
    ctx.stream = False
    gw.route(ctx, "bench-model")
    assert ctx.group is not None
    dep = ctx.deployment = ctx.group.deployments[0]
    parsed = dep.adapter.parse_chat(ANSWER, dep.target)
    assert parsed.usage is not None
    ctx.charge(parsed.usage)
    ctx.status = 200
    return ctx


async def _sinks_apart(gw: Any, requests: int) -> dict[str, float]:
    """µs per request of building the event and of each sink, timed one by one."""
    ctx = await served_context(gw)
    ns = time.perf_counter_ns
    t0 = ns()
    for _ in range(requests):
        event = ctx.finish(gw.prices)
    out = {"event (ctx.finish)": (ns() - t0) / requests / 1000}
    for sink in gw.sinks._sinks:
        spent = 0
        for i in range(requests):
            t0 = ns()
            sink(event)
            spent += ns() - t0
            if i % 50 == 49:
                await asyncio.sleep(0.001)  # the ledger writer and access log drain
        out[f"sink {sink.name}"] = spent / requests / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pieces", description=__doc__)
    parser.add_argument("--requests", type=int, help="(20000; with --gap, 200)")
    parser.add_argument(
        "--gap", type=float, default=0.0, help="ms idle before each request (0: back to back)"
    )
    args = parser.parse_args()
    requests = args.requests or (200 if args.gap else 20000)
    asyncio.run(run(requests, args.gap))


if __name__ == "__main__":
    main()
