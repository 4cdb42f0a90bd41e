"""``POST /v1/embeddings``."""

from __future__ import annotations

from typing import Any

from tollhouse.accounting.tokens import estimate_input_tokens
from tollhouse.accounting.usage import Usage
from tollhouse.errors import UpstreamError
from tollhouse.proxy import validate
from tollhouse.proxy.abandon import Abandonment
from tollhouse.proxy.asgi import Scope, parse_json, read_body
from tollhouse.proxy.context import RequestContext
from tollhouse.proxy.exchange import call_upstream, reply_json
from tollhouse.proxy.gateway import Gateway
from tollhouse.routing.router import Deployment


async def handle(gw: Gateway, ctx: RequestContext, scope: Scope, receive: Any, send: Any) -> None:
    body = parse_json(await read_body(scope, receive, gw.config.server.max_body_bytes))
    params = validate.embeddings(body)
    gw.route(ctx, params.model)
    ctx.end_user = params.end_user
    tokens = estimate_input_tokens(params.input)
    await gw.admit(ctx, tokens, 0)
    watch = Abandonment(scope) if gw.cancel_abandoned else None

    async def attempt(dep: Deployment) -> None:
        request = dep.adapter.embeddings_request(body, dep.target)
        request.headers["x-request-id"] = ctx.request_id
        payload = (
            await call_upstream(ctx, dep, request, tokens)
            if watch is None
            else await watch.call_upstream(ctx, dep, request, tokens)
        )
        if payload is None:
            return  # the client left and the call was cancelled (on_disconnect: cancel)
        try:
            parsed = dep.adapter.parse_embeddings(payload, dep.target)
        except UpstreamError:
            ctx.estimated(Usage(input=tokens))  # the upstream took the input
            raise
        if parsed.usage is None:
            ctx.estimated(Usage(input=tokens))
        else:
            ctx.charge(parsed.usage)
        await reply_json(ctx, send, 200, parsed.body)

    if watch is None:
        await gw.execute(ctx, attempt)
    else:
        await watch.execute(ctx, lambda: gw.execute(ctx, attempt))
