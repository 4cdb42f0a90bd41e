"""The ledger writer: every UsageEvent becomes one durable row, off the request path.

The sink only appends a row dict to an in-memory queue (O(1), no I/O, no
await). A background task owned by the app's lifespan writes the queue in
batches, each one multi-row INSERT in one transaction, so the database sees a
few statements per second however many requests there are.

Rows are never dropped on a database error: the failed batch stays at the head
of the queue and is retried every ``retry_interval`` until it is written, while
new rows keep queueing behind it (``backlog`` shows the growth). Loss is
bounded to rows still queued when the process is killed, or when ``stop``'s
final timeout expires with the database still unreachable; ``stop`` logs that
count. A commit whose acknowledgement is lost (connection dropped after the
database committed) is retried too, and must not count twice: each row carries an
``event_id`` (this writer's random prefix and the event's place in its queue, the
same on every attempt), and the insert skips ids already present. ``request_id``
cannot serve: clients choose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import sqlalchemy as sa

from tollhouse.accounting.event import UsageEvent
from tollhouse.config.schema import LedgerConfig
from tollhouse.store.ledger import LedgerRepo
from tollhouse.tasks import cancel_and_wait

log = logging.getLogger("tollhouse.ledger")

_BIGINT_MAX = 2**63 - 1

# A writer that has fallen behind (a saturated process, an outage just over) writes up to
# this many batches in one transaction: a transaction's cost is mostly fixed (begin, a
# commit that waits for the disk, the hand-offs between threads, which a saturated loop
# makes slow), so batch-sized transactions would cap the write rate below the request
# rate and the backlog would never shrink while the load lasts.
CATCH_UP_BATCHES = 16


def cost_to_pusd(cost: Decimal | None) -> int | None:
    """USD to integer pico-USD, half to even; exact for prices with <= 6 decimals per 1M tokens."""
    if cost is None:
        return None
    return int(cost.scaleb(12).to_integral_value(ROUND_HALF_EVEN))


def event_row(event: UsageEvent, event_id: str) -> dict[str, Any]:
    """The ledger row for ``event`` (keys are ``tables.LEDGER_COLUMNS``), known by
    ``event_id``, which must be unique in the ledger.

    Values are made storable here, once, because a row the database refuses
    would block every batch behind it: text loses NUL characters and lone
    surrogates (PostgreSQL rejects both; ``end_user`` comes from the client),
    integers are clamped to BIGINT.
    """
    usage = event.usage
    cost = cost_to_pusd(event.cost)
    return {
        "request_id": _text(event.request_id),
        "ts": datetime.fromtimestamp(event.started_at, UTC),
        "operation": _text(event.operation),
        "key_alias": _text(event.key),
        "team": _text(event.team),
        "user": _text(event.user),
        "end_user": _text(event.end_user),
        "model": _text(event.model),
        "backend": _text(event.backend),
        "provider": _text(event.provider),
        "upstream_model": _text(event.upstream_model),
        "stream": event.stream,
        "outcome": event.outcome.value,
        "status": event.status,
        "error_type": None if event.error_type is None else event.error_type.value,
        "input_tokens": _bigint(usage.input),
        "output_tokens": _bigint(usage.output),
        "cached_input_tokens": _bigint(usage.cached_input),
        "cache_write_input_tokens": _bigint(usage.cache_write_input),
        "reasoning_tokens": _bigint(usage.reasoning),
        "token_source": event.token_source.value,
        "cost_pusd": None if cost is None else _bigint(cost),
        "price_source": None if event.price_source is None else _text(event.price_source),
        "duration_ms": event.duration * 1000.0,
        "upstream_ms": _ms(event.upstream_duration),
        "ttft_ms": _ms(event.ttft),
        "event_id": event_id,
    }


# Rows made between two yields to the event loop. A whole 500-row batch is ~9 ms of
# Python on this project's benchmark machine (more when caches are cold), which every
# request arriving meanwhile would wait out; 64 rows keep each stretch well under 1 ms.
ROWS_PER_SLICE = 64


async def rows_of(events: Sequence[UsageEvent], prefix: str, first: int) -> list[dict[str, Any]]:
    """``event_row`` of each event, in order, the i-th known as ``prefix`` + ``first + i``
    in hex, letting the loop serve requests every ``ROWS_PER_SLICE`` rows
    (``bench/stall_bench.py`` measures the stalls this avoids)."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(events), ROWS_PER_SLICE):
        if start:
            await asyncio.sleep(0)
        rows.extend(
            event_row(e, f"{prefix}{first + start + i:x}")
            for i, e in enumerate(events[start : start + ROWS_PER_SLICE])
        )
    return rows


