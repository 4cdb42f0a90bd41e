"""The response cache at the gate: look up before admission, replay hits, store misses.

A hit costs nothing upstream, so it reserves no budget or rate; its event has
zero tokens and cost, and records what it saved (the cached answer's tokens
and original cost). Keys are scoped to the team (or key, or global, as
configured) so one tenant's answers are never served to another.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tollhouse.accounting.pricing import cost
from tollhouse.accounting.usage import Usage
from tollhouse.cache import CachedAnswer, ResponseCache, cache_key, from_stream, opted_out, to_sse
from tollhouse.config.schema import CacheConfig
from tollhouse.proxy.asgi import Scope, send_bytes
from tollhouse.proxy.context import RequestContext, perf
from tollhouse.proxy.exchange import response_headers


class Lookup:
    """One request's cache decision: ``key`` is None when the cache does not apply."""

    def __init__(self, cache: ResponseCache | None, config: CacheConfig, ctx: RequestContext,
                 scope: Scope, body: dict[str, Any]) -> None:  # fmt: skip
        self.cache = cache
        self.config = config
        self.key: str | None = None
        enabled = ctx.principal.cache if ctx.principal.cache is not None else config.enabled
        if cache is None or not enabled or opted_out(scope["headers"], body):
            return
        assert ctx.group is not None
        who = {"global": None, "team": ctx.principal.team, "key": ctx.principal.key}[config.scope]
        self.key = cache_key(ctx.group.name, body, scope=who)

    async def replay(self, ctx: RequestContext, send: Any, stream: bool, wants_usage: bool) -> bool:
        """Serve a hit (as JSON or SSE) and return True; on a miss note it and return False."""
        if self.key is None or self.cache is None:
            return False
        hit = await self.cache.get(self.key)
        if hit is None:
            ctx.cache = "miss"
            return False
        ctx.cache = "hit"
        ctx.saved = (hit.usage, hit.cost)
        if not stream:
            ctx.status = 200
            await send_bytes(send, 200, hit.body, response_headers(ctx))
            return True
        events = to_sse(hit.body, include_usage=wants_usage)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                   *response_headers(ctx)]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        ctx.ttft = perf() - ctx.t0
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
        return True

    async def store(self, ctx: RequestContext, body: bytes | None, usage: Usage | None) -> None:
        """Keep a successful answer (a whole ``chat.completion`` body) for the next identical ask."""
        if self.key is None or self.cache is None or body is None or usage is None:
            return
        dep = ctx.deployment
        price = dep.price if dep is not None else None
        spent = cost(usage, price) if price is not None else None
        answer = CachedAnswer(body, usage, spent, time.time())
        await self.cache.put(self.key, answer, self.config.ttl)


def rebuild_stream(events: list[bytes], usage: Usage | None) -> bytes | None:
    """A whole ``chat.completion`` from the SSE bytes relayed to the client (None if it
    cannot be rebuilt faithfully); the usage is added when the client did not ask for it."""
    chunks = []
    for blob in events:
        for line in blob.split(b"\n"):
            if line.startswith(b"data: {"):
                chunks.append(orjson.loads(line[6:]))
    whole = from_stream(chunks)
    if whole is None:
        return None
    if usage is not None and "usage" not in whole:
        whole["usage"] = {
            "prompt_tokens": usage.input, "completion_tokens": usage.output,
            "total_tokens": usage.input + usage.output,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
        }  # fmt: skip
    return orjson.dumps(whole)
