"""``server.on_disconnect``: what a client leaving a whole (non-streamed) answer does upstream.

The upstream is the HTTP mock, which answers after a delay and keeps a ledger: a call
the gateway cut has no status there (the mock's handler was cancelled mid-delay),
while one left to finish was answered with 200 and its usage.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from bench.mock_upstream import LedgerEntry, MockUpstream
from tests.conftest import RunningGateway, run_gateway
from tollhouse.accounting.event import Outcome
from tollhouse.proxy.abandon import Abandonment
from tollhouse.proxy.asgi import CLIENT_GONE, ON_CLIENT_GONE
from tollhouse.proxy.context import RequestContext

DELAY_MS = 1500
MSG = [{"role": "user", "content": "one two three four five"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream() as up:
        yield up


def _config(up: MockUpstream, on_disconnect: str | None) -> dict[str, Any]:
    server: dict[str, Any] = {"access_log": False}
    if on_disconnect is not None:
        server["on_disconnect"] = on_disconnect
    return {
        "server": server,
        "backends": [
            {"name": "up", "provider": "openai", "base_url": up.base_url + "/v1",
             "prices": {"input": "1", "output": "2"}},
        ],
        "models": [
            {"name": "slow", "backend": "up", "model": f"gpt-x-delay-{DELAY_MS}"},
            {"name": "slow-embed", "backend": "up", "model": f"emb-delay-{DELAY_MS}"},
            {"name": "quick", "backend": "up", "model": "gpt-x"},
            {"name": "quick-stream", "backend": "up", "model": "gpt-x-chunkdelay-50"},
        ],
    }  # fmt: skip


def _leave_after(gw: RunningGateway, path: str, body: dict[str, Any], rid: str, s: float) -> None:
    """Send a request on a raw connection and close it after ``s`` seconds, unanswered."""
    host, port = gw.url.removeprefix("http://").split(":")
    raw = orjson.dumps(body)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n".encode()
            + f"x-request-id: {rid}\r\ncontent-length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        time.sleep(s)


def _upstream_entry(up: MockUpstream, rid: str) -> LedgerEntry:
    entries = [e for e in up.ledger() if e.request_id == rid]
    assert len(entries) == 1, entries
    return entries[0]


def test_cancel_cuts_the_upstream_call_of_a_whole_answer_and_charges_the_prompt(
    upstream: MockUpstream,
) -> None:
    with run_gateway(_config(upstream, "cancel")) as gw:
        body = {"model": "slow", "messages": MSG, "max_tokens": 7}
        left = time.monotonic()
        _leave_after(gw, "/v1/chat/completions", body, "gone-chat", 0.3)
        event = gw.wait_events(1)[0]
        assert time.monotonic() - left < 1.2  # at once, not when the upstream would answer
        assert event.outcome.value == "cancelled" and event.status == 499
        assert event.error_type is not None and event.error_type.value == "cancelled"
        assert event.token_source.value == "estimated"
        assert event.usage.input == _upstream_entry(upstream, "gone-chat").input > 0
        assert event.usage.output == 0
        assert event.cost is not None and event.cost > 0  # the prompt, at the input price
        assert [a.error_type.value for a in event.attempts if a.error_type] == ["cancelled"]
        labels = {"model": "slow", "backend": "up", "provider": "openai", "key": "anonymous"}
        cancelled = {"team": "none", "outcome": "cancelled", "status_class": "4xx"}
        assert gw.metric("llm_requests_total", **labels, **cancelled) == 1
        time.sleep(DELAY_MS / 1000)  # past the moment the upstream would have answered
        entry = _upstream_entry(upstream, "gone-chat")
        assert entry.status == 0 and entry.output == 0  # the mock never answered it
        # The gateway goes on serving, and a client that stays gets its answer.
        r = _post(gw, {"model": "quick", "messages": MSG, "max_tokens": 2})
        assert r["choices"][0]["message"]["content"]
        assert gw.wait_events(2)[1].outcome.value == "success"


def test_cancel_cuts_an_embeddings_call_too(upstream: MockUpstream) -> None:
    with run_gateway(_config(upstream, "cancel")) as gw:
        body = {"model": "slow-embed", "input": "one two three"}
        _leave_after(gw, "/v1/embeddings", body, "gone-embed", 0.3)
        event = gw.wait_events(1)[0]
        assert event.outcome.value == "cancelled" and event.status == 499
        assert event.token_source.value == "estimated" and event.usage.input > 0
        time.sleep(DELAY_MS / 1000)
        assert _upstream_entry(upstream, "gone-embed").status == 0


def test_finish_is_the_default_and_lets_the_upstream_answer(upstream: MockUpstream) -> None:
    with run_gateway(_config(upstream, None)) as gw:
        assert gw.app.config.server.on_disconnect == "finish"
        body = {"model": "slow", "messages": MSG, "max_tokens": 7}
        _leave_after(gw, "/v1/chat/completions", body, "gone-finish", 0.3)
        event = gw.wait_events(1)[0]
        assert event.outcome.value == "cancelled" and event.status == 499
        assert event.token_source.value == "reported" and event.usage.output == 7
        entry = _upstream_entry(upstream, "gone-finish")
        assert entry.status == 200 and entry.output == 7


def _post(gw: RunningGateway, body: dict[str, Any]) -> Any:
    r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_streams_are_cancelled_by_their_own_watch_under_cancel_too(upstream: MockUpstream) -> None:
    with run_gateway(_config(upstream, "cancel")) as gw:
        body = {"model": "quick-stream", "messages": MSG, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", gw.v1 + "/chat/completions", json=body, timeout=10) as r:
            for line in r.iter_lines():  # up to the first token, then leave
                if line.startswith("data: {") and _delta_text(line):
                    break
            else:
                raise AssertionError("the stream carried no token")
        event = gw.wait_events(1)[0]
        assert event.outcome.value == "cancelled" and event.status == 200  # headers went out
        assert event.token_source.value == "estimated" and event.usage.output >= 1


def _delta_text(line: str) -> str:
    choices = orjson.loads(line.removeprefix("data: "))["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""


async def _served(scope: dict[str, Any], attempts: Any) -> RequestContext:
    ctx = RequestContext.begin("r", "chat")
    await Abandonment(scope).execute(ctx, attempts)
    return ctx


async def test_a_client_gone_before_the_first_attempt_costs_nothing() -> None:
    called: list[int] = []

    async def attempts() -> None:
        called.append(1)

    scope: dict[str, Any] = {CLIENT_GONE: True}
    ctx = await _served(scope, attempts)
    assert called == [] and ctx.charges == []
    assert ctx.outcome is Outcome.CANCELLED and ctx.status == 499
    assert ON_CLIENT_GONE not in scope


async def test_only_the_client_leaving_is_absorbed_not_another_cancellation() -> None:
    async def attempts() -> None:
        await asyncio.sleep(10)

    scope: dict[str, Any] = {}
    left = asyncio.create_task(_served(scope, attempts))
    await asyncio.sleep(0.01)
    scope[ON_CLIENT_GONE]()  # what the server does when the connection closes
    ctx = await asyncio.wait_for(left, 1)
    assert ctx.outcome is Outcome.CANCELLED and ctx.status == 499
    assert ON_CLIENT_GONE not in scope

    other: dict[str, Any] = {}
    shut = asyncio.create_task(_served(other, attempts))
    await asyncio.sleep(0.01)
    shut.cancel()  # a server shutting down: not the client's doing
    with pytest.raises(asyncio.CancelledError):
        await shut
    assert ON_CLIENT_GONE not in other