def _text(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
    return value


def _bigint(value: int) -> int:
    if -_BIGINT_MAX <= value <= _BIGINT_MAX:  # the usual case, without two calls
        return value
    return max(-_BIGINT_MAX, min(value, _BIGINT_MAX))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _describe(err: Exception) -> str:
    """The driver's own message, without the SQL (or parameters) SQLAlchemy appends."""
    cause: BaseException = err
    if isinstance(err, sa.exc.DBAPIError) and err.orig is not None:
        cause = err.orig
    lines = str(cause).splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:300]


class LedgerWriter:
    """A sink that queues one row per event and a task that writes them in batches.

    ``backlog``, ``written_total`` and ``write_errors_total`` are plain ints
    for the metrics layer to read at scrape time.
    """

    name = "ledger"

    def __init__(self, ledger: LedgerRepo, config: LedgerConfig | None = None) -> None:
        config = config or LedgerConfig()
        self._ledger = ledger
        self._batch_size = config.batch_size
        self._flush_interval = config.flush_interval
        self._retry_interval = config.retry_interval
        self._queue: deque[UsageEvent] = deque()
        self._wake = asyncio.Event()  # set when a full batch is waiting, or on stop
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Event ids: 64 random bits per writer, then the event's place in this writer's
        # queue (rows written so far + its index), the same on every retry of its batch.
        self._id_prefix = secrets.token_hex(8) + "-"
        self._dequeued = 0
        self.written_total = 0
        self.write_errors_total = 0

    @property
    def backlog(self) -> int:
        """Rows queued and not yet written."""
        return len(self._queue)

    def __call__(self, event: UsageEvent) -> None:
        """The sink: queue the event, wake the writer once a batch is full. Never awaits;
        the event becomes a row in the writer, off the request path."""
        self._queue.append(event)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the ledger writer is already running")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    # The timeout is the writer's own: when it runs out, stop cancels, counts and logs the loss.
    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Write every queued row, retrying failures for up to ``timeout`` seconds.

        Rows still queued when the timeout expires are logged as lost and stay
        in ``backlog`` (a later ``start`` would write them).
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()  # stop() itself was cancelled: leave no writer running unowned
            raise
        if not done:
            await cancel_and_wait(task)
            log.error(
                "ledger_rows_lost rows=%d timeout=%s: the database stayed unreachable "
                "while stopping; these usage rows were not written",
                self.backlog,
                timeout,
            )
        else:
            task.result()  # re-raise what stopped the writer, if anything did (a bug)

    async def _run(self) -> None:
        """Full batches go as soon as they fill; everything goes every ``flush_interval``."""
        loop = asyncio.get_running_loop()
        flush_at = loop.time() + self._flush_interval
        while True:
            if not self._stopping:
                await self._wait_for_batch(flush_at - loop.time())
            everything = self._stopping or loop.time() >= flush_at
            await self._write_queued(everything)
            if everything:
                if self._stopping:
                    return  # _write_queued(everything=True) only returns with the queue empty
                flush_at = loop.time() + self._flush_interval

    async def _wait_for_batch(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a full batch is waiting or stop() is called."""
        self._wake.clear()
        if seconds <= 0 or len(self._queue) >= self._batch_size:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _write_queued(self, everything: bool) -> None:
        """Write full batches (and, if ``everything``, the rows queued at the call); retry,
        never drop.

        Rows that arrive while a periodic flush is writing wait for the next flush
        (or for a batch to fill): chasing them would keep the writer busy under
        steady traffic, each transaction carrying only the few rows that came in
        during the previous one (measured: ~20 rows per transaction at 900 req/s
        instead of ~450), with the per-transaction cost (begin, commit, fsync,
        thread hand-offs) competing with requests for the event loop. Stopping
        writes until the queue is empty. A failed batch stays at the head of the
        queue, so rows are written in order. Behind by several batches, a write takes
        up to CATCH_UP_BATCHES of them at once.
        """
        failures = 0
        owed = len(self._queue) if everything else 0  # the tail this flush must write
        while self._queue and (
            len(self._queue) >= self._batch_size or owed > 0 or (self._stopping and everything)
        ):
            batches = min(CATCH_UP_BATCHES, len(self._queue) // self._batch_size)
            head = list(itertools.islice(self._queue, self._batch_size * max(1, batches)))
            batch = await rows_of(head, self._id_prefix, self._dequeued)
            try:
                await self._ledger.insert(batch)
            except Exception as err:  # any failure: keep the rows, report, retry
                failures += 1
                self.write_errors_total += 1
                log.warning(
                    "ledger_write_failed rows=%d backlog=%d attempt=%d retry_in=%s error=%s",
                    len(batch), self.backlog, failures, self._retry_interval, _describe(err),
                )  # fmt: skip
                await asyncio.sleep(self._retry_interval)
                continue
            owed -= len(batch)
            for _ in batch:
                self._queue.popleft()
            self._dequeued += len(batch)
            self.written_total += len(batch)
            if failures:
                log.info(
                    "ledger_write_recovered attempts=%d backlog=%d", failures + 1, self.backlog
                )
                failures = 0
