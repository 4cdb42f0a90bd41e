"""Balancing strategies: order a group's available deployments for one request.

Each returns every candidate, best first, so retries and skips walk down the
same list. Pure functions of the candidates' state (and a random source).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Protocol


class Candidate(Protocol):
    @property
    def weight(self) -> float: ...

    @property
    def priority(self) -> int: ...

    @property
    def latency(self) -> float | None: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def unit_price(self) -> Decimal | None: ...


def weighted(items: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    """Weighted random without replacement: traffic splits in proportion to weights."""
    pool = list(items)
    out: list[Candidate] = []
    while pool:
        pick = rng.choices(range(len(pool)), weights=[c.weight for c in pool])[0]
        out.append(pool.pop(pick))
    return out


def least_in_flight(items: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    shuffled = list(items)
    rng.shuffle(shuffled)  # ties broken at random, not by config order
    return sorted(shuffled, key=lambda c: c.in_flight)


def lowest_latency(items: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    """Unmeasured deployments first (so each gets measured), then by moving average."""
    shuffled = list(items)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda c: (c.latency is not None, c.latency or 0.0))


def lowest_cost(items: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    """Cheapest known price first; unpriced deployments last."""
    shuffled = list(items)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda c: (c.unit_price is None, c.unit_price or Decimal(0)))


def priority(items: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    """Lowest priority number first; weighted random among equals."""
    levels = sorted({c.priority for c in items})
    out: list[Candidate] = []
    for level in levels:
        out += weighted([c for c in items if c.priority == level], rng)
    return out


STRATEGIES: dict[str, Callable[[Sequence[Candidate], random.Random], list[Candidate]]] = {
    "weighted": weighted,
    "least_in_flight": least_in_flight,
    "lowest_latency": lowest_latency,
    "lowest_cost": lowest_cost,
    "priority": priority,
}
