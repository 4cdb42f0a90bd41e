"""The background drainer: records finished calls in batches, off the caller's path.

Why: measured inside real SDK calls, recording one event where the call ends
cost 20-40 µs, not the ~6 µs it costs in a tight loop. The SDK's own work
(pydantic, httpx) pushes the recorder's objects out of the CPU caches between
calls, so every metric series, the Decimal cost and the event are fetched
from memory again. Recording the calls of the last ``INTERVAL`` in one batch
keeps those objects warm from one event to the next, so the caller pays only
for queueing its call and the whole process pays less in all.

Nothing is lost or approximate: a Prometheus scrape drains the queue before
it reads (``core._Drain``), ``Instrumentation.flush()`` drains on demand, an
exit handler drains at interpreter exit, and other sinks (OpenTelemetry, a
user callback) see every event within ``INTERVAL``.

One daemon thread serves every ``Instrumentation`` in the process. It sleeps
on an ``Event`` until a call is queued, waits ``INTERVAL`` so the batch can
grow, and flushes each instrumentation that asked. The thread starts on first
use, and again in a forked child (threads do not survive ``fork``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Protocol

INTERVAL = 0.1  # seconds a finished call may wait for its batch
log = logging.getLogger("tollhouse.instrument")


class Flushable(Protocol):
    def flush(self) -> None: ...


class Drainer:
    """Flushes instrumentations that queued calls, ``INTERVAL`` after they asked."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._dirty: set[Flushable] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Held by every flush, so a scrape that drains waits for a batch another
        # thread has taken off the queue but not yet recorded. Reentrant: a sink
        # may itself make an instrumented call.
        self.lock = threading.RLock()

    def schedule(self, target: Flushable) -> None:
        """Flush ``target`` soon. The caller guarantees one call per queued batch."""
        self._dirty.add(target)
        if self._thread is None:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="tollhouse-drain", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.interval)
            self.flush_all()

    def flush_all(self) -> None:
        """Flush every instrumentation that asked (the thread's work; also at exit)."""
        dirty = self._dirty
        while dirty:
            # Taken before the pop, so a fork never lands between taking a target
            # off the set and flushing it (the child would never flush it).
            with self.lock:
                try:
                    target = dirty.pop()
                except KeyError:
                    return
                try:
                    target.flush()
                except Exception:  # sinks' own errors are caught in flush; this is a bug
                    log.exception("drain_failed")  # logged, and the thread lives on

    def _before_fork(self) -> None:
        self.lock.acquire()  # no batch is half recorded in the child's copy of memory

    def _after_fork_in_parent(self) -> None:
        self.lock.release()

    def _after_fork(self) -> None:
        """In a forked child: the thread is gone; start another if work is queued."""
        self.lock = threading.RLock()
        self._thread = None
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        if self._dirty:
            self._start()
            self._wake.set()


drainer = Drainer()
atexit.register(drainer.flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=drainer._before_fork,
        after_in_parent=drainer._after_fork_in_parent,
        after_in_child=drainer._after_fork,
    )
