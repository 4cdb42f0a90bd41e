"""Budget and rate counters in Redis, shared by every gateway replica.

``admit`` and ``settle`` are each one Lua script, so Redis runs the whole
check-then-increment with no other command in between: replicas can race as
hard as they like and a budget still admits exactly what fits. Scripts are
registered once and called by EVALSHA (redis-py reloads them after a
``SCRIPT FLUSH`` or a failover to a fresh server).

Layout, every key prefixed with ``prefix``:

- a budget is a HASH ``{spent, reserved}`` in integer nano-USD (HINCRBY);
- a rate counter is a string integer (INCRBY);
- each replica's outstanding budget reservations are a HASH ``lease:<replica>``
  (budget key → nano-USD it reserved there), and ``replicas`` is a ZSET of
  replica ids scored by their last heartbeat (Redis server time, ms);
- each settled admission leaves a marker string ``settled:<replica>:<n>`` for
  ``SETTLED_TTL`` seconds, so a settlement sent again because its reply was lost
  (the gateway retries them until they land) is applied once (about 100 bytes of
  Redis memory per request for that long).

A key gets its ``ttl`` when a charge creates it; later charges never shorten
or extend it, so a counter lives exactly as long as its window (plus margin).
``settle`` and ``seed_spent`` never bring back a key that has expired.
(Needs Redis >= 6.0 for ``SET ... KEEPTTL``. All of one request's keys go to
one script, so on Redis Cluster the prefix must carry a hash tag, e.g.
``{tollhouse}:``.)

Why leases: a replica that dies between admitting a request and settling it
would otherwise leave its reservation in the budget until the window ends (a
month, for a monthly budget), refusing requests that fit. Every replica beats
every ``heartbeat`` seconds and sweeps: a replica silent for ``dead_after``
seconds has what its lease still holds taken out of each budget's
``reserved``, then its lease is deleted. A settle only releases what its own
lease still holds, so a replica that was only slow, and was swept, never
releases another replica's reservation twice. Spend is always added. (The
sweep reaches leases and budgets by name rather than as declared keys; with
the hash-tagged prefix they share one Cluster slot.)

Scripts compare amounts as Lua numbers (doubles), exact up to 2**53 nano-USD
(about 9 million USD per counter and window); increments themselves are exact
64-bit integers because amounts reach HINCRBY/INCRBY as the strings we sent.

Redis errors propagate unchanged (``redis.exceptions.RedisError``): whether a
gateway fails open or closed without Redis is the caller's decision. One exception:
an admission with budgets whose connection broke or timed out after the script was
sent may have been applied, so it raises ``MaybeAdmitted`` (the Redis error as its
cause) naming its ticket; settling that ticket with ``only_if_admitted`` releases the
reservation if, and only if, the admission had been applied. The
connection pool blocks (up to ``pool_timeout``) instead of failing when a burst
wants more than ``max_connections`` connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError

from tollhouse.limits.base import (
    Admitted,
    BudgetCharge,
    BudgetState,
    MaybeAdmitted,
    RateCharge,
    Refused,
    Settlement,
)
from tollhouse.limits.memory import rate_deltas
from tollhouse.tasks import cancel_and_wait

log = logging.getLogger("tollhouse.limits")

# KEYS: budget hashes (the first ARGV[1]), then rate counters, then this replica's
# lease, the replicas ZSET and the lease's open tickets. ARGV: nb, replica id, then
# limit, amount, ttl for each counter in KEYS order, then the ticket.
# Returns {1, value...} (spent + reserved, or count, after the increment) when
# admitted, {0, position in KEYS, current value} when refused.
_ADMIT = """
local nb = tonumber(ARGV[1])
local lease, replicas, tickets = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local n = #KEYS - 3
local function value(i, key)
  if i <= nb then
    local v = redis.call('HMGET', key, 'spent', 'reserved')
    return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
  end
  return tonumber(redis.call('GET', key)) or 0
end
local pending = {}
for i = 1, n do
  local key, j = KEYS[i], 3 + (i - 1) * 3
  local current = value(i, key)
  local amount = tonumber(ARGV[j + 1])
  if current + (pending[key] or 0) + amount > tonumber(ARGV[j]) then
    return {0, i, current}
  end
  pending[key] = (pending[key] or 0) + amount
