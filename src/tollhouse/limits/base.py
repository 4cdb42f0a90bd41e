"""The counter contract every limits backend fulfils (memory for one process, Redis for many).

The backends know nothing about keys, teams or prices: they do atomic
arithmetic on opaque counter names. Deciding *which* counters apply to a
request, their limits and their windows is ``tollhouse.limits.policy``'s job.

Money is counted in integer nano-USD (1e-9 USD) so Redis can add it
atomically (``INCRBY``) and no float is ever summed; amounts are rounded *up*
to the next nano-USD, so a budget can only be over-counted, never under.

``admit`` is all-or-nothing: either every budget and every rate counter has
room for its amount and all of them are incremented, or nothing changes and
the first counter that had no room is reported. That single atomic step is
what keeps concurrent requests from overshooting a budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

NANO = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    """Reserve ``amount`` nano-USD against counter ``name`` whose cap is ``limit``."""

    name: str  # e.g. "budget:key:abc123:d:20261123" — unique per scope, entity and window
    limit: int  # nano-USD
    amount: int  # nano-USD, the worst-case cost of the request
    ttl: int  # seconds the counter must live (until its window ends, plus a margin)


@dataclass(frozen=True, slots=True)
class RateCharge:
    """Add ``amount`` (1 request, or N tokens) to counter ``name`` whose cap is ``limit``."""

    name: str  # e.g. "rate:key:abc123:rpm:29463240" (window = unix minute)
    limit: int
    amount: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Admitted:
    """Everything was incremented. ``rate_counts[i]`` is counter i's value after the increment;
    ``budget_totals[i]`` is spent + reserved of budget i after the reservation. ``holder``
    names where the reservations are held (Redis: the admitting replica's lease), so
    any replica can settle them; ``ticket`` names this admission, so a settlement sent
    again (its first reply lost) is applied once."""

    budgets: tuple[BudgetCharge, ...]
    rates: tuple[RateCharge, ...]
    budget_totals: tuple[int, ...]
    rate_counts: tuple[int, ...]
    holder: str = ""
    ticket: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was incremented: ``kind`` ("budget" or "rate") counter ``index`` had no room.
    ``current`` is that counter's value (spent + reserved for budgets) at the time."""

    kind: str
    index: int
    current: int


@dataclass(frozen=True, slots=True)
class BudgetState:
    spent: int  # nano-USD settled
    reserved: int  # nano-USD held by requests in flight


@dataclass(frozen=True, slots=True)
class Settlement:
    """How an admitted request ended: its real cost and, per rate counter, the real amount
    (e.g. the actual tokens instead of the estimate; requests stay 1)."""

    cost: int  # nano-USD actually spent (0 for a request that cost nothing)
    rate_amounts: Sequence[int] = field(default_factory=tuple)
    # Undo an admission whose reply was lost, if (and only if) it was applied:
    only_if_admitted: bool = False


class MaybeAdmitted(Exception):
    """An admission failed in a way that leaves unknown whether the backend applied it
    (a reply lost to a dropped connection). ``admitted`` names what it would have
    reserved, so a ``Settlement(only_if_admitted=True)`` can give it back if it was."""

    def __init__(self, admitted: Admitted) -> None:
        super().__init__("the admission may have been applied")
        self.admitted = admitted


class LimitsBackend(Protocol):
    async def admit(
        self, budgets: Sequence[BudgetCharge], rates: Sequence[RateCharge]
    ) -> Admitted | Refused:
        """Atomically check every counter and, only if all have room, increment all of them.

        Room means: for a budget, ``spent + reserved + amount <= limit``; for a rate counter,
        ``count + amount <= limit``. Counters that do not exist start at zero and are created
        with their ``ttl``.
        """
        ...

    async def settle(self, admitted: Admitted, outcome: Settlement) -> None:
        """Release each budget's reservation and add the real cost to its spend; move each rate
        counter by (real amount - charged amount). Never fails a counter for being over."""
        ...

    async def budget_states(self, names: Sequence[str]) -> list[BudgetState]:
        """Current spend and reservations (zeros for counters that do not exist)."""
        ...

    async def rate_counts(self, names: Sequence[str]) -> list[int]:
        """Current rate counter values (0 for counters that do not exist)."""
        ...

    async def seed_spent(self, name: str, spent: int, ttl: int) -> bool:
        """Set a budget's spend if (and only if) the counter does not exist yet; return whether
        it was set. Used to recover spend from the ledger after a restart without
        double-counting when several replicas start against one Redis."""
        ...

    async def ping(self) -> float:
        """Round-trip time in seconds (0 for memory); raises if unreachable."""
        ...

    async def start(self) -> None:
        """Begin background upkeep (Redis: this replica's heartbeat and the sweep that
        releases the reservations of replicas that died); a no-op where there is none."""
        ...

    async def aclose(self) -> None: ...
