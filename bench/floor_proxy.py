"""The least an HTTP-parsing JSON proxy in Python does: a floor for the gateway's latency.

``bench/relay.py`` forwards bytes and parses nothing; the gateway does a great deal
more. This sits between them: for each non-streamed chat request it parses the HTTP
request (httptools), decodes and re-encodes the JSON body (orjson), sends it to the
upstream on a keep-alive connection, parses the answer, reads its ``usage``, writes
the answer back with an ``x-request-id`` and an overhead header, and counts the
tokens after the reply (``call_soon``). No tasks, futures or ASGI: everything runs in
protocol callbacks. What it adds at concurrency 1 is what a lean request path in
Python could add on this machine; the difference to the gateway is the cost of the
gateway's own path, which ``bench/segments.py`` breaks down.

Every other path answers 404 (``bench.run`` accepts that as ready). Streaming is
not handled.

    taskset -c 0 .venv/bin/python -m bench.floor_proxy --port 9600 --upstream-port 9500 &
    .venv/bin/python -m bench.run --gateway-url http://127.0.0.1:9600 --mock-port 9500 \\
        --concurrency 1 --delay 50 --mode json --no-relay
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any, cast

import httptools
import orjson

from bench.relay import run_proxy

CHAT = b"/v1/chat/completions"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
tokens_seen = [0, 0]  # requests, tokens: the "accounting" done after each reply
_ids = itertools.count(1)

Answer = Callable[[int, bytes], None]


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.answer: Answer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        answer, self.answer = self.answer, None
        if answer is not None:
            answer(self.parser.get_status_code(), body)


class _Client(asyncio.Protocol):
    """One client connection: requests in, each sent upstream, answers back."""

    def __init__(self, upstream_port: int) -> None:
        self.port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, self.upstream = await loop.create_connection(_Upstream, "127.0.0.1", self.port)
        except OSError:
            self.upstream = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        client, upstream = self.transport, self.upstream
        raw, self.body = b"".join(self.body), []
        assert client is not None
        if self.url != CHAT or upstream is None or upstream.transport is None:
            client.write(NOT_FOUND)
            return
        started = time.perf_counter()
        request: dict[str, Any] = orjson.loads(raw)
        if not isinstance(request.get("model"), str):
            client.write(NOT_FOUND)
            return
        data = orjson.dumps(request)
        request_id = b"floor-%d" % next(_ids)

        def answer(status: int, body: bytes) -> None:
            if client.is_closing():  # the load generator stopped mid-request
                return
            reply: dict[str, Any] = orjson.loads(body)
            usage = reply.get("usage") or {}
            out = orjson.dumps(reply)
            overhead = (time.perf_counter() - started) * 1000
            client.write(
                b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\nx-request-id: %s\r\n"
                b"x-overhead-ms: %.3f\r\ncontent-length: %d\r\n\r\n%s"
                % (status, request_id, overhead, len(out), out)
            )
            asyncio.get_running_loop().call_soon(_count, usage)

        upstream.answer = answer
        upstream.transport.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream\r\n"
            b"content-type: application/json\r\nx-request-id: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (request_id, len(data), data)
        )


def _count(usage: dict[str, Any]) -> None:
    tokens_seen[0] += 1
    tokens_seen[1] += int(usage.get("total_tokens") or 0)


def main() -> None:
    run_proxy("python -m bench.floor_proxy", __doc__, _Client)


if __name__ == "__main__":
    main()
