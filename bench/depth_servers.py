"""The servers ``bench/depths.py`` measures: the gateway's pieces at each depth.

Measuring prototypes, not servers: they answer only the benchmark's chat request
(anything else gets a 200 ``ok``, which readiness checks take) and turn a failure into
an empty 500. Each records, per request, the time from the client's bytes arriving to
the upstream request written and from the upstream's answer arriving to the client's
answer written, and writes the medians to a file on SIGTERM. ``bench/depths.py`` says
what each depth adds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import httptools
import orjson

from bench import floor_proxy

CHAT = b"/v1/chat/completions"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
FAILED = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"

ns = time.perf_counter_ns
_marks: dict[str, int] = {}
_rows: list[tuple[int, int]] = []  # (bytes in → upstream out, upstream in → bytes out) ns


def _answered() -> None:
    """The client's answer was just written: close this request's row."""
    now = ns()
    m = _marks
    if "in" in m and "up_out" in m and "up_in" in m:
        _rows.append((m["up_out"] - m["in"], now - m["up_in"]))
    m.clear()


def _stamp_gateway_client() -> None:
    """Timestamp the gateway's upstream HTTP client (depths from ``task`` on)."""
    from tollhouse.providers import h1_conn

    start, received = h1_conn.Conn.start, h1_conn.Conn.data_received

    def stamped_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        _marks["up_out"] = ns()
        return start(self, *args, **kwargs)

    def stamped_received(self: Any, data: bytes) -> None:
        _marks["up_in"] = ns()
        received(self, data)

    h1_conn.Conn.start = stamped_start  # type: ignore[method-assign]
    h1_conn.Conn.data_received = stamped_received  # type: ignore[method-assign]


def _head(status: int, headers: list[tuple[bytes, bytes]], length: int) -> bytes:
    lines = [b"HTTP/1.1 %d OK\r\n" % status]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    lines.append(b"content-length: %d\r\n\r\n" % length)
    return b"".join(lines)


class _Upstream(floor_proxy._Upstream):
    """The floor proxy's raw keep-alive upstream connection, timestamped."""

    def data_received(self, data: bytes) -> None:
        _marks["up_in"] = ns()
        super().data_received(data)

    def send(self, request_id: bytes, data: bytes) -> None:
        assert self.transport is not None
        _marks["up_out"] = ns()
        self.transport.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream\r\n"
            b"content-type: application/json\r\nx-request-id: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (request_id, len(data), data)
        )


