"""The access log sink: one JSON line per request, built from the UsageEvent.

Lines go to the ``tollhouse.access`` logger so operators route them with the
usual logging config; the CLI sends them to stdout. The event holds no secrets
(keys appear by alias only), so neither does the line.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TextIO

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
    """The sink. Lines go through ``logging`` unless only the CLI's own handler could
    see them (see ``BatchingStreamHandler.sole_target``): then they are written to it
    directly, skipping the LogRecord, caller lookup and handler dispatch that cost
    about as much as building the line itself."""

    name = "access_log"

    def __init__(self, log: logging.Logger = logger) -> None:
        self._log = log

    def __call__(self, event: UsageEvent) -> None:
        log = self._log
        if not log.isEnabledFor(logging.INFO):
            return
        line = orjson.dumps(record(event)).decode()
        handler = BatchingStreamHandler.sole_target(log)
        if handler is not None:
            handler.write_line(line)
        else:
            log.info(line)


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that does not flush after every line.

    ``StreamHandler`` flushes per record: one write syscall per request. Here
    lines collect in the stream's buffer and a daemon thread flushes it every
    ``interval`` seconds (and ``close``, which ``logging.shutdown`` calls at exit,
    flushes what is left), so a line appears within ``interval`` and costs no
    syscall of its own on the request path.
    """

    def __init__(self, stream: TextIO, interval: float = 0.25) -> None:
        super().__init__(stream)
        self._message_only = logging.Formatter("%(message)s")
        self.setFormatter(self._message_only)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True,
                                        name="tollhouse-access-log")  # fmt: skip
        self._thread.start()

    @classmethod
    def sole_target(cls, log: logging.Logger) -> BatchingStreamHandler | None:
        """The handler a line for ``log`` can be written to without a LogRecord.

        Only when nothing else could observe the record: this is the logger's one
        handler, with its own message-only formatter, and no filter or propagation
        to other handlers. Any other logging setup an operator makes gets the
        normal path.
        """
        handlers = log.handlers
        if len(handlers) != 1 or log.propagate or log.filters:
            return None
        handler = handlers[0]
        if (
            type(handler) is not cls
            or handler.filters
            or handler.level > logging.INFO
            or handler.formatter is not handler._message_only
        ):
            return None
        return handler

    def write_line(self, line: str) -> None:
        """What ``emit`` would write for a record whose message is ``line``."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            try:
                self.stream.write(line + self.terminator)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": line}))

    def flush(self) -> None:
        """Per-record flushes are skipped; ``flush_now`` does the real one."""

    def flush_now(self) -> None:
        super().flush()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush_now()

    def close(self) -> None:
        self._stop.set()
        self.flush_now()
        super().close()
