"""Shared pieces of the library-mode tests (this module holds no tests itself).

``upstream()`` is ``bench.mock_upstream.MockUpstream`` plus an OpenAI Responses
API route (``POST /v1/responses``, JSON and SSE) that the bench mock does not
speak; it writes to the same ledger, so Responses calls are checked against
ground truth like the others. ``Probe`` is a fresh ``CollectorRegistry`` with
an ``Instrumentation`` on it and a list of the events it recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, cast

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from bench.mock_upstream import Behaviour, MockUpstream, output_tokens, parse_behaviour
from tollhouse.accounting.event import UsageEvent
from tollhouse.accounting.tokens import estimate_input_tokens, estimate_prompt_tokens
from tollhouse.accounting.usage import Usage
from tollhouse.instrument.core import Instrumentation

HOST = "127.0.0.1"  # the default ``backend`` label: the base URL's host
# USD per million tokens; every part has its own rate so a wrong split shows in the cost.
PRICES = {"input": "1.5", "output": "2.5", "cached_input": "0.75", "cache_write_input": "3.75"}


def expected_cost(usage: Usage) -> float:
    """The exact cost of ``usage`` at ``PRICES`` (written out, not via the pricing code)."""
    plain = usage.input - usage.cached_input - usage.cache_write_input
    micro = (
        plain * Decimal(PRICES["input"])
        + usage.cached_input * Decimal(PRICES["cached_input"])
        + usage.cache_write_input * Decimal(PRICES["cache_write_input"])
        + usage.output * Decimal(PRICES["output"])
    )
    return float(micro / 1_000_000)


class Probe:
    """A fresh registry with an ``Instrumentation`` and the events it recorded."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inst = Instrumentation(self.registry)
        self._events: list[UsageEvent] = []
        self.inst.add_sink(self._events.append)

    @property
    def events(self) -> list[UsageEvent]:
        """The events recorded so far, once the queued calls are recorded (as a scrape does)."""
        self.inst.flush()
        return self._events

    def value(self, name: str, **labels: str) -> float:
        """A sample's value (the scrape records queued calls first); 0.0 when absent."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def only_event(self) -> UsageEvent:
        events = self.events
        assert len(events) == 1, events
        return events[0]


def traffic(model: str, provider: str = "openai", backend: str = HOST) -> dict[str, str]:
    return {"model": model, "backend": backend, "provider": provider}


def who(model: str, provider: str = "openai", backend: str = HOST) -> dict[str, str]:
    return {**traffic(model, provider, backend), "key": "none", "team": "none"}


def assert_tokens(probe: Probe, model: str, usage: Usage, source: str, **where: str) -> None:
    """Every token type of ``usage`` is in ``llm_tokens_total`` exactly (and nothing else)."""
    labels = who(model, **where)
    for kind in ("input", "output", "cached_input", "cache_write_input", "reasoning"):
        got = probe.value("llm_tokens_total", **labels, type=kind, source=source)
        assert got == getattr(usage, kind), (kind, got, usage)
    other = "reported" if source == "estimated" else "estimated"
    for kind in ("input", "output"):
        assert probe.value("llm_tokens_total", **labels, type=kind, source=other) == 0


# -- the Responses API on the bench mock ------------------------------------------------


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return (
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"
    )


def responses_prompt_tokens(body: dict[str, Any]) -> int:
    """The mock's count: string input by characters, item lists like chat messages."""
    value = body.get("input")
    prompt = (
        estimate_input_tokens(value) if isinstance(value, str) else estimate_prompt_tokens(value)
    )
    if isinstance(body.get("instructions"), str):
        prompt += estimate_prompt_tokens([{"content": body["instructions"]}])
    return prompt


def _response(rid: str, model: str, status: str, usage: Any, text: str) -> dict[str, Any]:
    output = []
    if status == "completed":
        output = [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "output": output,
        "usage": usage,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _closing(rid: str, model: str, usage: Any, text: str, n_out: int) -> bytes:
    """``response.completed``, or ``response.failed`` (rate limited) for a ``failed`` model."""
    if "failed" not in model.split("-"):
        final = _response(rid, model, "completed", usage, text)
        return _sse("response.completed", {"sequence_number": n_out + 1, "response": final})
    final = _response(rid, model, "failed", usage, text)
    final["error"] = {"code": "rate_limit_exceeded", "message": "slow down (mock)"}
    return _sse("response.failed", {"sequence_number": n_out + 1, "response": final})


def add_responses_route(up: MockUpstream) -> None:
    """Teach the mock ``POST /v1/responses`` (behaviours by model name, as for chat, plus
    ``failed``: the stream ends with ``response.failed``)."""
    server = up.server

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await server._body(request)
        assert body is not None
        model = str(body.get("model"))
        behaviour: Behaviour = parse_behaviour(model)
        stream = bool(body.get("stream"))
        record = server.ledger.open(
            server._request_id(request), cast(Any, "responses"), model, stream
        )
        prompt = record.input = responses_prompt_tokens(body)
        n_out = output_tokens({"max_tokens": body.get("max_output_tokens")})
        error = await server._before_headers(behaviour, record, "openai")
        if error is not None:
            return error
        cached = prompt // 2 if behaviour.cache else 0
        record.cached_input = cached
        record.reasoning = reasoning = min(behaviour.reasoning, n_out)
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": n_out,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + n_out,
        }
        rid = f"resp_{record.request_id}"
        headers = server._headers("openai", record.request_id, prompt + n_out)
        text = "".join(f"tok{i} " for i in range(n_out))
        if not stream:
            record.status, record.output = 200, n_out
            payload = _response(rid, model, "completed", usage, text)
            return web.json_response(
                payload, headers=headers, dumps=lambda v: orjson.dumps(v).decode()
            )
        created = _response(rid, model, "in_progress", None, "")
        return await server._stream(
            request,
            record,
            headers,
            behaviour,
            n_out,
            opening=[_sse("response.created", {"sequence_number": 0, "response": created})],
            word=lambda i: _sse(
                "response.output_text.delta",
                {
                    "sequence_number": i + 1,
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": f"tok{i} ",
                    "logprobs": [],
                },
            ),
            closing=[_closing(rid, model, usage, text, n_out)],
            malformed=b"event: response.created\ndata: {not json\n\n",
        )

    server.app.router.add_post("/v1/responses", responses)


@contextmanager
def upstream() -> Iterator[MockUpstream]:
    """The bench mock with the Responses route, serving on a free loopback port."""
    up = MockUpstream()
    add_responses_route(up)
    with up:
        yield up
