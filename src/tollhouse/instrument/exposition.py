"""Serving the metrics from an application: an ASGI app, or a thread of its own.

``metrics_app()`` is a pure ASGI app (mount it at ``/metrics`` in Starlette,
FastAPI or any ASGI server); it renders in a worker thread, as the gateway
does, so a scrape of a large registry never stalls the event loop. It answers
every path it is mounted on, ``GET``/``HEAD`` only, and speaks the lifespan
protocol so it also runs on its own under uvicorn.

``start_http_server()`` is for applications without an ASGI server: it serves
prometheus_client's WSGI exposition from a daemon thread and returns a handle
whose ``close()`` stops it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Self

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import start_http_server as _prometheus_server

from tollhouse.metrics.exposition import render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """An ASGI app serving ``registry`` (default: the global ``REGISTRY``) in the
    text format the scraper asks for (Prometheus text or OpenMetrics)."""
    target = REGISTRY if registry is None else registry

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"metrics_app serves HTTP only, not {scope['type']!r}")
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"text/plain; charset=utf-8", b"method not allowed\n")
            return
        accept = ""
        for name, value in scope.get("headers", ()):
            if name == b"accept":
                accept = value.decode("latin-1")
        body, content_type = await render(target, accept)
        await _respond(
            send, 200, content_type.encode("latin-1"), b"" if scope["method"] == "HEAD" else body
        )

    return app


async def _respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to open or close; acknowledge so uvicorn's ``lifespan="on"`` is happy."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class MetricsServer:
    """A running ``start_http_server``: ``url``, ``port``, and ``close()`` to stop it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = server.server_address[0]
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, release the port and wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_http_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` (default: the global ``REGISTRY``) on ``addr:port`` from a
    daemon thread; ``port=0`` picks a free port (read it from ``.port``)."""
    server, thread = _prometheus_server(port, addr, REGISTRY if registry is None else registry)
    return MetricsServer(server, thread)
