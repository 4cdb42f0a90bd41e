"""The limits contract, run against every backend: one suite, memory and Redis alike.

Each test gets a fresh backend: memory with a fake clock, or Redis under a random
key prefix that is deleted afterwards. ``Harness.advance`` moves time forward
(instantly for memory, by sleeping for Redis) and ``Harness.replica`` returns a
second client sharing the counters, as another gateway replica would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import need
from tollhouse.limits.base import (
    Admitted,
    BudgetCharge,
    BudgetState,
    LimitsBackend,
    RateCharge,
    Refused,
    Settlement,
)
from tollhouse.limits.memory import MemoryLimits
from tollhouse.limits.redis import RedisLimits

REDIS_URL = "redis://127.0.0.1:6379/0"
HOUR = 3600


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    kind: str
    backend: LimitsBackend
    clock: FakeClock | None = None
    prefix: str = ""
    _extra: list[RedisLimits] = field(default_factory=list)

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    def replica(self) -> LimitsBackend:
        """Another gateway's view of the same counters (the same object in one process)."""
        if self.kind == "memory":
            return self.backend
        other = RedisLimits(REDIS_URL, self.prefix)
        self._extra.append(other)
        return other


@asynccontextmanager
async def redis_harness() -> AsyncIterator[Harness]:
    prefix = f"tollhouse-test:{uuid.uuid4().hex}:"
    backend = RedisLimits(REDIS_URL, prefix)
    try:
        await backend.ping()
    except (RedisConnectionError, OSError):
        await backend.aclose()
        need(False, "Redis is not reachable at 127.0.0.1:6379")
    harness = Harness("redis", backend, prefix=prefix)
    try:
        yield harness
    finally:
        for other in [backend, *harness._extra]:
            await other.aclose()
        raw = Redis.from_url(REDIS_URL)
        keys = [key async for key in raw.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


@pytest.fixture(params=["memory", "redis"])
async def limits(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()
        backend = MemoryLimits(clock=clock)
        yield Harness("memory", backend, clock)
        await backend.aclose()
    else:
        async with redis_harness() as harness:
            yield harness


def budget(name: str, limit: int, amount: int, ttl: int = HOUR) -> BudgetCharge:
    return BudgetCharge(f"budget:{name}", limit, amount, ttl)


def rate(name: str, limit: int, amount: int = 1, ttl: int = HOUR) -> RateCharge:
    return RateCharge(f"rate:{name}", limit, amount, ttl)


async def admitted(backend: LimitsBackend, *charges: BudgetCharge | RateCharge) -> Admitted:
    budgets = [c for c in charges if isinstance(c, BudgetCharge)]
    rates = [c for c in charges if isinstance(c, RateCharge)]
    result = await backend.admit(budgets, rates)
    assert isinstance(result, Admitted), result
    return result


async def test_admit_within_limits_increments_every_counter(limits: Harness) -> None:
    """An admitted request reserves on every budget and counts on every rate counter."""
    b = limits.backend
    await admitted(b, budget("k", 100, 30), rate("rpm", 10), rate("tpm", 1000, 250))
    got = await admitted(
        b, budget("k", 100, 30), budget("t", 500, 30), rate("rpm", 10), rate("tpm", 1000, 250)
    )
    assert got.budget_totals == (60, 30)
    assert got.rate_counts == (2, 500)
    assert await b.budget_states(["budget:k", "budget:t"]) == [
        BudgetState(0, 60),
        BudgetState(0, 30),
    ]
    assert await b.rate_counts(["rate:rpm", "rate:tpm"]) == [2, 500]


async def test_a_budget_filled_exactly_to_its_limit_is_admitted(limits: Harness) -> None:
    """Room means spent + reserved + amount <= limit: the last nano-USD can be used."""
    await admitted(limits.backend, budget("k", 100, 100), rate("rpm", 1))
    assert await limits.backend.admit([budget("k", 100, 1)], []) == Refused("budget", 0, 100)
    assert await limits.backend.admit([], [rate("rpm", 1)]) == Refused("rate", 0, 1)


async def test_refusal_changes_nothing_and_names_the_full_counter(limits: Harness) -> None:
    """One full counter blocks every other: no budget reserves, no rate counter moves."""
    b = limits.backend
    await admitted(b, budget("team", 100, 90), rate("tpm", 1000, 990))
    before_b = await b.budget_states(["budget:key", "budget:team"])
    before_r = await b.rate_counts(["rate:rpm", "rate:tpm"])
    full_budget = [budget("key", 1000, 20), budget("team", 100, 20)]
    assert await b.admit(full_budget, [rate("rpm", 10)]) == Refused("budget", 1, 90)
    full_rate = [rate("rpm", 10), rate("tpm", 1000, 20)]
    assert await b.admit([budget("key", 1000, 5)], full_rate) == Refused("rate", 1, 990)
    assert await b.budget_states(["budget:key", "budget:team"]) == before_b
    assert await b.rate_counts(["rate:rpm", "rate:tpm"]) == before_r


async def test_a_counter_named_twice_counts_both_charges(limits: Harness) -> None:
    """Two charges on one counter in one request must both fit, not each on its own."""
    b = limits.backend
    assert await b.admit([budget("k", 100, 60), budget("k", 100, 60)], []) == Refused(
        "budget", 1, 0
    )
    got = await admitted(b, budget("k", 100, 50), budget("k", 100, 50))
    assert got.budget_totals == (100, 100)


async def test_settle_moves_the_reservation_to_the_real_cost(limits: Harness) -> None:
    """Reserved is released, the real cost is spent, rate counters move by real - charged."""
    b = limits.backend
    first = await admitted(b, budget("k", 1000, 300), rate("rpm", 10), rate("tpm", 5000, 4096))
    await admitted(b, budget("k", 1000, 300), rate("rpm", 10), rate("tpm", 5000, 4))
    await b.settle(first, Settlement(cost=123, rate_amounts=(1, 1000)))
    assert await b.budget_states(["budget:k"]) == [BudgetState(spent=123, reserved=300)]
    assert await b.rate_counts(["rate:rpm", "rate:tpm"]) == [2, 1004]


async def test_settle_without_rate_amounts_keeps_the_charged_counts(limits: Harness) -> None:
    """A settlement that names no real rate amounts leaves the counters as charged."""
    b = limits.backend
    got = await admitted(b, budget("k", 1000, 300), rate("tpm", 5000, 40))
    await b.settle(got, Settlement(cost=0))
    assert await b.budget_states(["budget:k"]) == [BudgetState(0, 0)]
    assert await b.rate_counts(["rate:tpm"]) == [40]
    with pytest.raises(ValueError, match="rate amounts"):
        await b.settle(got, Settlement(cost=0, rate_amounts=(1, 2)))


async def test_absent_counters_read_as_zero(limits: Harness) -> None:
    """Reading counters nobody charged yet returns zeros and creates nothing."""
    b = limits.backend
    assert await b.budget_states(["budget:none", "budget:other"]) == [BudgetState(0, 0)] * 2
    assert await b.rate_counts(["rate:none"]) == [0]
    assert await b.budget_states([]) == []
    assert await b.rate_counts([]) == []
    assert await b.seed_spent("budget:none", 5, HOUR)  # still absent, so seeding works


async def test_seed_spent_only_sets_absent_counters(limits: Harness) -> None:
    """Recovered spend is set once; a live counter (even one only reserved) is never overwritten."""
    b = limits.backend
    assert await b.seed_spent("budget:k", 70, HOUR)
    assert not await b.seed_spent("budget:k", 999, HOUR)
    await admitted(b, budget("r", 100, 10))
    assert not await b.seed_spent("budget:r", 999, HOUR)
    assert await b.budget_states(["budget:k", "budget:r"]) == [
        BudgetState(70, 0),
        BudgetState(0, 10),
    ]
    assert await b.admit([budget("k", 100, 31)], []) == Refused("budget", 0, 70)


async def test_ping_reports_a_round_trip(limits: Harness) -> None:
    """ping answers with a small non-negative number of seconds."""
    assert 0.0 <= await limits.backend.ping() < 1.0


@pytest.mark.timeout(10)  # the one slow test: Redis expiry needs a real 1.2 s sleep
async def test_expired_counters_behave_as_absent(limits: Harness) -> None:
    """Counters vanish after the ttl set at creation; later charges don't move it; settle
    after expiry resurrects nothing."""
    b = limits.backend
    early = await admitted(b, budget("short", 100, 100, ttl=1), rate("short", 1, ttl=1))
    await admitted(b, budget("long", 100, 10, ttl=HOUR))
    await admitted(b, budget("long", 100, 10, ttl=1))  # must not shorten the hour
    await limits.advance(1.2)
    assert await b.budget_states(["budget:short", "budget:long"]) == [
        BudgetState(0, 0),
        BudgetState(0, 20),
    ]
    assert await b.rate_counts(["rate:short"]) == [0]
    await b.settle(early, Settlement(cost=100, rate_amounts=(1,)))
    assert await b.budget_states(["budget:short"]) == [BudgetState(0, 0)]
    assert await b.rate_counts(["rate:short"]) == [0]
    await admitted(b, budget("short", 100, 100, ttl=1), rate("short", 1, ttl=1))


async def test_concurrent_admits_never_overshoot_across_replicas(limits: Harness) -> None:
    """500 racing requests (alternating between two replicas) on a budget that fits exactly
    N of them: exactly N are admitted and, settled at cost, spend is N*X <= limit."""
    n, x = 137, 1_000_003
    limit = n * x + x - 1  # room for N, not for N + 1
    replicas = [limits.backend, limits.replica()]
    charges = ([budget("shared", limit, x)], [rate("rpm", 10_000)])
    results = await asyncio.gather(*(replicas[i % 2].admit(*charges) for i in range(500)))
    admits = [r for r in results if isinstance(r, Admitted)]
    assert len(admits) == n
    assert all(r == Refused("budget", 0, n * x) for r in results if isinstance(r, Refused))
    assert sorted(a.budget_totals[0] for a in admits) == [x * (i + 1) for i in range(n)]
    await asyncio.gather(
        *(replicas[i % 2].settle(a, Settlement(cost=x)) for i, a in enumerate(admits))
    )
    [state] = await limits.backend.budget_states(["budget:shared"])
    assert state == BudgetState(spent=n * x, reserved=0)
    assert state.spent <= limit
    assert await limits.backend.rate_counts(["rate:rpm"]) == [n]


async def test_redis_layout_is_a_prefixed_hash_and_string_with_ttls() -> None:
    """Budgets are HASHes {spent, reserved}, rate counters strings, both under the prefix
    with the ttl they were created with; the replica's lease holds its reservation and
    the replica is listed (see tests/test_limits_leases.py)."""
    async with redis_harness() as h:
        await admitted(h.backend, budget("k", 100, 7, ttl=300), rate("rpm", 10, ttl=90))
        raw = Redis.from_url(REDIS_URL, decode_responses=True)
        assert isinstance(h.backend, RedisLimits)
        lease = f"{h.prefix}lease:{h.backend.replica}"
        try:
            assert await raw.hgetall(h.prefix + "budget:k") == {"reserved": "7"}
            assert await raw.get(h.prefix + "rate:rpm") == "1"
            assert 290 <= await raw.ttl(h.prefix + "budget:k") <= 300
            assert 80 <= await raw.ttl(h.prefix + "rate:rpm") <= 90
            assert await raw.hgetall(lease) == {h.prefix + "budget:k": "7"}
            assert 290 <= await raw.ttl(lease) <= 300
            assert await raw.zrange(h.prefix + "replicas", 0, -1) == [h.backend.replica]
        finally:
            await raw.aclose()


async def test_redis_errors_propagate() -> None:
    """An unreachable Redis raises instead of pretending a counter is empty."""
    backend = RedisLimits("redis://127.0.0.1:1/0", "x:")
    try:
        with pytest.raises(RedisConnectionError):
            await backend.admit([budget("k", 100, 1)], [])
        with pytest.raises(RedisConnectionError):
            await backend.ping()
    finally:
        await backend.aclose()


async def test_redis_applies_a_settlement_sent_twice_once() -> None:
    """The gateway retries a settlement until it lands, so one whose reply was lost after
    Redis applied it arrives twice; the ticket's marker makes the second a no-op. Another
    admission's settlement still applies."""
    async with redis_harness() as h:
        b = h.backend
        first = await admitted(b, budget("k", 1_000, 100), rate("r", 10))
        second = await admitted(b, budget("k", 1_000, 100), rate("r", 10))
        assert first.ticket and first.ticket != second.ticket
        for _ in range(2):
            await b.settle(first, Settlement(cost=40, rate_amounts=(1,)))
        assert await b.budget_states(["budget:k"]) == [BudgetState(spent=40, reserved=100)]
        await b.settle(second, Settlement(cost=30, rate_amounts=(1,)))
        assert await b.budget_states(["budget:k"]) == [BudgetState(spent=70, reserved=0)]
        assert await b.rate_counts(["rate:r"]) == [2]


async def test_redis_undoes_an_admission_only_if_it_was_applied() -> None:
    """An admission whose reply was lost is undone by settling its ticket with
    ``only_if_admitted``: it releases what that admission reserved and counted, once. A
    ticket Redis never admitted changes nothing, and leaves other admissions alone."""
    async with redis_harness() as h:
        b = h.backend
        assert isinstance(b, RedisLimits)
        kept = await admitted(b, budget("k", 1_000, 100), rate("r", 10))
        lost = await admitted(b, budget("k", 1_000, 200), rate("r", 10))
        undo = Settlement(0, (0,), only_if_admitted=True)
        for _ in range(2):
            await b.settle(lost, undo)
        assert await b.budget_states(["budget:k"]) == [BudgetState(spent=0, reserved=100)]
        assert await b.rate_counts(["rate:r"]) == [1]
        never = replace(lost, ticket=f"{b.replica}:never")
        await b.settle(never, undo)
        assert await b.budget_states(["budget:k"]) == [BudgetState(spent=0, reserved=100)]
        await b.settle(kept, Settlement(cost=60, rate_amounts=(1,)))
        assert await b.budget_states(["budget:k"]) == [BudgetState(spent=60, reserved=0)]