end
for i = 1, n do
  local key, j = KEYS[i], 3 + (i - 1) * 3
  if i <= nb then
    redis.call('HINCRBY', key, 'reserved', ARGV[j + 1])
    redis.call('HINCRBY', lease, key, ARGV[j + 1])
    if redis.call('TTL', lease) < tonumber(ARGV[j + 2]) then
      redis.call('EXPIRE', lease, ARGV[j + 2])
    end
  else
    redis.call('INCRBY', key, ARGV[j + 1])
  end
  if redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, ARGV[j + 2])
  end
end
if nb > 0 then  -- a replica that reserves is alive, and known to the sweepers
  local t = redis.call('TIME')
  redis.call('ZADD', replicas, t[1] * 1000 + math.floor(t[2] / 1000), ARGV[2])
  redis.call('HSET', tickets, ARGV[#ARGV], 1)  -- open until settled (or swept)
  redis.call('EXPIRE', tickets, redis.call('TTL', lease))
end
local out = {1}
for i = 1, n do
  out[i + 1] = value(i, KEYS[i])
end
return out
"""

# KEYS: budget hashes (the first ARGV[1]), then rate counters, then the admitting
# replica's lease, its open tickets and the ticket's marker. ARGV: nb, cost, then
# reserved per budget and (real - charged) per rate counter, then the marker's ttl,
# the ticket, and '1' to apply only if the admission is open (undoing one whose reply
# was lost: nothing to undo if it never happened, or if a sweep released it; returns
# 2 then). A ticket is settled once: the marker is set on the first settlement, and
# a second one (sent again after its reply was lost) changes nothing and returns 1.
# A budget gets back only what the lease still holds for it (nothing, if a sweep
# already released it); amounts written are formatted as integers ('%d'), since a
# Lua number would otherwise reach Redis as e.g. '1e+15'.
_SETTLE = """
local open = redis.call('HDEL', KEYS[#KEYS - 1], ARGV[#ARGV - 1])
if ARGV[#ARGV] == '1' and open == 0 then
  return 2
end
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', ARGV[#ARGV - 2]) then
  return 1
end
local nb = tonumber(ARGV[1])
local lease = KEYS[#KEYS - 2]
for i = 1, #KEYS - 3 do
  local key = KEYS[i]
  if i <= nb then
    local held = tonumber(redis.call('HGET', lease, key)) or 0
    local release = math.min(held, tonumber(ARGV[i + 2]))
    if release > 0 then
      local back = string.format('%d', -release)
      if redis.call('HINCRBY', lease, key, back) <= 0 then
        redis.call('HDEL', lease, key)
      end
      if redis.call('EXISTS', key) == 1 and redis.call('HINCRBY', key, 'reserved', back) < 0 then
        redis.call('HSET', key, 'reserved', 0)
      end
    end
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'spent', ARGV[2])
    end
  elseif redis.call('EXISTS', key) == 1 and redis.call('INCRBY', key, ARGV[i + 2]) < 0 then
    redis.call('SET', key, 0, 'KEEPTTL')
  end
end
return 0
"""

# KEYS: the replicas ZSET. ARGV: replica id. Its heartbeat, in Redis server time (ms).
_BEAT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 0
"""

# KEYS: the replicas ZSET. ARGV: lease key prefix, dead_after (ms), the sweeping
# replica's id. Releases what the leases of replicas silent for dead_after still hold
# (budgets that expired meanwhile are not brought back), deletes those leases and
# forgets those replicas. Returns how many reservations were released. (It reaches
# the leases and budgets by name, so on Redis Cluster they share the prefix's slot.)
_SWEEP = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local released = 0
for _, replica in ipairs(dead) do
  if replica ~= ARGV[3] then
    local lease = ARGV[1] .. replica
    local held = redis.call('HGETALL', lease)
    for i = 1, #held, 2 do
      local key, amount = held[i], tonumber(held[i + 1])
      if amount > 0 and redis.call('EXISTS', key) == 1 then
        local back = string.format('%d', -amount)
        if redis.call('HINCRBY', key, 'reserved', back) < 0 then
          redis.call('HSET', key, 'reserved', 0)
        end
        released = released + 1
      end
    end
    redis.call('DEL', lease, lease .. ':tickets')
    redis.call('ZREM', KEYS[1], replica)
  end
end
return released
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


HEARTBEAT = 5.0  # seconds between a replica's heartbeats (and sweeps)
SETTLED_TTL = 300  # seconds a settled ticket's marker lasts: past any retry of a lost reply
DEAD_AFTER = 30.0  # a replica silent this long has its reservations released


def _maybe_applied(err: Exception) -> bool:
    """Whether a failed call may still have run in Redis: not when Redis answered with an
    error, nor when no connection could be made; yes when one broke or timed out."""
    if isinstance(err, ResponseError):
        return False
    return not isinstance(err.__cause__ or err.__context__, ConnectionRefusedError)


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
        replica: str | None = None,
        heartbeat: float = HEARTBEAT,
        dead_after: float = DEAD_AFTER,
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
        self.replica = replica or uuid.uuid4().hex
        self._lease = f"{prefix}lease:{self.replica}"
        self._replicas = f"{prefix}replicas"
        self._heartbeat = heartbeat
        self._dead_after_ms = int(dead_after * 1000)
        self._maintainer: asyncio.Task[None] | None = None
        self._tickets = itertools.count()  # with the replica id: a ticket's unique name
        self._closing = False
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._seed = self._redis.register_script(_SEED)
        self._beat = self._redis.register_script(_BEAT)
        self._sweep = self._redis.register_script(_SWEEP)

    async def start(self) -> None:
        """Beat and sweep now and every ``heartbeat`` seconds until ``aclose``. Never
        fails: a gateway starts without Redis and refuses limited requests until it is
        back (``LimitsUnavailable``)."""
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name="tollhouse-leases")

    async def _maintain(self) -> None:
        while not self._closing:  # also ends the loop if a cancellation got lost mid-command
            try:
                await self.beat()
                await self.sweep()
            except Exception as err:  # Redis away for a while: try again next beat
                log.warning("lease_maintenance_failed error=%s", type(err).__name__)
            await asyncio.sleep(self._heartbeat)

    async def beat(self) -> None:
        """Tell the other replicas this one is alive."""
        await self._beat(keys=[self._replicas], args=[self.replica])

    async def sweep(self) -> int:
        """Release the reservations of replicas that stopped beating; return how many."""
        released = int(
            await self._sweep(
                keys=[self._replicas],
                args=[f"{self._prefix}lease:", self._dead_after_ms, self.replica],
            )
        )
        if released:
            log.warning("reservations_released count=%d reason=replica_gone", released)
        return released

    async def admit(
        self, budgets: Sequence[BudgetCharge], rates: Sequence[RateCharge]
    ) -> Admitted | Refused:
        """All-or-nothing reservation; budgets are checked first, then rates, in order."""
        nb = len(budgets)
        if nb == 0 and not rates:
            return Admitted((), (), (), ())
        charges: list[BudgetCharge | RateCharge] = [*budgets, *rates]
        keys = [self._prefix + c.name for c in charges]
        keys += [self._lease, self._replicas, self._lease + ":tickets"]
        ticket = f"{self.replica}:{next(self._tickets)}"
        args: list[int | str] = [nb, self.replica]
        for c in charges:
            args += (c.limit, c.amount, c.ttl)
        try:
            result = [int(v) for v in await self._admit(keys=keys, args=[*args, ticket])]
        except Exception as err:
            if nb and _maybe_applied(err):
                admitted = Admitted(tuple(budgets), tuple(rates), (), (), self._lease, ticket)
                raise MaybeAdmitted(admitted) from err
            raise
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
            holder=self._lease,
            ticket=ticket,
        )

    async def settle(self, admitted: Admitted, outcome: Settlement) -> None:
        """Reserved → spent with the real cost; expired counters stay absent."""
        deltas = rate_deltas(admitted, outcome)
        if not admitted.budgets and not admitted.rates:
            return
        names = [b.name for b in admitted.budgets] + [r.name for r in admitted.rates]
        holder = admitted.holder or self._lease
        ticket = admitted.ticket or uuid.uuid4().hex
        keys = [self._prefix + name for name in names]
        keys += [holder, holder + ":tickets", f"{self._prefix}settled:{ticket}"]
        args = [len(admitted.budgets), outcome.cost, *(b.amount for b in admitted.budgets)]
        only = "1" if outcome.only_if_admitted else "0"
        await self._settle(keys=keys, args=[*args, *deltas, SETTLED_TTL, ticket, only])

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
        """Stop beating; a replica that settled everything leaves no lease behind."""
        task, self._maintainer = self._maintainer, None
        if task is not None:
            self._closing = True
            await cancel_and_wait(task)
            with contextlib.suppress(Exception):  # best effort: sweepers handle the rest
                if not await self._redis.hlen(self._lease):
                    await self._redis.zrem(self._replicas, self.replica)
        await self._redis.aclose()
