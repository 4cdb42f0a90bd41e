"""Deployment health and group ordering as units: what leaves rotation and comes back."""

from __future__ import annotations

import random
import sys
import threading
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest

from tollhouse.accounting.pricing import PriceBook
from tollhouse.config import parse_config
from tollhouse.config.schema import CooldownConfig
from tollhouse.metrics.routing_state import RoutingCollector
from tollhouse.routing.health import COOLED_DOWN, DEGRADED, HEALTHY, DeploymentHealth
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


def test_a_failure_degrades_for_one_window_and_a_cool_down_starts_a_fresh_one() -> None:
    """Degraded means a failed call within ``window`` (60 s by default), counted from the
    failure; the window cleared by a cool-down forgets it; reading the state changes
    nothing."""
    clock = Clock()
    health = router(clock).resolve("g").deployments[0].health
    health.failed(rate_limited=False, retry_after=None)
    clock.now += 59.9
    health.succeeded(0.1)
    calls = list(health.calls)
    assert health.state() == DEGRADED and list(health.calls) == calls
    clock.now += 0.2
    assert health.state() == HEALTHY
    for _ in range(4):  # 4 of 5 failed: cooled down, the window starts again
        health.failed(rate_limited=False, retry_after=None)
    assert health.state() == COOLED_DOWN and not health.calls
    clock.now += 10
    assert health.state() == HEALTHY


class Unwalkable(deque[tuple[float, bool]]):
    """A window of calls that fails a test if anything iterates over it."""

    def __iter__(self) -> Iterator[tuple[float, bool]]:
        raise AssertionError("the whole window of calls was walked")


def test_a_failure_counts_the_window_without_walking_it() -> None:
    """The failure rate is judged on every failed call. Counting the window's failures
    then walked every call in it: during an outage at thousands of requests/s (a 60 s
    window of hundreds of thousands of calls) each failed request cost milliseconds of
    the loop. The count is kept as calls come and leave, and stays exact."""
    clock = Clock()
    policy = CooldownConfig(failure_rate=0.5, min_calls=10, window=10, period=5)
    health = DeploymentHealth(policy, clock, calls=Unwalkable())
    for _ in range(4):  # 4 failures, then the window moves past them
        health.failed(rate_limited=False, retry_after=None)
    clock.now += 5
    for _ in range(6):
        health.succeeded(0.1)
    clock.now += 5.5  # the 4 failures have left the window, the 6 successes have not
    for _ in range(3):
        health.failed(rate_limited=False, retry_after=None)
    assert health.failures == 3 and len(health.calls) == 9
    assert health.state() == DEGRADED  # 3 of 9, under min_calls: no cool-down yet
    health.failed(rate_limited=False, retry_after=None)  # 4 of 10: still under half
    assert health.available()
    health.failed(rate_limited=False, retry_after=None)  # 5 of 11: still not over half
    assert health.available() and health.failures == 5
    health.failed(rate_limited=False, retry_after=None)  # 6 of 12: not over half
    assert health.available()
    health.failed(rate_limited=False, retry_after=None)  # 7 of 13: over half
    assert not health.available() and health.cooldowns == {"failure_rate": 1}
    assert health.failures == 0 and not health.calls


class _Finalized:
    """A reference cycle with a finalizer: only a garbage collection frees it."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        for _ in range(20):  # a finalizer long enough for the other thread to take over
            pass


def test_a_scrape_in_a_worker_thread_reads_routing_state_while_the_loop_changes_it() -> None:
    """/metrics renders in a worker thread (so a scrape never stalls the loop) while the
    loop records calls. The routing collector walked each deployment's window of calls
    and its cooldown counts as they changed: under load, scrapes failed with "deque
    mutated during iteration" (found by bench/ledger_saturation.py), and copying a dict
    with ``tuple(d.items())`` let the loop in when the copy's allocations started a garbage
    collection whose finalizers run Python code (CI, in the full suite). A tiny switch
    interval makes the threads interleave as a busy process does; the cycles with a
    finalizer made here are the garbage a long-running gateway has."""
    clock = Clock()
    routes = router(clock)
    health = routes.resolve("g").deployments[0].health
    for _ in range(50_000):
        health.succeeded(0.1)
    registry = CollectorRegistry()
    registry.register(RoutingCollector(lambda: routes, lambda: None))
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                generate_latest(registry)
            except Exception as err:
                errors.append(err)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(300_000):
            health.succeeded(0.1)
            reason = f"reason-{i % 1000}"
            health.cooldowns.pop(reason, None)  # its size changes on every step, not 1,000
            health.cooldowns[reason] = i
            _Finalized()
            if errors:
                break
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert (
        registry.get_sample_value(
            "llm_deployment_state", {"model": "g", "backend": "x", "upstream_model": "a"}
        )
        == HEALTHY
    )
