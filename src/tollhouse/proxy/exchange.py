"""Pieces shared by the non-streaming routes: one upstream round trip, one JSON reply."""

from __future__ import annotations

import asyncio
from typing import Any

from tollhouse.accounting.usage import Usage
from tollhouse.limits.policy import tightest
from tollhouse.providers.base import UpstreamRequest
from tollhouse.proxy.asgi import Headers, send_bytes
from tollhouse.proxy.context import RequestContext, perf
from tollhouse.routing.router import Deployment

OVERHEAD_HEADER = b"x-tollhouse-overhead-ms"


def response_headers(ctx: RequestContext, *, limits: bool = True) -> Headers:
    """``x-request-id``, the gateway's own time so far, and (unless ``limits`` is false:
    a refusal by the gateway's own limits) the caller's rate limits."""
    headers = [
        (b"x-request-id", ctx.request_id.encode()),
        (OVERHEAD_HEADER, f"{ctx.overhead_so_far() * 1000:.3f}".encode()),
    ]
    dep = ctx.deployment
    if dep is not None:  # which deployment served, after how many upstream calls
        calls = len(ctx.attempts) + (1 if ctx.attempting else 0)
        headers += [
            (b"x-tollhouse-backend", dep.target.backend.encode()),
            (b"x-tollhouse-model", dep.model.encode()),
            (b"x-tollhouse-attempts", str(calls).encode()),
        ]
    if ctx.cache != "off":
        headers.append((b"x-tollhouse-cache", ctx.cache.encode()))
    if not limits:
        return headers
    caller, backend = ctx.ticket, ctx.attempt_ticket
    if backend is None:
        if caller is not None:
            headers += caller.headers
    elif caller is None:
        headers += backend.headers
    else:  # the caller's limits and the serving backend's: the tightest of each kind
        headers += tightest(caller.headers, backend.headers)
    return headers


async def call_upstream(
    ctx: RequestContext, dep: Deployment, request: UpstreamRequest, prompt_tokens: int
) -> bytes:
    """Send, read the whole body, classify failures; time spent counts as waiting.

    A call cut short by a cancellation (its client leaving, with ``on_disconnect:
    cancel``, or the server's shutdown giving up on it) is charged ``prompt_tokens`` as
    an estimate: the upstream had the prompt and reported no usage."""
    started = perf()
    try:
        resp = await dep.transport.send(request)
        try:
            payload = await resp.read()
        finally:
            await resp.aclose()
    except asyncio.CancelledError:
        ctx.estimated(Usage(input=prompt_tokens))
        raise
    finally:
        ctx.upstream_duration = perf() - started
        ctx.waited += ctx.upstream_duration
    ctx.ratelimit = dep.adapter.rate_limits(resp.headers)
    if not 200 <= resp.status < 300:  # a redirect too: it is not followed
        raise dep.adapter.classify(resp.status, payload, resp.headers)
    return payload


async def reply_json(ctx: RequestContext, send: Any, status: int, body: bytes) -> None:
    ctx.status = status
    await send_bytes(send, status, body, response_headers(ctx))
