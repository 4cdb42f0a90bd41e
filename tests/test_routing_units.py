"""Deployment health and group ordering as units: what leaves rotation and comes back."""

from __future__ import annotations

import random

from tollhouse.accounting.pricing import PriceBook
from tollhouse.config import parse_config
from tollhouse.routing.health import COOLED_DOWN, DEGRADED, HEALTHY
from tollhouse.routing.router import Router


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(clock: Clock) -> Router:
    config = parse_config({
        "backends": [{"name": "x", "provider": "mock"}, {"name": "y", "provider": "mock"}],
        "models": [{"name": "g", "strategy": "priority", "cooldown": {"period": 10},
                    "deployments": [{"backend": "x", "model": "a"},
                                    {"backend": "y", "model": "b", "priority": 1}]}],
    }, environ={})  # fmt: skip
    return Router(config, PriceBook(), environ={}, clock=clock)


def test_zero_remaining_upstream_quota_is_skipped_for_a_moment() -> None:
    clock = Clock()
    group = router(clock).resolve("g")
    first, second = group.deployments
    rng = random.Random(1)
    assert group.order(rng)[0] is first
    first.health.upstream_remaining(0, 5000)  # the upstream said: no requests left
    assert group.order(rng) == [second]
    clock.now += 1.5
    assert group.order(rng)[0] is first  # back by itself


def test_states_healthy_degraded_cooled_and_back() -> None:
    clock = Clock()
    dep = router(clock).resolve("g").deployments[0]
    assert dep.health.state() == HEALTHY
    dep.health.failed(rate_limited=False, retry_after=None)
    assert dep.health.state() == DEGRADED and dep.health.available()
    dep.health.failed(rate_limited=True, retry_after=None)
    assert dep.health.state() == COOLED_DOWN and not dep.health.available()
    assert dep.health.cooldowns == {"rate_limit": 1}
    clock.now += 10.1
    assert dep.health.available() and dep.health.state() == DEGRADED
    clock.now += 61  # the failures leave the window
    assert dep.health.state() == HEALTHY


def test_a_group_with_every_deployment_out_still_serves_the_soonest_back() -> None:
    clock = Clock()
    group = router(clock).resolve("g")
    first, second = group.deployments
    first.health.cool_down("rate_limit", 30)
    second.health.cool_down("rate_limit", 5)
    assert group.order(random.Random(0)) == [second, first]
