"""``/admin/v1`` read routes: usage analytics, the audit log, budgets, backends, health."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tollhouse.admin import state, usage
from tollhouse.admin.deps import AdminActor, Runtime
from tollhouse.admin.routes_manage import _ERRORS
from tollhouse.admin.schemas import Text
from tollhouse.store.audit import AuditFilter, AuditRepo

router = APIRouter(responses=_ERRORS)
Time = Annotated[
    str | None,
    Query(max_length=64, description="unix seconds or RFC 3339; default: 24 h before end / now"),
]
Filter = Annotated[Text | None, Query()]


def _filters(**given: str | None) -> dict[str, str]:
    return {name: value for name, value in given.items() if value is not None}


@router.get("/usage", tags=["usage"])
async def usage_totals(rt: Runtime, _: AdminActor, start: Time = None, end: Time = None,
                       key: Filter = None, team: Filter = None, user: Filter = None,
                       end_user: Filter = None, model: Filter = None, backend: Filter = None,
                       provider: Filter = None) -> usage.UsageTotals:  # fmt: skip
    """Totals over ``[start, end)`` for everything, or for one key, team, user, end user,
    model, backend or provider (filters combine)."""
    begin, stop = usage.window(start, end, datetime.now(UTC))
    filters = _filters(key=key, team=team, user=user, end_user=end_user, model=model,
                       backend=backend, provider=provider)  # fmt: skip
    return await usage.totals(rt.store.engine, begin, stop, filters)


Metric = Annotated[str, Query(pattern="^(" + "|".join(usage.METRICS) + ")$")]
GroupBy = Annotated[str | None, Query(pattern="^(key|team|model|backend|provider)$")]


@router.get("/usage/series", tags=["usage"])
async def usage_series(rt: Runtime, _: AdminActor, metric: Metric = "requests",
                       step: Annotated[str, Query(max_length=8)] = "1h",
                       group_by: GroupBy = None, top: Annotated[int, Query(ge=1, le=100)] = 5,
                       start: Time = None, end: Time = None, key: Filter = None,
                       team: Filter = None, user: Filter = None, end_user: Filter = None,
                       model: Filter = None, backend: Filter = None,
                       provider: Filter = None) -> usage.UsageSeries:  # fmt: skip
    """``metric`` per ``step``, for the ``top`` groups of ``group_by`` plus ``__other__``."""
    begin, stop = usage.window(start, end, datetime.now(UTC))
    filters = _filters(key=key, team=team, user=user, end_user=end_user, model=model,
                       backend=backend, provider=provider)  # fmt: skip
    return await usage.series(rt.store.engine, metric, begin, stop, step, group_by, top, filters)


class AuditOut(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    target_type: str
    target: str
    address: str | None
    request_id: str | None
    changes: dict[str, Any] | None


class AuditPage(BaseModel):
    data: list[AuditOut]
    next_before_id: int | None


@router.get("/audit", tags=["audit"])
async def audit(rt: Runtime, _: AdminActor, actor: Filter = None, action: Filter = None,
                target_type: Filter = None, target: Filter = None, start: Time = None,
                end: Time = None, before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditPage:  # fmt: skip
    """Admin mutations, newest first; page with ``before_id=next_before_id``."""
    since = usage.parse_time(start, datetime.min.replace(tzinfo=UTC)) if start else None
    until = usage.parse_time(end, datetime.now(UTC)) if end else None
    f = AuditFilter(actor, action, target_type, target, since, until, before_id, limit)
    rows = await AuditRepo(rt.store.engine).query(f)
    data = [AuditOut(id=r.id, ts=r.ts, actor=r.actor, action=r.action,
                     target_type=r.target_type, target=r.target, address=r.address,
                     request_id=r.request_id,
                     changes=dict(r.changes) if r.changes is not None else None) for r in rows]  # fmt: skip
    return AuditPage(data=data, next_before_id=rows[-1].id if len(rows) == limit else None)


@router.get("/budgets", tags=["budgets"])
async def budgets(rt: Runtime, _: AdminActor) -> list[state.BudgetOut]:
    """Every budget (configured, and on keys, teams and users) with its live spend."""
    return await state.budgets(rt)


@router.get("/backends", tags=["backends"])
async def backends(rt: Runtime, _: AdminActor) -> list[state.BackendOut]:
    return state.backends(rt)


@router.get("/models", tags=["backends"])
async def models(rt: Runtime, _: AdminActor) -> list[state.ModelGroupOut]:
    """Public models (model groups) with their deployments and live state."""
    return state.model_groups(rt)


@router.get("/health", tags=["health"])
async def health(rt: Runtime, _: AdminActor) -> state.Health:
    """Store and Redis reachability and latency, backends, ledger backlog, memory, loop lag.

    Always 200 while the process serves; ``status`` says ``degraded`` when a dependency
    is down (``/health/ready`` is the probe for load balancers)."""
    return await state.health(rt)
