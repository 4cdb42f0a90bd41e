"""The catalog: every metric tollhouse exports, defined once.

Name, type, labels, buckets and help live here and nowhere else.
``docs/metrics.md`` is generated from this module (``python -m
tollhouse.metrics.docs``) and a test fails when the two differ; dashboards and
rules may only name metrics listed here.

Conventions: base units (seconds, USD), counters end in ``_total``; ``llm_`` is
traffic, ``tollhouse_`` is the gateway's own internals. Label values are
bounded: models, backends and providers come from the config, ``key`` is an
alias (never a raw key), ``error_type`` is the closed taxonomy in
``tollhouse.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

# OpenTelemetry GenAI advice for gen_ai.client.operation.duration, extended to minutes
# because long generations and reasoning models routinely take that long.
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
    10.24, 20.48, 40.96, 81.92, 163.84, 327.68,
)  # fmt: skip
# OTel GenAI advice for time to first chunk, plus a 30 s tail for slow queues.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
)  # fmt: skip
# OTel GenAI advice for time per output token.
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The gateway's own overhead: tens of microseconds to tens of milliseconds.
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

TRAFFIC = ("model", "backend", "provider")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    scrape_time: bool = False  # computed from a snapshot when scraped, not updated per request


REQUESTS = MetricSpec(
    "llm_requests_total", "counter",
    "Client requests, one per request whatever its fate (rejections included).",
    (*TRAFFIC, "key", "team", "outcome", "status_class"),
)  # fmt: skip
REQUEST_DURATION = MetricSpec(
    "llm_request_duration_seconds", "histogram",
    "Whole request duration as the gateway saw it, from first byte in to last byte out.",
    (*TRAFFIC, "outcome", "stream"), DURATION_BUCKETS,
)  # fmt: skip
UPSTREAM_DURATION = MetricSpec(
    "llm_upstream_duration_seconds", "histogram",
    "Duration of each upstream call (one per attempt: retries and fallbacks add calls).",
    TRAFFIC, DURATION_BUCKETS,
)  # fmt: skip
UPSTREAM_REQUESTS = MetricSpec(
    "llm_upstream_requests_total", "counter",
    "Upstream calls, one per attempt, by the model group, backend and provider that made them; "
    "error_type is none for a call that succeeded.",
    (*TRAFFIC, "outcome", "error_type"),
)  # fmt: skip
RETRIES = MetricSpec(
    "llm_retries_total", "counter",
    "Attempts that failed and were retried within their model group, by backend and error type.",
    ("backend", "error_type"),
)  # fmt: skip
FALLBACKS = MetricSpec(
    "llm_fallbacks_total", "counter",
    "Requests that fell back from one model group to another; outcome is the request's.",
    ("from_model", "to_model", "outcome"),
)  # fmt: skip
COOLDOWNS = MetricSpec(
    "llm_cooldowns_total", "counter",
    "Times a deployment left rotation, by backend and reason (rate_limit, failure_rate, budget).",
    ("backend", "reason"), scrape_time=True,
)  # fmt: skip
DEPLOYMENT_STATE = MetricSpec(
    "llm_deployment_state", "gauge",
    "Each deployment's state: 0 healthy, 1 degraded (recent failures), 2 cooled down.",
    ("model", "backend", "upstream_model"), scrape_time=True,
)  # fmt: skip
BACKEND_UP = MetricSpec(
    "llm_backend_up", "gauge",
    "Active health probe result per backend (1 up, 0 down); only backends with health_check.",
    ("backend",), scrape_time=True,
)  # fmt: skip
CACHE_REQUESTS = MetricSpec(
    "llm_cache_requests_total", "counter",
    "Cache lookups by public model and result (hit or miss); bypassed requests are not counted.",
    ("model", "result"),
)  # fmt: skip
CACHE_SAVED_TOKENS = MetricSpec(
    "llm_cache_saved_tokens_total", "counter",
    "Tokens a cache hit did not spend (what the cached answer used), by type.",
    ("model", "type"),
)  # fmt: skip
CACHE_SAVED_COST = MetricSpec(
    "llm_cache_saved_usd_total", "counter",
    "US dollars cache hits did not spend (the cached answer's original cost).",
    ("model",),
)  # fmt: skip
OVERHEAD = MetricSpec(
    "llm_gateway_overhead_seconds", "histogram",
    "The gateway's own time per request: request duration minus time waiting on the upstream.",
    ("stream",), OVERHEAD_BUCKETS,
)  # fmt: skip
TTFT = MetricSpec(
    "llm_time_to_first_token_seconds", "histogram",
    "Streaming requests: time from request start to the first chunk carrying generated content.",
    TRAFFIC, TTFT_BUCKETS,
)  # fmt: skip
TPOT = MetricSpec(
    "llm_time_per_output_token_seconds", "histogram",
    "Streaming requests: time per generated token after the first one.",
    TRAFFIC, TPOT_BUCKETS,
)  # fmt: skip
TOKENS = MetricSpec(
    "llm_tokens_total", "counter",
    "Tokens by type (input, output, cached_input, cache_write_input, reasoning) and source "
    "(reported by the provider, or estimated by the gateway when none was reported). "
    "cached_input and cache_write_input are parts of input; reasoning is part of output.",
    (*TRAFFIC, "key", "team", "type", "source"),
)  # fmt: skip
COST = MetricSpec(
    "llm_cost_usd_total", "counter",
    "Cost in US dollars, computed exactly (Decimal) per request from the model's price.",
    (*TRAFFIC, "key", "team"),
)  # fmt: skip
UNPRICED = MetricSpec(
    "llm_unpriced_requests_total", "counter",
    "Requests whose model has no known price: their cost is NOT in llm_cost_usd_total.",
    TRAFFIC,
)  # fmt: skip
ERRORS = MetricSpec(
    "llm_errors_total", "counter",
    "Failed requests by error type (closed taxonomy), including rejected bad input.",
    (*TRAFFIC, "error_type"),
)  # fmt: skip
IN_FLIGHT = MetricSpec(
    "llm_requests_in_flight", "gauge",
    "Requests currently being served, by public model.",
    ("model",),
)  # fmt: skip
RATELIMIT_REQUESTS = MetricSpec(
    "llm_upstream_ratelimit_remaining_requests", "gauge",
    "Requests the upstream said remain in its current window (x-ratelimit-remaining-requests).",
    ("backend", "upstream_model"),
)  # fmt: skip
RATELIMIT_TOKENS = MetricSpec(
    "llm_upstream_ratelimit_remaining_tokens", "gauge",
    "Tokens the upstream said remain in its current window (x-ratelimit-remaining-tokens).",
    ("backend", "upstream_model"),
)  # fmt: skip
BUILD_INFO = MetricSpec(
    "tollhouse_build_info", "gauge",
    "Always 1; the labels say which tollhouse and Python are running.",
    ("version", "python"),
)  # fmt: skip
SINK_ERRORS = MetricSpec(
    "tollhouse_sink_errors_total", "counter",
    "Usage events a sink (metrics, log, ledger) failed to take; should stay at zero.",
    ("sink",),
)  # fmt: skip

REJECTIONS = MetricSpec(
    "llm_rejections_total", "counter",
    "Requests the gateway refused before calling a provider: reason is auth, auth_throttled "
    "(an address refused for failing authentication too often), permission, budget or "
    "rate_limit; scope is what refused (key, key_model, team, user, end_user, "
    "backend, provider, or none).",
    ("reason", "scope"),
)  # fmt: skip
BUDGET_LABELS = ("scope", "entity", "period")
BUDGET_LIMIT = MetricSpec(
    "llm_budget_limit_usd", "gauge", "The budget's cap in USD for its current period.",
    BUDGET_LABELS, scrape_time=True,
)  # fmt: skip
BUDGET_SOFT_LIMIT = MetricSpec(
    "llm_budget_soft_limit_usd", "gauge",
    "The budget's soft limit (alert threshold) in USD, for budgets that set one.",
    BUDGET_LABELS, scrape_time=True,
)  # fmt: skip
BUDGET_SPEND = MetricSpec(
    "llm_budget_spend_usd", "gauge",
    "Spend settled against the budget in its current period, in USD.",
    BUDGET_LABELS, scrape_time=True,
)  # fmt: skip
BUDGET_RESERVED = MetricSpec(
    "llm_budget_reserved_usd", "gauge",
    "Worst-case cost reserved by requests in flight against the budget, in USD.",
    BUDGET_LABELS, scrape_time=True,
)  # fmt: skip
BUDGET_REMAINING = MetricSpec(
    "llm_budget_remaining_usd", "gauge",
    "Limit minus spend minus reservations, in USD (never below zero).",
    BUDGET_LABELS, scrape_time=True,
)  # fmt: skip
BUDGET_RESET = MetricSpec(
    "llm_budget_reset_seconds", "gauge", "Seconds until the budget's period ends and it resets.",
    BUDGET_LABELS, scrape_time=True,
)  # fmt: skip
RATE_LABELS = ("scope", "entity", "kind")
RATE_LIMIT = MetricSpec(
    "llm_ratelimit_limit", "gauge",
    "A gateway rate limit per minute: kind is requests or tokens.",
    RATE_LABELS, scrape_time=True,
)  # fmt: skip
RATE_REMAINING = MetricSpec(
    "llm_ratelimit_remaining", "gauge",
    "What remains of a gateway rate limit in the current minute.",
    RATE_LABELS, scrape_time=True,
)  # fmt: skip
LEDGER_BACKLOG = MetricSpec(
    "tollhouse_ledger_backlog", "gauge",
    "Usage rows waiting to be written to the spend ledger; grows while the store is down.",
    scrape_time=True,
)  # fmt: skip
LEDGER_WRITTEN = MetricSpec(
    "tollhouse_ledger_rows_written_total", "counter", "Rows written to the spend ledger.",
    scrape_time=True,
)  # fmt: skip
LEDGER_ERRORS = MetricSpec(
    "tollhouse_ledger_write_errors_total", "counter",
    "Failed ledger batch writes (each batch is retried; no row is dropped).",
    scrape_time=True,
)  # fmt: skip

STORE_LATENCY = MetricSpec(
    "tollhouse_store_latency_seconds", "gauge",
    "Round trip of a trivial query to the store (SQLite or PostgreSQL), measured at scrape.",
    scrape_time=True,
)  # fmt: skip
LIMITS_LATENCY = MetricSpec(
    "tollhouse_limits_latency_seconds", "gauge",
    "Round trip to the budget and rate-limit counters, measured at scrape: a Redis PING "
    "for backend=redis, 0 for the in-process memory backend.",
    ("backend",), scrape_time=True,
)  # fmt: skip

CATALOG: tuple[MetricSpec, ...] = (
    REQUESTS, REQUEST_DURATION, UPSTREAM_DURATION, OVERHEAD, TTFT, TPOT, TOKENS, COST,
    UNPRICED, ERRORS, IN_FLIGHT, RATELIMIT_REQUESTS, RATELIMIT_TOKENS, BUILD_INFO, SINK_ERRORS,
    REJECTIONS, BUDGET_LIMIT, BUDGET_SOFT_LIMIT, BUDGET_SPEND, BUDGET_RESERVED, BUDGET_REMAINING,
    BUDGET_RESET, RATE_LIMIT, RATE_REMAINING, LEDGER_BACKLOG, LEDGER_WRITTEN, LEDGER_ERRORS,
    UPSTREAM_REQUESTS, RETRIES, FALLBACKS, COOLDOWNS, DEPLOYMENT_STATE, BACKEND_UP, CACHE_REQUESTS,
    CACHE_SAVED_TOKENS, CACHE_SAVED_COST, STORE_LATENCY, LIMITS_LATENCY,
)  # fmt: skip


# The gateway's own admin API and authentication (``tollhouse.admin``).
ADMIN_REQUESTS = MetricSpec(
    "tollhouse_admin_requests_total", "counter",
    "Admin API requests by route template, method and status class (rejections included).",
    ("route", "method", "status_class"),
)  # fmt: skip
AUTH_FAILURES = MetricSpec(
    "tollhouse_auth_failures_total", "counter",
    "Failed authentications by surface (proxy or admin) and reason (missing, invalid, "
    "blocked, expired; for the admin API also disabled when no admin key is configured).",
    ("surface", "reason"),
)  # fmt: skip
AUTH_THROTTLED = MetricSpec(
    "tollhouse_auth_throttled_total", "counter",
    "Requests refused (429) because their address failed authentication too often recently.",
    ("surface",),
)  # fmt: skip
UNROUTED = MetricSpec(
    "tollhouse_unrouted_requests_total", "counter",
    "Requests to a path the gateway does not serve (answered 404), by method: clients "
    "calling an endpoint it lacks (/v1/completions, say) or a wrong base URL. The path "
    "is in the gateway's log (route_not_found).",
    ("method",),
)  # fmt: skip
LOOP_LAG = MetricSpec(
    "tollhouse_event_loop_lag_seconds", "gauge",
    "How late the event loop woke a periodic probe, last measurement: time callbacks wait.",
)  # fmt: skip
ADMIN_CATALOG = (ADMIN_REQUESTS, AUTH_FAILURES, AUTH_THROTTLED, UNROUTED, LOOP_LAG)
CATALOG = (*CATALOG, *ADMIN_CATALOG)


def exported_names(spec: MetricSpec) -> tuple[str, ...]:
    """Every series name a spec produces in the text exposition."""
    if spec.kind == "histogram":
        return (f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count")
    if spec.kind == "counter":
        return (spec.name,)
    return (spec.name,)
