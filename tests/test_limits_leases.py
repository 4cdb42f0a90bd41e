"""Reservations held by a replica that dies are given back (Redis counters).

A replica reserves a request's worst-case cost before it calls the upstream and
settles it after. If it dies in between, the reservation must not stay in the
budget until the window ends: the other replicas notice it stopped beating and
release what its lease still holds, exactly once, never touching live replicas'
reservations. Each test uses real Redis under a random prefix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import need
from tollhouse.limits.base import Admitted, BudgetCharge, BudgetState, Refused, Settlement
from tollhouse.limits.redis import DEAD_AFTER, HEARTBEAT, RedisLimits

REDIS_URL = "redis://127.0.0.1:6379/0"
SHARED = BudgetCharge("budget:shared", 100, 60, 3600)  # room for one of these at a time


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"tollhouse-test:{uuid.uuid4().hex}:"
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await client.ping()
    except (RedisConnectionError, OSError):
        await client.aclose()
        need(False, "Redis is not reachable at 127.0.0.1:6379")
    yield prefix
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@asynccontextmanager
async def raw() -> AsyncIterator[Redis]:
    """A plain client, to look at the keys the backend wrote."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def replica(prefix: str, name: str, dead_after: float = 0.2, heartbeat: float = 5.0) -> RedisLimits:
    return RedisLimits(REDIS_URL, prefix, replica=name, dead_after=dead_after, heartbeat=heartbeat)


async def reserved(backend: RedisLimits) -> BudgetState:
    [state] = await backend.budget_states([SHARED.name])
    return state


async def admit(backend: RedisLimits) -> Admitted | Refused:
    return await backend.admit([SHARED], [])


async def test_a_dead_replicas_reservation_is_released_by_a_sweep(prefix: str) -> None:
    """Replica a reserves and dies; once it has been silent for dead_after, replica b's
    sweep gives the budget back, and b can admit what did not fit before."""
    a, b = replica(prefix, "a"), replica(prefix, "b")
    try:
        assert isinstance(await admit(a), Admitted)
        assert isinstance(await admit(b), Refused)  # a's 60 + 60 > 100
        assert await b.sweep() == 0  # a reserved just now: alive
        await asyncio.sleep(0.3)
        await b.beat()
        assert await b.sweep() == 1
        assert await reserved(b) == BudgetState(spent=0, reserved=0)
        assert isinstance(await admit(b), Admitted)
        async with raw() as client:
            assert await client.exists(prefix + "lease:a") == 0
            assert await client.zrange(prefix + "replicas", 0, -1) == ["b"]
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_replica_that_beats_is_never_swept(prefix: str) -> None:
    """Reservations of a replica that keeps beating stay, however old they are."""
    a, b = replica(prefix, "a"), replica(prefix, "b")
    try:
        assert isinstance(await admit(a), Admitted)
        await asyncio.sleep(0.3)
        await a.beat()
        assert await b.sweep() == 0
        assert await reserved(b) == BudgetState(spent=0, reserved=60)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_late_settle_after_a_sweep_releases_nothing_twice(prefix: str) -> None:
    """A replica that was only slow (swept, then settles) adds its spend but does not
    take back a reservation the sweep already returned, which would eat b's."""
    a, b = replica(prefix, "a"), replica(prefix, "b")
    try:
        ticket = await admit(a)
        assert isinstance(ticket, Admitted)
        await asyncio.sleep(0.3)
        assert await b.sweep() == 1
        assert isinstance(await admit(b), Admitted)  # b now holds 60
        await a.settle(ticket, Settlement(cost=10))
        assert await reserved(b) == BudgetState(spent=10, reserved=60)
    finally:
        await a.aclose()
        await b.aclose()


async def test_settling_empties_the_lease_and_any_replica_may_settle(prefix: str) -> None:
    """The lease only holds what is outstanding; a ticket names its holder, so a settle
    from another replica object releases the right lease."""
    a, b = replica(prefix, "a"), replica(prefix, "b")
    try:
        ticket = await admit(a)
        assert isinstance(ticket, Admitted)
        await b.settle(ticket, Settlement(cost=25))
        assert await reserved(a) == BudgetState(spent=25, reserved=0)
        async with raw() as client:
            assert await client.hgetall(prefix + "lease:a") == {}
    finally:
        await a.aclose()
        await b.aclose()


async def test_started_replicas_beat_and_sweep_by_themselves(prefix: str) -> None:
    """With ``start()`` (what the gateway does), a replica beats and sweeps every
    heartbeat: a crashed peer's reservation comes back with no call from anyone."""
    crashed = replica(prefix, "crashed")
    survivor = replica(prefix, "survivor", heartbeat=0.05)
    try:
        assert isinstance(await admit(crashed), Admitted)
        await crashed.aclose()  # its lease is not empty: it stays listed, as after a crash
        await survivor.start()
        for _ in range(100):  # up to 5 s; the sweep is due after ~0.25 s
            if not (await reserved(survivor)).reserved:
                break
            await asyncio.sleep(0.05)
        assert await reserved(survivor) == BudgetState(spent=0, reserved=0)
    finally:
        await survivor.aclose()
    async with raw() as client:  # a replica that closes with nothing outstanding leaves
        assert await client.zrange(prefix + "replicas", 0, -1) == []


async def test_closing_ends_the_heartbeat_even_when_a_cancellation_is_lost(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client library can turn a cancellation that arrives mid-command into its own
    timeout error; the heartbeat loop took that for a failed beat and ran on, and
    ``aclose`` waited for it forever (a hung shutdown; seen in CI). Every beat here
    loses the cancellation that way: ``aclose`` still returns, and the loop stops."""
    limits = replica(prefix, "stubborn", heartbeat=0.05)
    lost = 0
    beat = limits.beat

    async def beat_losing_cancellations() -> None:
        nonlocal lost
        try:
            await asyncio.sleep(0.2)  # a command in flight
        except asyncio.CancelledError:
            lost += 1
            raise TimeoutError("a cancellation turned into a client timeout") from None
        await beat()

    monkeypatch.setattr(limits, "beat", beat_losing_cancellations)
    await limits.start()
    await asyncio.sleep(0.1)
    await asyncio.wait_for(limits.aclose(), timeout=10)
    assert lost >= 1
    assert limits._maintainer is None


async def test_large_amounts_go_through_the_lease_exactly(prefix: str) -> None:
    """Amounts the scripts compute (what a lease gives back) are written as integers: a
    Lua number would reach Redis as '1e+15' and fail, or round."""
    big = BudgetCharge("budget:shared", 2**53 - 1, 10**15 + 7, 3600)
    a, b = replica(prefix, "a"), replica(prefix, "b")
    try:
        ticket = await a.admit([big], [])
        assert isinstance(ticket, Admitted)
        await a.settle(ticket, Settlement(cost=10**15 + 3))
        assert await reserved(a) == BudgetState(spent=10**15 + 3, reserved=0)
        assert isinstance(await a.admit([big], []), Admitted)
        await asyncio.sleep(0.3)
        assert await b.sweep() == 1
        assert await reserved(b) == BudgetState(spent=10**15 + 3, reserved=0)
    finally:
        await a.aclose()
        await b.aclose()


def test_the_documented_timings_are_the_defaults() -> None:
    """docs/budgets-and-limits.md says a replica beats every 5 s and is swept after 30 s."""
    assert (HEARTBEAT, DEAD_AFTER) == (5.0, 30.0)
