"""The request entry point: dispatch, and the single error boundary.

Every request to a proxied route ends in exactly one UsageEvent, whatever
happens: success, a bad body, an unknown model, an upstream failure, a store that
cannot be read, or a bug in the gateway itself (an OpenAI-style 500, recorded as an
error: a request that failed is never counted as served).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tollhouse.accounting.event import Outcome
from tollhouse.errors import (
    ClientDisconnected,
    GatewayError,
    MethodNotAllowed,
    Rejected,
    ShuttingDown,
    UpstreamError,
    UpstreamFailed,
)
from tollhouse.metrics.exposition import render
from tollhouse.proxy import chat, embeddings
from tollhouse.proxy.asgi import CLIENT_GONE, Scope, header, request_id, send_bytes
from tollhouse.proxy.context import RequestContext
from tollhouse.proxy.exchange import response_headers
from tollhouse.proxy.gateway import Gateway
from tollhouse.proxy.responses import send_error

log = logging.getLogger("tollhouse")

Handler = Callable[[Gateway, RequestContext, Scope, Any, Any], Awaitable[None]]

PROXIED: dict[str, tuple[str, Handler]] = {
    "/v1/chat/completions": ("chat", chat.handle),
    "/chat/completions": ("chat", chat.handle),
    "/v1/embeddings": ("embeddings", embeddings.handle),
    "/embeddings": ("embeddings", embeddings.handle),
}


async def proxied(
    gw: Gateway, operation: str, handler: Handler, scope: Scope, receive: Any, send: Any
) -> None:
    ctx = RequestContext.begin(request_id(scope), operation)
    gw.open_requests += 1  # until gw.done emits its event
    try:
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
            ctx.principal = await gw.auth.authenticate(scope["headers"])
            await handler(gw, ctx, scope, receive, send)
        except UpstreamError as err:
            raise UpstreamFailed.from_upstream(err) from err
    except GatewayError as err:
        ctx.fail(err)
        gw.rejected(err)
        gw.unwind(ctx)
        # A 429 from the gateway's own limits says when to retry (Retry-After); other
        # limits' x-ratelimit-* headers there would name a limit that did not refuse.
        await send_error(send, err, response_headers(ctx, limits=not isinstance(err, Rejected)))
    except ClientDisconnected:  # before its body was complete: nothing went upstream
        ctx.cancel(499)
    except Exception:  # a bug or an unforeseen failure: still an OpenAI-style 500, counted
        log.exception("request_crashed request_id=%s", ctx.request_id)
        crash = GatewayError(
            f"The gateway failed to serve this request (request id {ctx.request_id}); "
            "the failure is logged under that id."
        )
        ctx.fail(crash)
        with contextlib.suppress(Exception):  # unless the response had already begun
            await send_error(send, crash, response_headers(ctx))
    except asyncio.CancelledError:
        # The server's shutdown stopped waiting for this request (server.shutdown_timeout).
        # A stream that had begun was marked by its relay; anything else gets a 503 that
        # says so (the client can retry elsewhere), and its event says error, not success.
        if ctx.outcome is Outcome.SUCCESS:
            cut = ShuttingDown("The gateway shut down before this request was complete; "
                               "retry it.")  # fmt: skip
            ctx.fail(cut)
            with contextlib.suppress(Exception):  # unless the response had already begun
                await send_error(send, cut, response_headers(ctx))
        raise
    finally:
        if ctx.outcome is Outcome.SUCCESS and scope.get(CLIENT_GONE):
            # The client left before the answer (its SDK timed out, say): the upstream
            # call still completed, so its usage is exact, but nobody received it.
            ctx.cancel(499)
        # After the response bytes are flushed (the server writes on the next loop turn):
        # the sinks' work then never delays the answer the client is waiting for.
        asyncio.get_running_loop().call_soon(gw.done, ctx)
        if ctx.outcome is Outcome.ERROR and ctx.status >= 500:
            log.warning("request_failed request_id=%s status=%s error_type=%s",
                        ctx.request_id, ctx.status, ctx.error_type)  # fmt: skip


async def models(gw: Gateway, scope: Scope, send: Any, rid: str) -> None:
    """The public models this caller may use: authenticated like the proxied routes
    (``auth.required`` refuses a missing or bad key here too), and a key restricted to
    some models sees only those."""
    try:
        principal = await gw.auth.authenticate(scope["headers"])
    except GatewayError as err:
        await send_error(send, err, [(b"x-request-id", rid.encode())])
        return
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "tollhouse"}
        for name in gw.router.model_names
        if principal.allows(name)
    ]
    body = orjson.dumps({"object": "list", "data": data})
    await send_bytes(send, 200, body, [(b"x-request-id", rid.encode())])


async def health(gw: Gateway, send: Any, ready_check: bool) -> None:
    if ready_check and not gw.ready:
        await send_bytes(send, 503, b'{"status":"starting"}', [])
        return
    await send_bytes(send, 200, b'{"status":"ok"}', [])


async def metrics(gw: Gateway, scope: Scope, send: Any) -> None:
    accept = (header(scope, b"accept") or b"").decode("latin-1")
    try:
        await gw.snapshot.refresh()
    except Exception as err:  # serve the last snapshot rather than fail the whole scrape
        log.warning("snapshot_refresh_failed error=%s", type(err).__name__)
    body, content_type = await render(gw.metrics.registry, accept)
    await send_bytes(send, 200, body, [], content_type.encode())
