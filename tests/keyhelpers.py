"""Helpers for tests that need keys, teams and users in a store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tests.conftest import mock_config, run_sync
from tollhouse.identity.manage import Manager
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate

T = TypeVar("T")


def manage(url: str, op: Callable[[Manager], Awaitable[T]]) -> T:
    async def run() -> T:
        await migrate(url)
        async with Store(url) as store:
            return await op(Manager(store))

    result: T = run_sync(run())
    return result


def gateway_config(
    store_url: str, limits: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The mock backend, auth required, the given store and limits backend."""
    config = mock_config()
    config["auth"] = {"required": True, "cache_ttl": 0}
    config["store"] = {"url": store_url}
    config["ledger"] = {"flush_interval": 0.05}
    if limits is not None:
        config["limits"] = limits
    config.update(extra)
    return config
