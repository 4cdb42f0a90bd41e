"""Assembling the ASGI app: routes plus a lifespan that owns every resource.

The app is plain ASGI (no framework) because the proxy's hot path is a
handful of dict lookups; anything heavier is measurable at 0.5 ms budgets.
Resources are opened in ``lifespan`` and closed in reverse order by one
``AsyncExitStack``; nothing lives in process globals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from tollhouse.accesslog import AccessLog
from tollhouse.accounting.event import Sink
from tollhouse.accounting.pricing import PriceBook
from tollhouse.config.schema import Config
from tollhouse.errors import GatewayError, RouteNotFound
from tollhouse.metrics.recorder import MetricsRecorder
from tollhouse.metrics.registry import Metrics
from tollhouse.proxy import routes
from tollhouse.proxy.asgi import request_id
from tollhouse.proxy.gateway import Gateway
from tollhouse.proxy.responses import send_error
from tollhouse.routing.router import Router

log = logging.getLogger("tollhouse")


class App:
    """The gateway's ASGI application."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        extra_sinks: list[Sink] | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        self.prices = PriceBook()
        self._environ = environ
        self._extra_sinks = list(extra_sinks or [])
        self.gateway: Gateway | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[Gateway]:
        async with AsyncExitStack() as stack:
            router = Router(self.config, self.prices, self._environ)  # pools need the loop
            stack.push_async_callback(router.aclose)
            sinks: list[Sink] = [MetricsRecorder(self.metrics)]
            if self.config.server.access_log:
                sinks.append(AccessLog())
            sinks.extend(self._extra_sinks)
            gw = Gateway.build(self.config, router, self.prices, self.metrics, sinks)
            self.gateway = gw
            gw.ready = True
            try:
                yield gw
            finally:
                gw.ready = False
                self.gateway = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        gw = self.gateway
        path, method = scope["path"], scope["method"]
        if gw is None:  # no lifespan (or shutting down): refuse rather than crash
            await routes.health(_NOT_READY, send, ready_check=True)
            return
        proxied = routes.PROXIED.get(path)
        if proxied is not None:
            await routes.proxied(gw, proxied[0], proxied[1], scope, receive, send)
        elif method not in ("GET", "HEAD"):
            await self._reject(scope, send, RouteNotFound(f"no route {method} {path}"))
        elif path in ("/v1/models", "/models"):
            await routes.models(gw, send, request_id(scope))
        elif path == self.config.server.metrics_path:
            await routes.metrics(gw, scope, send)
        elif path == "/health":
            await routes.health(gw, send, ready_check=False)
        elif path == "/health/ready":
            await routes.health(gw, send, ready_check=True)
        else:
            await self._reject(scope, send, RouteNotFound(f"no route GET {path}"))

    async def _reject(self, scope: dict[str, Any], send: Any, err: GatewayError) -> None:
        await send_error(send, err, [(b"x-request-id", request_id(scope).encode())])

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
                assert message["type"] == "lifespan.shutdown"
        except Exception as err:
            log.exception("lifespan_failed")
            kind = "lifespan.startup.failed" if self.gateway is None else "lifespan.shutdown.failed"
            await send({"type": kind, "message": f"{type(err).__name__}: {err}"})
            return
        await send({"type": "lifespan.shutdown.complete"})


class _NotReady:
    ready = False


_NOT_READY: Any = _NotReady()


def create_app(config: Config, **kwargs: Any) -> App:
    return App(config, **kwargs)
