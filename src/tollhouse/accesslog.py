"""The access log sink: one JSON line per request, built from the UsageEvent.

Lines go to the ``tollhouse.access`` logger so operators route them with the
usual logging config; the CLI sends them to stdout. The event holds no secrets
(keys appear by alias only), so neither does the line.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
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

    def flush(self) -> None:
        """Write out lines the handlers still hold: the app calls this last at shutdown,
        because uvicorn ends a SIGTERMed process by re-raising the signal, so neither
        the handlers' timer nor ``logging.shutdown`` gets another chance."""
        for handler in self._log.handlers:
            handler.flush()


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches, off the request path.

    ``StreamHandler`` writes and flushes per record: a write syscall per request.
    Leaving the batching to the stream's own buffer is not enough, because
    ``PYTHONUNBUFFERED=1`` (common in container images, and set by the benchmark)
    makes stdout write through on every call. So lines collect in a list here,
    and a daemon thread writes them in one call every ``interval`` seconds;
    ``close``, which ``logging.shutdown`` calls at exit, writes what is left. A
    line appears within ``interval``. If the stream stalls (a blocked pipe) and
    ``max_pending`` lines pile up, the caller writes them itself: the same
    back-pressure a plain handler gives, instead of unbounded memory.
    """

    def __init__(self, stream: TextIO, interval: float = 0.25, max_pending: int = 10_000) -> None:
        super().__init__(stream)
        self._message_only = logging.Formatter("%(message)s")
        self.setFormatter(self._message_only)
        self._pending: deque[str] = deque()  # append and popleft are thread-safe
        self._max_pending = max_pending
        self._writing = threading.Lock()  # orders batches; held while the stream writes
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
        """Queue what ``emit`` would write for a record whose message is ``line``."""
        pending = self._pending
        pending.append(line + self.terminator)
        if len(pending) >= self._max_pending:
            self.flush_now()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def flush(self) -> None:
        """Write what is queued now (``emit`` never calls this per record, as
        ``StreamHandler.emit`` would)."""
        self.flush_now()

    def flush_now(self) -> None:
        """Write every queued line in one call, then flush the stream."""
        with self._writing:
            pending = self._pending
            lines = [pending.popleft() for _ in range(len(pending))]  # later lines wait
            try:
                if lines:
                    self.stream.write("".join(lines))
                super().flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": f"{len(lines)} access lines"}))

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush_now()

    def close(self) -> None:
        self._stop.set()
        self.flush_now()
        super().close()
