"""``POST /v1/chat/completions``: whole answers and SSE streams.

Streams are relayed chunk by chunk as they arrive. Response headers wait for
the first relayable chunk, so an upstream that fails before producing anything
still gets a proper HTTP error status. A client that goes away cancels the
upstream call; the request is then recorded as ``cancelled`` with the tokens
known so far.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from tollhouse.accounting.event import Outcome
from tollhouse.accounting.tokens import estimate_answer_tokens, estimate_prompt_tokens
from tollhouse.accounting.usage import Usage
from tollhouse.cache import strip_flag
from tollhouse.errors import ErrorType, ShuttingDown, UpstreamError, UpstreamFailed
from tollhouse.providers.base import StreamTranslator, UpstreamResponse
from tollhouse.proxy import validate
from tollhouse.proxy.abandon import Abandonment
from tollhouse.proxy.asgi import Scope, parse_json, read_body
from tollhouse.proxy.caching import Lookup, rebuild_stream
from tollhouse.proxy.context import RequestContext, perf
from tollhouse.proxy.exchange import call_upstream, reply_json, response_headers
from tollhouse.proxy.gateway import Gateway
from tollhouse.proxy.responses import stream_error_event
from tollhouse.routing.router import Deployment

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def handle(gw: Gateway, ctx: RequestContext, scope: Scope, receive: Any, send: Any) -> None:
    body = parse_json(await read_body(scope, receive, gw.config.server.max_body_bytes))
    params = validate.chat(body)
    ctx.stream = params.stream
    gw.route(ctx, params.model)
    ctx.end_user = params.end_user
    lookup = Lookup(gw.cache, gw.config.cache, ctx, scope, body)
    if await lookup.replay(ctx, send, params.stream, params.wants_usage):
        return  # a hit: nothing upstream, nothing reserved
    upstream_body = strip_flag(body)
    prompt = estimate_prompt_tokens(params.messages)
    await gw.admit(ctx, prompt, params.max_tokens or gw.config.limits.reserve_output_tokens)
    watch = Abandonment(scope) if gw.cancel_abandoned and not params.stream else None

    async def attempt(dep: Deployment) -> None:
        request = dep.adapter.chat_request(upstream_body, dep.target, stream=params.stream)
        request.headers["x-request-id"] = ctx.request_id
        if params.stream:
            tap: list[bytes] | None = [] if lookup.key is not None else None
            usage = await _stream(ctx, dep, request, params, receive, send, tap)
            if tap is not None and usage is not None:
                await lookup.store(ctx, rebuild_stream(tap, usage), usage)
            return
        payload = (
            await call_upstream(ctx, dep, request, prompt)
            if watch is None
            else await watch.call_upstream(ctx, dep, request, prompt)
        )
        if payload is None:
            return  # the client left and the call was cancelled (on_disconnect: cancel)
        try:
            parsed = dep.adapter.parse_chat(payload, dep.target)
        except UpstreamError:
            # A 2xx means the upstream took the prompt; an unreadable answer still costs it.
            ctx.estimated(Usage(input=prompt))
            raise
        if parsed.usage is None:  # rare: estimate the answer too, as a stream's chunks are
            output = estimate_answer_tokens(orjson.loads(parsed.body))
            ctx.estimated(Usage(input=prompt, output=output))
        else:
            ctx.charge(parsed.usage)
        await reply_json(ctx, send, 200, parsed.body)
        await lookup.store(ctx, parsed.body, parsed.usage)

    if watch is None:
        await gw.execute(ctx, attempt)
    else:
        await watch.execute(ctx, lambda: gw.execute(ctx, attempt))


async def _stream(
    ctx: RequestContext,
    dep: Deployment,
    request: Any,
    params: validate.ChatParams,
    receive: Any,
    send: Any,
    tap: list[bytes] | None = None,
) -> Usage | None:
    """Relay one upstream stream; return its reported usage when it completed (for the cache).

    The client is watched from the moment the upstream call starts, not from its first
    byte: a client that leaves while the upstream is still working towards its first
    chunk (a reasoning model can take minutes) cancels the call then. Starting the watch
    before the call also keeps its first step off the path of the first chunk.
    """
    task = asyncio.current_task()
    assert task is not None

    def on_client_gone(_: object) -> None:
        task.cancel()

    watcher = asyncio.create_task(_client_gone(receive))
    watcher.add_done_callback(on_client_gone)
    started = perf()
    resp: UpstreamResponse | None = None
    translator: StreamTranslator | None = None
    relay: _Relay | None = None
    complete = False
    try:
        resp = await dep.transport.send(request)
        ctx.waited += perf() - started
        ctx.ratelimit = dep.adapter.rate_limits(resp.headers)
        if not 200 <= resp.status < 300:  # a redirect too: it is not followed
            payload = await resp.read()
            raise dep.adapter.classify(resp.status, payload, resp.headers)
        translator = dep.adapter.chat_stream(dep.target, client_wants_usage=params.wants_usage)
        relay = _Relay(ctx, translator, send, tap)
        await relay.run(resp)
        complete = True
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            # The server's shutdown gave up on this stream, not the client leaving.
            cut = ShuttingDown("The gateway shut down before this answer was complete.")
            ctx.fail(cut)
            if relay is not None and relay.started:
                ctx.status = 200  # the headers already said 200; the error goes in-stream
                await relay.send_quietly(stream_error_event(cut))
            raise
        task.uncancel()
        ctx.cancel(200 if relay is not None and relay.started else 499)
    except UpstreamError as err:
        if relay is None or not relay.started:
            raise  # nothing reached the client: routing may retry or fall back
        ctx.fail(UpstreamFailed.from_upstream(err))
        ctx.status = 200  # the headers already said 200; the error went in-stream
        await relay.send_quietly(stream_error_event(UpstreamFailed.from_upstream(err)))
    finally:
        watcher.remove_done_callback(on_client_gone)
        watcher.cancel()
        ctx.upstream_duration = perf() - started
        if resp is not None:
            await resp.aclose()
        if translator is not None or ctx.outcome is not Outcome.SUCCESS:
            _settle_usage(ctx, translator, params, complete)  # cancelled, or cut by shutdown
    if relay is not None:
        await relay.end()
    return translator.usage if complete and translator is not None else None


async def _client_gone(receive: Any) -> None:
    """Return when the client disconnects (the body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _settle_usage(
    ctx: RequestContext, t: StreamTranslator | None, params: validate.ChatParams, complete: bool
) -> None:
    """Reported usage for complete streams; otherwise the best estimate, labelled as such.

    Once the upstream accepted the stream it has processed the prompt, so a
    stream that breaks or is cancelled is charged its prompt and the chunks seen.
    A client that left before the upstream answered at all (``t`` is None) is
    charged the prompt too: it was sent, and an upstream bills the work it started,
    so budgets count it rather than risk letting spend through uncounted.
    """
    if t is None:
        ctx.estimated(Usage(input=estimate_prompt_tokens(params.messages)))
        return
    if complete and t.usage is not None:
        ctx.charge(t.usage)
        return
    known = t.usage
    ctx.estimated(
        Usage(
            input=known.input if known else estimate_prompt_tokens(params.messages),
            output=max(t.content_chunks, known.output if known else 0),
            cached_input=known.cached_input if known else 0,
            cache_write_input=known.cache_write_input if known else 0,
        )
    )


class _Relay:
    """Moves translated chunks to the client, noting the first token and time spent waiting."""

    def __init__(
        self, ctx: RequestContext, translator: StreamTranslator, send: Any, tap: list[bytes] | None
    ) -> None:
        self.ctx = ctx
        self.t = translator
        self.send = send
        self.tap = tap  # a copy of what the client got, when the answer will be cached
        self.started = False
        self.closed = False

    async def run(self, resp: UpstreamResponse) -> None:
        ctx, t = self.ctx, self.t
        lines = resp.iter_lines()
        while True:
            before = perf()
            try:
                line = await anext(lines)
            except StopAsyncIteration:
                break
            finally:
                ctx.waited += perf() - before
            out = t.feed(line)
            if t.error is not None:
                raise t.error
            if out:
                if ctx.ttft is None and t.content_chunks:
                    ctx.ttft = perf() - ctx.t0
                await self._write(b"".join(out))
            if t.done:
                break
        if not t.complete:
            raise UpstreamError(ErrorType.NETWORK, "upstream stream ended before it was complete")
        await self._write(b"".join(t.finish()))

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        if not self.started:
            self.started = True
            headers = [*SSE_HEADERS, *response_headers(self.ctx)]
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.tap is not None:
            self.tap.append(data)
        before = perf()
        await self.send({"type": "http.response.body", "body": data, "more_body": True})
        self.ctx.waited += perf() - before

    async def send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the client may be gone too; the event still counts
            await self._write(data)

    async def end(self) -> None:
        if self.started and not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):  # the client may already be gone
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
