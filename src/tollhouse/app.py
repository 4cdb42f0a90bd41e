"""Assembling the ASGI app: routes plus a lifespan that owns every resource.

The app is plain ASGI (no framework) because the proxy's hot path is a
handful of dict lookups; anything heavier is measurable at 0.5 ms budgets.
Resources are opened in ``lifespan`` and closed in reverse order by one
``AsyncExitStack``; nothing lives in process globals.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from tollhouse.accesslog import AccessLog
from tollhouse.accounting.event import Sink
from tollhouse.accounting.ledger import LedgerWriter
from tollhouse.accounting.pricing import PriceBook
from tollhouse.admin.mount import AdminSettings, client_address, guarded_authenticator, open_admin
from tollhouse.cache import MemoryCache, RedisCache, ResponseCache
from tollhouse.config.schema import Config
from tollhouse.errors import GatewayError, RouteNotFound
from tollhouse.identity.directory import StoreDirectory, budget_rules_of, rate_rules_of
from tollhouse.identity.end_users import EndUserDirectory
from tollhouse.identity.principal import BudgetRule
from tollhouse.limits.admission import Admission
from tollhouse.limits.base import LimitsBackend
from tollhouse.limits.memory import MemoryLimits
from tollhouse.limits.recovery import end_user_rules, recover_spend
from tollhouse.limits.redis import RedisLimits
from tollhouse.metrics.recorder import MetricsRecorder
from tollhouse.metrics.registry import Metrics
from tollhouse.metrics.routing_state import RoutingCollector
from tollhouse.metrics.snapshot import LimitsSnapshot
from tollhouse.proxy import routes
from tollhouse.proxy.asgi import request_id
from tollhouse.proxy.gateway import Gateway
from tollhouse.proxy.responses import send_error
from tollhouse.routing.probes import Prober
from tollhouse.routing.router import Router
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate, require_current
from tollhouse.store.repos import EndUsers, Keys, Teams, Users

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
        admin: AdminSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        self._clock = clock  # wall clock: limits' windows, key expiry, budget report
        self.snapshot = LimitsSnapshot(None, clock)
        self.metrics.registry.register(self.snapshot)
        self._router: Router | None = None
        self.prober: Prober | None = None
        self.metrics.registry.register(RoutingCollector(lambda: self._router, lambda: self.prober))
        self.prices = PriceBook()
        self._environ = environ
        self._extra_sinks = list(extra_sinks or [])
        self._admin_settings = admin or AdminSettings()
        self.admin_app: Any = None  # the /admin/ ASGI app, built in the lifespan
        self.gateway: Gateway | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[Gateway]:
        """Open every resource in order; close them in reverse (the ledger flushes last)."""
        config = self.config
        async with AsyncExitStack() as stack:
            access_log = AccessLog() if config.server.access_log else None
            if access_log is not None:  # closed last, once no request can log a line
                stack.callback(access_log.flush)
            router = Router(config, self.prices, self._environ)  # pools need the loop
            stack.push_async_callback(router.aclose)
            self._router = router
            self.prober = Prober(router, config)
            await self.prober.start()
            stack.push_async_callback(self.prober.stop)
            store = Store(config.store.url, config.store.timeout)
            stack.push_async_callback(store.aclose)
            if config.store.migrate_on_start:
                await migrate(config.store.url)
            else:
                await require_current(config.store.url)
            ledger = LedgerWriter(store.ledger, config.ledger)
            await ledger.start()
            stack.push_async_callback(ledger.stop)
            backend = self._limits_backend()
            stack.push_async_callback(backend.aclose)
            await backend.start()
            admission = Admission(backend, config, self._clock)
            await recover_spend(backend, store.ledger,
                                await self._budget_rules(store, admission), self._clock())  # fmt: skip
            await admission.start()
            stack.push_async_callback(admission.stop)  # settles drain before the store closes
            self.snapshot.attach(backend, ledger, store, config.limits.backend)
            admin_key = self._env().get(config.auth.admin_key_env or "") or None
            directory = StoreDirectory(
                Keys(store.engine), Teams(store.engine), Users(store.engine), admin_key
            )
            auth = guarded_authenticator(
                directory, config, self.metrics, self._admin_settings, self._clock
            )
            gw = Gateway.build(config, router, self.prices, self.metrics,
                               self._sinks(ledger, access_log), auth, admission, self.snapshot)  # fmt: skip
            gw.end_users = EndUserDirectory(
                EndUsers(store.engine), config.auth.cache_ttl, config.auth.stale_if_error
            )
            gw.cache = self._response_cache()
            stack.push_async_callback(gw.cache.aclose)
            if config.limits.init_gauges:
                rules = await self._budget_rules(store, admission)
                self.snapshot.track(rules, await rate_rules_of(store))
            self.admin_app = await open_admin(
                stack, config=config, store=store, metrics=self.metrics, auth=auth,
                admin_key=admin_key, settings=self._admin_settings, limits=backend,
                ledger=ledger, admission=admission, router=router, wall=self._clock,
                forget=gw.end_users.forget,
            )  # fmt: skip
            self.gateway = gw
            # Everything built so far lives as long as the process: move it out of the
            # collector's reach so full collections only walk request garbage (they
            # otherwise stall the loop for tens of milliseconds on this heap).
            gc.collect()
            gc.freeze()
            gw.ready = True
            try:
                yield gw
            finally:
                gw.ready = False
                self.gateway = None
                await gw.drained(timeout=5.0)  # before the sinks close (the stack unwinds)

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _response_cache(self) -> ResponseCache:
        """Built even when disabled in config: a key can turn caching on for itself."""
        cfg = self.config.cache
        if cfg.backend == "redis":
            return RedisCache(cfg.redis_url, cfg.redis_prefix)
        return MemoryCache(cfg.max_entries)

    def _limits_backend(self) -> LimitsBackend:
        limits = self.config.limits
        if limits.backend == "redis":
            return RedisLimits(limits.redis_url, limits.redis_prefix,
                               pool_timeout=limits.redis_timeout,
                               socket_timeout=limits.redis_timeout)  # fmt: skip
        return MemoryLimits()

    def _sinks(self, ledger: LedgerWriter, access_log: AccessLog | None) -> list[Sink]:
        sinks: list[Sink] = [MetricsRecorder(self.metrics), ledger]
        if access_log is not None:
            sinks.append(access_log)
        return sinks + self._extra_sinks

    async def _budget_rules(self, store: Store, admission: Admission) -> list[BudgetRule]:
        stored = await budget_rules_of(store)
        own = {rule.entity for rule in stored if rule.scope == "end_user"}
        end_users = await end_user_rules(
            store.ledger, admission.end_user_default, self._clock(), own
        )
        return [*admission.config_budgets, *stored, *end_users]

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
            _note_client(scope)
            await routes.proxied(gw, proxied[0], proxied[1], scope, receive, send)
        elif path.startswith("/admin/") and self.admin_app is not None:
            await self.admin_app(scope, receive, send)
        elif method not in ("GET", "HEAD"):
            await self._reject(scope, send, RouteNotFound(f"no route {method} {path}"))
        elif path in ("/v1/models", "/models"):
            _note_client(scope)
            await routes.models(gw, scope, send, request_id(scope))
        elif path == self.config.server.metrics_path:
            await routes.metrics(gw, scope, send)
        elif path == "/health":
            await routes.health(gw, send, ready_check=False)
        elif path == "/health/ready":
            await routes.health(gw, send, ready_check=True)
        else:
            await self._reject(scope, send, RouteNotFound(f"no route GET {path}"))

    async def _reject(self, scope: dict[str, Any], send: Any, err: GatewayError) -> None:
        """A path the gateway does not serve: no model, no usage, so no UsageEvent (a
        scanner would fill the ledger), but counted and logged with its path, so an
        operator sees clients calling an endpoint the gateway lacks."""
        rid = request_id(scope)
        method = scope["method"]
        self.metrics.unrouted.labels(method if method in _METHODS else "other").inc()
        log.info("route_not_found request_id=%s method=%s path=%s",
                 rid, method, scope["path"][:200])  # fmt: skip
        await send_error(send, err, [(b"x-request-id", rid.encode())])

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


def _note_client(scope: dict[str, Any]) -> None:
    """The client's address, for throttling repeated failed authentications."""
    client = scope.get("client")
    client_address.set(client[0] if client else None)


# Methods counted by name in tollhouse_unrouted_requests_total; others count as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _NotReady:
    ready = False


_NOT_READY: Any = _NotReady()


def create_app(config: Config, **kwargs: Any) -> App:
    return App(config, **kwargs)