class _Server(asyncio.Protocol):
    """One client connection, served at ``depth`` by ``gw`` (a ``Gateway``)."""

    def __init__(self, depth: str, gw: Any, upstream_port: int) -> None:
        self.depth, self.gw, self.upstream_port = depth, gw, upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.connecting: asyncio.Future[None] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        _marks["in"] = ns()
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw, headers = b"".join(self.body), self.headers
        self.body, self.headers = [], []
        if self.url != CHAT:
            self.write(OK)
        elif self.depth in ("floor", "callbacks"):
            self.in_callbacks(raw)
        else:
            asyncio.get_running_loop().create_task(self.in_task(headers, raw))

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        _answered()

    def in_callbacks(self, raw: bytes) -> None:
        if self.upstream is None:  # the first request on this connection: connect first
            if self.connecting is not None and self.connecting.done():
                self.write(FAILED)  # the upstream refused the connection
                return
            if self.connecting is None:
                self.connecting = asyncio.ensure_future(self._connect())
            self.connecting.add_done_callback(lambda _: self.in_callbacks(raw))
            return
        from tollhouse.proxy import validate
        from tollhouse.proxy.asgi import _ID_PREFIX, _ids
        from tollhouse.proxy.context import RequestContext
        from tollhouse.proxy.exchange import response_headers

        gw, upstream, floor = self.gw, self.upstream, self.depth == "floor"
        request: dict[str, Any] = orjson.loads(raw)
        request_id = f"{_ID_PREFIX}{next(_ids):010x}"
        ctx: Any = None
        if not floor:
            ctx = RequestContext.begin(request_id, "chat")
            params = validate.chat(request)
            ctx.stream = False
            gw.route(ctx, params.model)
            dep = ctx.deployment = ctx.group.deployments[0]

        def answer(status: int, body: bytes) -> None:
            if floor:
                out = orjson.dumps(orjson.loads(body))
                headers = [(b"content-type", b"application/json"),
                           (b"x-request-id", request_id.encode())]  # fmt: skip
            else:
                parsed = dep.adapter.parse_chat(body, dep.target)
                ctx.charge(parsed.usage)
                ctx.status, out = 200, parsed.body
                headers = [(b"content-type", b"application/json"), *response_headers(ctx)]
            self.write(_head(200, headers, len(out)) + out)
            if ctx is not None:
                asyncio.get_running_loop().call_soon(gw.done, ctx)

        upstream.answer = answer
        upstream.send(request_id.encode(), orjson.dumps(request))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(_Upstream, "127.0.0.1", self.upstream_port)

    async def in_task(self, headers: list[tuple[bytes, bytes]], raw: bytes) -> None:
        from tollhouse.accounting.tokens import estimate_prompt_tokens
        from tollhouse.proxy import chat, routes, validate
        from tollhouse.proxy.asgi import _ID_PREFIX, _ids, parse_json
        from tollhouse.proxy.context import RequestContext
        from tollhouse.proxy.exchange import call_upstream, response_headers

        gw, depth = self.gw, self.depth
        if depth == "asgi":
            await routes.proxied(gw, "chat", chat.handle, *self._asgi(headers, raw))
            return
        ctx = RequestContext.begin(f"{_ID_PREFIX}{next(_ids):010x}", "chat")
        try:
            if depth == "gate":
                ctx.principal = await gw.auth.authenticate(headers)
            body = parse_json(raw)
            params = validate.chat(body)
            ctx.stream = False
            gw.route(ctx, params.model)
            if depth == "gate":
                prompt = estimate_prompt_tokens(params.messages)
                reserve = params.max_tokens or gw.config.limits.reserve_output_tokens
                await gw.admit(ctx, prompt, reserve)

            async def attempt(dep: Any) -> None:
                request = dep.adapter.chat_request(body, dep.target, stream=False)
                request.headers["x-request-id"] = ctx.request_id
                payload = await call_upstream(ctx, dep, request, 0)
                parsed = dep.adapter.parse_chat(payload, dep.target)
                ctx.charge(parsed.usage)
                ctx.status = 200
                headers = [(b"content-type", b"application/json"), *response_headers(ctx)]
                self.write(_head(200, headers, len(parsed.body)) + parsed.body)

            if depth == "task":
                ctx.deployment = ctx.group.deployments[0]
                await attempt(ctx.deployment)
            else:
                await gw.execute(ctx, attempt)
        except Exception:
            self.write(FAILED)
            raise
        finally:
            asyncio.get_running_loop().call_soon(gw.done, ctx)

    def _asgi(self, headers: list[tuple[bytes, bytes]], raw: bytes) -> tuple[Any, Any, Any]:
        scope = {"type": "http", "method": "POST", "path": CHAT.decode(), "headers": headers}
        started: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.append(message)
                return
            start, body = started.pop(), message.get("body", b"")
            headers = [h for h in start["headers"] if h[0] != b"content-length"]
            self.write(_head(start["status"], headers, len(body)) + body)

        return scope, receive, send


def _reporter(out: Path) -> Any:
    """What to do on SIGTERM: write the medians of this server's rows to ``out``, exit."""

    def report() -> None:
        rows = _rows[len(_rows) // 10 :]  # the warm-up's first requests carry start-up costs
        firsts, seconds = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
        n = len(rows)
        result = {"n": n, "in": firsts[n // 2] / 1000, "out": seconds[n // 2] / 1000} if n else {}
        out.write_text(json.dumps(result))
        os._exit(0)  # a measuring prototype: nothing to flush that the numbers need

    return report


def serve(depth: str, config_path: str, port: int, upstream_port: int, out: Path) -> None:
    """The server child: one depth on ``port``."""
    report = _reporter(out)
    if depth == "uvicorn":
        # uvicorn re-raises the SIGTERM it handled once it has shut down: this runs then
        signal.signal(signal.SIGTERM, lambda signum, frame: report())
        _serve_uvicorn(config_path, port)
        return
    import uvloop

    uvloop.run(_serve_depth(depth, config_path, port, upstream_port, report))


async def _serve_depth(
    depth: str, config_path: str, port: int, upstream_port: int, report: Any
) -> None:
    from tollhouse.app import App
    from tollhouse.cli import _configure_logging
    from tollhouse.config import load_config

    config = load_config(config_path)
    _configure_logging(config.server.log_level, config.server.access_log)
    _stamp_gateway_client()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, report)
    async with App(config).lifespan() as gw:
        server = await loop.create_server(
            lambda: _Server(depth, gw, upstream_port), "127.0.0.1", port
        )
        async with server:
            await asyncio.Event().wait()


def _serve_uvicorn(config_path: str, port: int) -> None:
    from tollhouse import server
    from tollhouse.cli import main

    _stamp_gateway_client()
    received, flush = server.GatewayHttpProtocol.data_received, server._CoalescingTransport.flush

    def stamped_received(self: Any, data: bytes) -> None:
        _marks["in"] = ns()
        received(self, data)

    def stamped_flush(self: Any) -> None:
        carries_answer = bool(self._buf) and "up_in" in _marks
        flush(self)
        if carries_answer:
            _answered()

    server.GatewayHttpProtocol.data_received = stamped_received  # type: ignore[method-assign]
    server._CoalescingTransport.flush = stamped_flush  # type: ignore[method-assign]
    main(["serve", "--config", config_path, "--port", str(port)])
