"""Budget and rate counters in Redis, shared by every gateway replica.

``admit`` and ``settle`` are each one Lua script, so Redis runs the whole
check-then-increment with no other command in between: replicas can race as
hard as they like and a budget still admits exactly what fits. Scripts are
registered once and called by EVALSHA (redis-py reloads them after a
``SCRIPT FLUSH`` or a failover to a fresh server).

Layout, every key prefixed with ``prefix``:

- a budget is a HASH ``{spent, reserved}`` in integer nano-USD (HINCRBY);
- a rate counter is a string integer (INCRBY).

A key gets its ``ttl`` when a charge creates it; later charges never shorten
or extend it, so a counter lives exactly as long as its window (plus margin).
``settle`` and ``seed_spent`` never bring back a key that has expired.
(Needs Redis >= 6.0 for ``SET ... KEEPTTL``. All of one request's keys go to
one script, so on Redis Cluster the prefix must carry a hash tag, e.g.
``{tollhouse}:``.)

Scripts compare amounts as Lua numbers (doubles), exact up to 2**53 nano-USD
(about 9 million USD per counter and window); increments themselves are exact
64-bit integers because amounts reach HINCRBY/INCRBY as the strings we sent.

Redis errors propagate unchanged (``redis.exceptions.RedisError``): whether a
gateway fails open or closed without Redis is the caller's decision. The
connection pool blocks (up to ``pool_timeout``) instead of failing when a burst
wants more than ``max_connections`` connections at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis.asyncio import BlockingConnectionPool, Redis

from tollhouse.limits.base import (
    Admitted,
    BudgetCharge,
    BudgetState,
    RateCharge,
    Refused,
    Settlement,
)
from tollhouse.limits.memory import rate_deltas

# KEYS: budget hashes (the first ARGV[1]), then rate counters.
# ARGV: nb, then limit, amount, ttl for each key in KEYS order.
# Returns {1, value...} (spent + reserved, or count, after the increment) when
# admitted, {0, position in KEYS, current value} when refused.
_ADMIT = """
local nb = tonumber(ARGV[1])
local function value(i, key)
  if i <= nb then
    local v = redis.call('HMGET', key, 'spent', 'reserved')
    return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
  end
  return tonumber(redis.call('GET', key)) or 0
end
local pending = {}
for i, key in ipairs(KEYS) do
  local j = 2 + (i - 1) * 3
  local current = value(i, key)
  local amount = tonumber(ARGV[j + 1])
  if current + (pending[key] or 0) + amount > tonumber(ARGV[j]) then
    return {0, i, current}
  end
  pending[key] = (pending[key] or 0) + amount
end
for i, key in ipairs(KEYS) do
  local j = 2 + (i - 1) * 3
  if i <= nb then
    redis.call('HINCRBY', key, 'reserved', ARGV[j + 1])
  else
    redis.call('INCRBY', key, ARGV[j + 1])
  end
  if redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[j + 2])
  end
end
local out = {1}
for i, key in ipairs(KEYS) do
  out[i + 1] = value(i, key)
end
return out
"""

# KEYS: budget hashes (the first ARGV[1]), then rate counters.
# ARGV: nb, cost, then -reserved per budget and (real - charged) per rate counter.
_SETTLE = """
local nb = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    if i <= nb then
      if redis.call('HINCRBY', key, 'reserved', ARGV[i + 2]) < 0 then
        redis.call('HSET', key, 'reserved', 0)
      end
      redis.call('HINCRBY', key, 'spent', ARGV[2])
    elseif redis.call('INCRBY', key, ARGV[i + 2]) < 0 then
      redis.call('SET', key, 0, 'KEEPTTL')
    end
  end
end
return 0
"""

# KEYS: one budget hash. ARGV: spent, ttl. Returns 1 if it was set.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisLimits:
    """``LimitsBackend`` on one Redis server (or primary), atomic across replicas."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_connections: int = 32,
        pool_timeout: float = 5.0,
        socket_timeout: float = 5.0,
    ) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
        self._redis = Redis.from_pool(pool)  # the client owns the pool and closes it
        self._prefix = prefix
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._seed = self._redis.register_script(_SEED)

    async def admit(
        self, budgets: Sequence[BudgetCharge], rates: Sequence[RateCharge]
    ) -> Admitted | Refused:
        """All-or-nothing reservation; budgets are checked first, then rates, in order."""
        nb = len(budgets)
        if nb == 0 and not rates:
            return Admitted((), (), (), ())
        charges: list[BudgetCharge | RateCharge] = [*budgets, *rates]
        keys = [self._prefix + c.name for c in charges]
        args = [nb]
        for c in charges:
            args += (c.limit, c.amount, c.ttl)
        result = [int(v) for v in await self._admit(keys=keys, args=args)]
        if result[0] == 0:
            position, current = result[1] - 1, result[2]
            if position < nb:
                return Refused("budget", position, current)
            return Refused("rate", position - nb, current)
        return Admitted(
            budgets=tuple(budgets),
            rates=tuple(rates),
            budget_totals=tuple(result[1 : 1 + nb]),
            rate_counts=tuple(result[1 + nb :]),
        )

    async def settle(self, admitted: Admitted, outcome: Settlement) -> None:
        """Reserved → spent with the real cost; expired counters stay absent."""
        deltas = rate_deltas(admitted, outcome)
        if not admitted.budgets and not admitted.rates:
            return
        names = [b.name for b in admitted.budgets] + [r.name for r in admitted.rates]
        keys = [self._prefix + name for name in names]
        args = [len(admitted.budgets), outcome.cost, *(-b.amount for b in admitted.budgets)]
        await self._settle(keys=keys, args=[*args, *deltas])

    async def budget_states(self, names: Sequence[str]) -> list[BudgetState]:
        if not names:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self._prefix + name, ["spent", "reserved"])
            rows = await pipe.execute()
        return [BudgetState(int(spent or 0), int(reserved or 0)) for spent, reserved in rows]

    async def rate_counts(self, names: Sequence[str]) -> list[int]:
        if not names:
            return []
        values = await self._redis.mget([self._prefix + name for name in names])
        return [int(v or 0) for v in values]

    async def seed_spent(self, name: str, spent: int, ttl: int) -> bool:
        return bool(await self._seed(keys=[self._prefix + name], args=[spent, ttl]))

    async def ping(self) -> float:
        """One PING's round trip in seconds (including taking a pooled connection)."""
        start = time.perf_counter()
        await self._redis.ping()
        return time.perf_counter() - start

    async def aclose(self) -> None:
        await self._redis.aclose()
