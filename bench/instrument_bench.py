"""Library mode's cost per call: what ``tollhouse.instrument`` adds to an SDK call.

Two measurements, both in-process:

* **recording path** — the instrumentation's own work without any SDK, in the
  two parts it runs in: the caller's share (start a ``Call``: a queue append,
  clocks; on return check the answer reports usage, stop the clock, queue
  it) and the batch's share, which the drainer thread pays later (reading the
  usage, price lookup, exact Decimal cost, the ``UsageEvent``, the
  ``MetricsRecorder`` and the in-flight gauge; see
  ``tollhouse.instrument.drain``); plus the per-chunk cost of watching a stream.
* **SDK calls** — the real ``openai`` and ``anthropic`` clients, instrumented
  and not, against an in-process ``MockTransport`` of the HTTP library the SDK
  itself uses (``httpx2`` here), so no network or server time is included. The
  difference between the two is the per-call overhead the caller sees. Calls
  alternate (plain, instrumented, instrumented, plain, ...) and medians are
  reported, which keeps drift out of the difference. A do-nothing wrapper
  (``functools.wraps`` around the same ``create``) is measured the same way:
  the floor any Python-level wrapper pays inside an SDK call on this machine.

    .venv/bin/python -m bench.instrument_bench
    .venv/bin/python -m bench.instrument_bench --calls 3000 --rounds 9
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import orjson
from prometheus_client import CollectorRegistry

import tollhouse
from tollhouse.accounting.event import Outcome
from tollhouse.accounting.usage import Usage
from tollhouse.instrument.call import Call
from tollhouse.instrument.clients import answered
from tollhouse.instrument.core import Instrumentation, site
from tollhouse.instrument.openai_sdk import CHAT
from tollhouse.instrument.readers import read_chat_chunk
from tollhouse.instrument.streams import Watch

PRICES = {"input": "2.5", "output": "10", "cached_input": "1.25"}
MESSAGES = [{"role": "user", "content": "hello there"}]
WORDS = 16


def http_module() -> Any:
    """The HTTP library the installed openai SDK is built on (httpx or httpx2)."""
    base = openai.DefaultHttpxClient.__mro__[1]
    return importlib.import_module(base.__module__.partition(".")[0])


def _chat_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "tok " * WORDS},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": WORDS, "total_tokens": 9 + WORDS},
        }
    )


def _chat_sse() -> bytes:
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    parts = [head + b'[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
    parts += [head + b'[{"index":0,"delta":{"content":"tok "}}]}\n\n'] * WORDS
    parts.append(head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    usage = b'{"prompt_tokens":9,"completion_tokens":16,"total_tokens":25}'
    parts.append(head + b'[],"usage":' + usage + b"}\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def _message_body() -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [{"type": "text", "text": "tok " * WORDS}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 9, "output_tokens": WORDS},
        }
    )


def transport(httpx: Any) -> Any:
    chat, sse, message = _chat_body(), _chat_sse(), _message_body()
    json_headers = {"content-type": "application/json"}
    sse_headers = {"content-type": "text/event-stream"}

    def handle(request: Any) -> Any:
        if request.url.path.endswith("/messages"):
            return httpx.Response(200, content=message, headers=json_headers)
        if b'"stream":true' in request.content:
            return httpx.Response(200, content=sse, headers=sse_headers)
        return httpx.Response(200, content=chat, headers=json_headers)

    return httpx.MockTransport(handle)


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def recording_path(calls: int, rounds: int) -> dict[str, float]:
    """µs per call of the instrumentation alone (no SDK, no HTTP), split the way it runs:
    the caller's share (start the call, check the answer reports usage, queue it) and
    the batch's (usage read, price, Decimal cost, event, recorder, in-flight gauge),
    which the drainer thread does later."""
    inst = Instrumentation(CollectorRegistry())
    where = site("openai", "api.openai.com", prices=PRICES)
    usage = Usage(input=9, output=WORDS, cached_input=4)
    answer = openai.types.chat.ChatCompletion.model_validate(
        {
            "id": "r",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant"}}],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": WORDS,
                "total_tokens": 9 + WORDS,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )

    def call_once() -> None:
        call = Call(inst, where, "chat", "gpt-4o-mini", False)
        answered(call, answer, CHAT, {})  # what the wrapper does on return

    call_once()  # bind label children and resolve the price once, as the first real call does
    inst.flush()
    captured: list[Any] = []
    spare = Instrumentation(CollectorRegistry(), sinks=[captured.append])
    Call(spare, where, "chat", "gpt-4o-mini", False).end(Outcome.SUCCESS, usage=usage)
    spare.flush()
    event, recorder = captured[0], spare.recorder

    chunk = openai.types.chat.ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "tok "}}],
        }
    )
    watch = Watch(Call(inst, where, "chat", "gpt-4o-mini", True), read_chat_chunk, len, {})

    results: dict[str, list[float]] = {"call": [], "batch": [], "recorder": [], "chunk": []}
    for _ in range(rounds):
        # Mark a batch as already scheduled, so the drainer thread stays out of the
        # timing; the flush that follows is then the whole batch, timed on its own.
        inst._scheduled = True
        results["call"].append(per_call_us(call_once, calls))
        start = time.perf_counter()
        inst.flush()
        results["batch"].append((time.perf_counter() - start) / calls * 1e6)
        results["recorder"].append(per_call_us(lambda: recorder(event), calls))
        results["chunk"].append(per_call_us(lambda: watch.observe(chunk), calls))
    return {name: min(values) for name, values in results.items()}


@dataclass
class Scenario:
    name: str
    plain: Callable[[], object]
    instrumented: Callable[[], object]
    whole: bool = True  # the whole call happens inside ``create`` (not a stream)


def _timed(resource: Any, into: list[float]) -> None:
    """Time the SDK's own ``create`` from inside (installed before instrumenting), so
    outer minus inner is exactly the wrapper's time around it."""
    method = resource.create

    def create(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    resource.create = create


def _do_nothing(resource: Any) -> None:
    """Wrap ``resource.create`` the way ``instrument`` does, but do nothing around the
    call: the floor any Python-level wrapper pays inside an SDK call."""
    method = resource.create

    @functools.wraps(method)
    def create(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    resource.create = create


def scenarios(
    httpx: Any, inst: Instrumentation, inner: list[float]
) -> tuple[list[Scenario], list[Any]]:
    def client(kind: Any, base: str) -> Any:
        return kind(
            base_url=base, api_key="k", http_client=httpx.Client(transport=transport(httpx))
        )

    oa_plain = client(openai.OpenAI, "http://bench.local/v1")
    an_plain = client(anthropic.Anthropic, "http://bench.local")
    oa_inst = client(openai.OpenAI, "http://bench.local/v1")
    an_inst = client(anthropic.Anthropic, "http://bench.local")
    oa_null = client(openai.OpenAI, "http://bench.local/v1")
    chat = Scenario("openai chat", lambda: None, lambda: None)
    null = Scenario("openai chat, do-nothing wrapper", lambda: None, lambda: None)
    stream = Scenario(f"openai chat stream ({WORDS + 3} chunks)", lambda: None, lambda: None)
    stream.whole = False
    message = Scenario("anthropic messages", lambda: None, lambda: None)
    _timed(oa_inst.chat.completions, inner)
    _timed(an_inst.messages, inner)
    _timed(oa_null.chat.completions, inner)
    tollhouse.instrument(oa_inst, instrumentation=inst, prices=PRICES)
    tollhouse.instrument(an_inst, instrumentation=inst, prices=PRICES)
    _do_nothing(oa_null.chat.completions)

    def chat_call(c: Any) -> Callable[[], object]:
        return lambda: c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def stream_call(c: Any) -> Callable[[], object]:
        def run() -> None:
            options = {"include_usage": True}
            for _ in c.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=options
            ):
                pass

        return run

    def message_call(c: Any) -> Callable[[], object]:
        return lambda: c.messages.create(
            model="claude-sonnet-4-6", messages=MESSAGES, max_tokens=16
        )

    chat.plain, chat.instrumented = chat_call(oa_plain), chat_call(oa_inst)
    null.plain, null.instrumented = chat_call(oa_plain), chat_call(oa_null)
    stream.plain, stream.instrumented = stream_call(oa_plain), stream_call(oa_inst)
    message.plain, message.instrumented = message_call(an_plain), message_call(an_inst)
    return [null, chat, stream, message], [oa_plain, oa_inst, oa_null, an_plain, an_inst]


@dataclass
class Row:
    """One scenario's medians, µs per call."""

    name: str
    plain: float
    instrumented: float
    self_time: float | None  # outer minus inner time of the wrapped ``create``


def sdk_calls(calls: int) -> list[Row]:
    """Each scenario's wall-clock medians and CPU difference.

    Plain and instrumented calls alternate one by one (the order flips each
    time), so load from other processes hits both sides alike; medians of
    thousands of calls then make the difference meaningful even on a busy box.
    """
    inst = Instrumentation(CollectorRegistry())
    inner: list[float] = []
    cases, clients = scenarios(http_module(), inst, inner)
    out = []
    for case in cases:
        case.plain()
        case.instrumented()
        inner.clear()
        plain: list[float] = []
        instrumented: list[float] = []
        for i in range(calls):
            pair = [(case.plain, plain), (case.instrumented, instrumented)]
            for fn, into in pair if i % 2 else reversed(pair):
                start = time.perf_counter()
                fn()
                into.append(time.perf_counter() - start)
        self_time = None
        if case.whole:
            self_time = statistics.median(o - i for o, i in zip(instrumented, inner, strict=True))
        out.append(
            Row(
                case.name,
                statistics.median(plain) * 1e6,
                statistics.median(instrumented) * 1e6,
                None if self_time is None else self_time * 1e6,
            )
        )
        inner.clear()
    for c in clients:
        c.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrument_bench", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="SDK calls per side (3000)")
    parser.add_argument("--rounds", type=int, default=7, help="recording-path rounds (7)")
    args = parser.parse_args(argv)
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"openai {openai.__version__}, anthropic {anthropic.__version__}, http: {http_module().__name__}"
    )
    rec = recording_path(5_000, args.rounds)
    print("\nrecording path (no SDK), best-round µs per call:")
    print(f"  the caller's share: Call start, answer checked and queued:      {rec['call']:7.2f}")
    print(f"  the batch's share: usage, price, cost, event, recorder, gauge: {rec['batch']:7.2f}")
    print(
        f"    of which MetricsRecorder(event) alone:                       {rec['recorder']:7.2f}"
    )
    print(f"  watching one stream chunk (TTFT check, usage read):            {rec['chunk']:7.2f}")
    print("\nSDK calls against an in-process MockTransport, median µs per call:")
    print(
        f"  {'scenario':34} {'plain':>8} {'instrumented':>13} {'difference':>11} "
        f"{'wrapper self':>13}"
    )
    for row in sdk_calls(args.calls):
        own = "-" if row.self_time is None else f"{row.self_time:.1f}"
        print(
            f"  {row.name:34} {row.plain:8.1f} {row.instrumented:13.1f} "
            f"{row.instrumented - row.plain:11.1f} {own:>13}"
        )
    print(
        "\n  wrapper self: time inside the instrumented create() but outside the SDK's own.\n"
        "  The batch's share (above) is paid later by the drainer thread, not by the call."
    )


if __name__ == "__main__":
    main()
