"""Read-only views of live state: backends and model groups, budgets, detailed health.

Backend state comes from the routing layer when it exposes deployment health
(``router.groups()``: healthy, degraded, cooled down), and from the upstream
rate-limit gauges; anything the router does not offer is reported as
``unknown`` rather than guessed. Every field is optional so more can be added.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from tollhouse import __version__
from tollhouse.admin.background import rss_bytes
from tollhouse.admin.runtime import AdminRuntime
from tollhouse.identity.directory import budget_rules_of
from tollhouse.limits.base import NANO
from tollhouse.limits.policy import budget_counter
from tollhouse.store import rollup

_STATES = {0: "healthy", 1: "degraded", 2: "cooled_down"}
PROBE_TIMEOUT = 2.0


class Deployment(BaseModel):
    model: str
    backend: str
    provider: str
    upstream_model: str
    state: str = "unknown"
    in_flight: int | None = None
    latency_ms: float | None = None


class BackendOut(BaseModel):
    name: str
    provider: str
    base_url: str | None
    models: list[str]
    state: str
    upstream_remaining_requests: dict[str, float]
    upstream_remaining_tokens: dict[str, float]


class ModelGroupOut(BaseModel):
    name: str
    in_flight: float
    deployments: list[Deployment]


def _public_url(url: str | None) -> str | None:
    """The base URL without credentials or query (which may hold a key)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def deployments(rt: AdminRuntime) -> list[Deployment]:
    """Every (model, backend) pair, with live state when the router has it."""
    groups = getattr(rt.router, "groups", None)
    if callable(groups):
        out = []
        for group in groups():
            for dep in group.deployments:
                health, t = getattr(dep, "health", None), dep.target
                latency = getattr(health, "latency", None)
                out.append(Deployment(
                    model=group.name, backend=t.backend, provider=t.provider,
                    upstream_model=t.upstream_model,
                    state=_STATES.get(health.state(), "unknown") if health else "unknown",
                    in_flight=getattr(health, "in_flight", None),
                    latency_ms=latency * 1000 if latency is not None else None,
                ))  # fmt: skip
        return out
    providers = {b.name: b.provider for b in rt.config.backends}
    out = []
    for m in rt.config.models:
        backend, upstream = m.backend or "", m.model or ""
        provider = providers.get(backend, "unknown")
        out.append(Deployment(model=m.name, backend=backend, provider=provider,
                              upstream_model=upstream))  # fmt: skip
    return out


def _gauge(metric: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for family in metric.collect():
        for s in family.samples:
            out[s.labels.get("backend", "")][s.labels.get("upstream_model", "")] = s.value
    return out


def backends(rt: AdminRuntime) -> list[BackendOut]:
    deps = deployments(rt)
    requests, tokens = _gauge(rt.metrics.ratelimit_requests), _gauge(rt.metrics.ratelimit_tokens)
    out = []
    for b in rt.config.backends:
        mine = [d for d in deps if d.backend == b.name]
        states = {d.state for d in mine}
        state = "unknown" if not mine or "unknown" in states else max(
            states, key=["healthy", "degraded", "cooled_down"].index)  # fmt: skip
        out.append(BackendOut(
            name=b.name, provider=b.provider, base_url=_public_url(b.base_url),
            models=sorted({d.model for d in mine}), state=state,
            upstream_remaining_requests=requests.get(b.name, {}),
            upstream_remaining_tokens=tokens.get(b.name, {}),
        ))  # fmt: skip
    return out


def model_groups(rt: AdminRuntime) -> list[ModelGroupOut]:
    by_model: dict[str, list[Deployment]] = defaultdict(list)
    for d in deployments(rt):
        by_model[d.model].append(d)
    flying = {s.labels["model"]: s.value for f in rt.metrics.in_flight.collect()
              for s in f.samples}  # fmt: skip
    return [ModelGroupOut(name=name, in_flight=flying.get(name, 0.0), deployments=deps)
            for name, deps in by_model.items()]  # fmt: skip


class BudgetOut(BaseModel):
    scope: str
    entity: str
    period: str
    limit_usd: str
    soft_limit_usd: str | None
    spend_usd: str
    reserved_usd: str
    remaining_usd: str
    resets_in_seconds: float


async def budgets(rt: AdminRuntime) -> list[BudgetOut]:
    """Every configured and stored budget with its live counters (from the limits backend)."""
    rules = [*rt.config_budgets, *await budget_rules_of(rt.store)]
    if rt.limits is None or not rules:
        return []
    now = rt.wall()
    names = [budget_counter(r, now) for r in rules]
    states = await rt.limits.budget_states([n for n, _, _ in names])

    def usd(nano: int) -> str:
        return str(Decimal(nano) / NANO)

    return [
        BudgetOut(
            scope=r.scope,
            entity=r.entity,
            period=r.period,
            limit_usd=usd(r.limit),
            soft_limit_usd=usd(r.soft) if r.soft is not None else None,
            spend_usd=usd(s.spent),
            reserved_usd=usd(s.reserved),
            remaining_usd=usd(max(0, r.limit - s.spent - s.reserved)),
            resets_in_seconds=max(0.0, end - now),
        )
        for r, s, (_, end, _) in zip(rules, states, names, strict=True)
    ]


class Probe(BaseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Health(BaseModel):
    status: str  # "ok" or "degraded" (the store or Redis unreachable)
    version: str
    python: str
    uptime_seconds: float
    store: Probe
    store_dialect: str
    redis: Probe | None
    backends: list[BackendOut]
    ledger_backlog: int
    ledger_rows_written: int
    ledger_write_errors: int
    rollup_watermark: int | None
    rollup_pending_rows: int | None
    rollup_error: str | None
    memory_rss_bytes: int | None
    event_loop_lag_ms: float
    event_loop_max_lag_ms: float


async def _probe(ping: Any) -> Probe:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            seconds = await ping()
    except Exception as err:  # unreachable is an answer here, not a failure of the report
        return Probe(ok=False, error=type(err).__name__)
    return Probe(ok=True, latency_ms=seconds * 1000)


async def health(rt: AdminRuntime) -> Health:
    store = await _probe(rt.store.ping)
    redis = (
        await _probe(rt.limits.ping) if rt.config.limits.backend == "redis" and rt.limits else None
    )
    mark = newest = None
    if store.ok:
        async with rt.store.engine.connect() as conn:
            mark = await rollup.watermark(conn)
        newest = await rollup.newest_id(rt.store.engine)
    ok = store.ok and (redis is None or redis.ok)
    return Health(
        status="ok" if ok else "degraded", version=__version__,
        python=platform.python_version(), uptime_seconds=time.time() - rt.started_at,
        store=store, store_dialect=rt.store.dialect, redis=redis, backends=backends(rt),
        ledger_backlog=int(getattr(rt.ledger, "backlog", 0)),
        ledger_rows_written=int(getattr(rt.ledger, "written_total", 0)),
        ledger_write_errors=int(getattr(rt.ledger, "write_errors_total", 0)),
        rollup_watermark=mark,
        rollup_pending_rows=None if newest is None or mark is None else max(0, newest - mark),
        rollup_error=rt.folder.last_error, memory_rss_bytes=rss_bytes(),
        event_loop_lag_ms=rt.lag.lag * 1000, event_loop_max_lag_ms=rt.lag.max_lag * 1000,
    )  # fmt: skip
