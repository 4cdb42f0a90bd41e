"""The access log sink: one JSON line per request, built from the UsageEvent.

Lines go to the ``tollhouse.access`` logger so operators route them with the
usual logging config; the CLI sends them to stdout. The event holds no secrets
(keys appear by alias only), so neither does the line.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from tollhouse.accounting.event import UsageEvent

logger = logging.getLogger("tollhouse.access")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def record(event: UsageEvent) -> dict[str, object]:
    """The access-log fields for one event (also used by tests)."""
    u = event.usage
    return {
        "ts": datetime.fromtimestamp(event.started_at, UTC).isoformat(timespec="milliseconds"),
        "event": "request",
        "request_id": event.request_id,
        "operation": event.operation,
        "model": event.model,
        "backend": event.backend,
        "provider": event.provider,
        "upstream_model": event.upstream_model,
        "key": event.key,
        "stream": event.stream,
        "outcome": event.outcome.value,
        "status": event.status,
        "error_type": event.error_type.value if event.error_type else None,
        "latency_ms": _ms(event.duration),
        "upstream_ms": _ms(event.upstream_duration),
        "overhead_ms": _ms(event.overhead),
        "ttft_ms": _ms(event.ttft),
        "tokens": {
            "input": u.input,
            "output": u.output,
            "cached_input": u.cached_input,
            "cache_write_input": u.cache_write_input,
            "reasoning": u.reasoning,
            "source": event.token_source.value,
        },
        # A string keeps the exact Decimal; JSON floats would round it.
        "cost_usd": None if event.cost is None else str(event.cost),
    }


class AccessLog:
    name = "access_log"

    def __init__(self, log: logging.Logger = logger) -> None:
        self._log = log

    def __call__(self, event: UsageEvent) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info(orjson.dumps(record(event)).decode())
