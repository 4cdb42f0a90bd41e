"""Wiring the admin side into the app's lifespan, in two calls.

``guarded_authenticator`` replaces the proxy's plain ``Authenticator`` (failed
attempts counted and throttled per address); ``open_admin`` builds the admin
runtime, starts its background tasks on the lifespan's exit stack and returns
the ASGI app the gateway mounts under ``/admin/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from tollhouse.admin.api import build_admin_app
from tollhouse.admin.guard import AuthGuard, GuardedAuthenticator, client_address
from tollhouse.admin.runtime import AdminRuntime
from tollhouse.admin.settings import AdminSettings
from tollhouse.config.schema import Config
from tollhouse.identity.auth import Directory
from tollhouse.metrics.registry import Metrics
from tollhouse.store.engine import Store

__all__ = ["AdminSettings", "client_address", "guarded_authenticator", "open_admin"]


def guarded_authenticator(
    directory: Directory,
    config: Config,
    metrics: Metrics,
    settings: AdminSettings,
    wall: Callable[[], float] = time.time,
) -> GuardedAuthenticator:
    guard = AuthGuard(settings, metrics.auth_failures, metrics.auth_throttled)
    auth = config.auth
    return GuardedAuthenticator(
        guard, directory, required=auth.required, cache_ttl=auth.cache_ttl,
        stale_if_error=auth.stale_if_error, wall=wall,
    )  # fmt: skip


async def open_admin(
    stack: AsyncExitStack,
    *,
    config: Config,
    store: Store,
    metrics: Metrics,
    auth: GuardedAuthenticator,
    admin_key: str | None,
    settings: AdminSettings,
    limits: Any,
    ledger: Any,
    admission: Any,
    router: Any,
    wall: Callable[[], float] = time.time,
    forget: Callable[[], None] | None = None,
) -> Any:
    """Start the admin runtime (stopped by ``stack``) and return the admin ASGI app.
    After every change the authenticator's cached key lookups are dropped, and
    ``forget`` is called too (the end users' cached overrides)."""

    def on_change() -> None:
        auth.forget()
        if forget is not None:
            forget()

    rt = AdminRuntime(
        config=config, store=store, metrics=metrics, guard=auth.guard, admin_key=admin_key,
        settings=settings, limits=limits, ledger=ledger,
        config_budgets=tuple(getattr(admission, "config_budgets", ())), router=router,
        on_change=on_change, wall=wall,
    )  # fmt: skip
    await rt.start()
    stack.push_async_callback(rt.stop)
    return build_admin_app(rt)
