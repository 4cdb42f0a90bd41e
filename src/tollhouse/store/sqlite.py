"""SQLite specifics: which URLs name a file, the busy timeout, and the ledger's appender,
which writes batches from the event loop's own thread.

Why not append through the engine's driver (aiosqlite)? That driver runs each call in a
thread of its own, and the thread needs the GIL back after every call into SQLite and
for every hand-off to and from the loop. While the loop is saturated with requests,
each of those waits for the loop to let go, so the ledger wrote ~1,400-2,100 rows/s
while one process served ~4,200-4,600 requests/s, its backlog grew without bound, and
the waits showed in the requests' p99 (bench/ledger_saturation.py, bench/README.md).

The appender's inserts run on the loop's thread, in slices of a few statements between
yields to the loop (SLICE_SHARE says how long), so no GIL changes hands. Only the
commit leaves the loop, on the appender's own thread: with SQLite's default
``synchronous=FULL`` it waits for the disk (fsync), which must not hold the loop, and
the WAL checkpoints SQLite runs at commit run there too. The connection stays open
between batches so its prepared statements and schema are reused.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import URL

# How long a connection waits for another's write transaction (the ledger, the roll-up
# fold, the admin API) to end, rather than failing at once.
SQLITE_BUSY_TIMEOUT_MS = 5000
# The appender waits in short sleeps on the loop, never inside SQLite: a busy handler
# there would hold the loop.
BUSY_STEP = 0.005
# How long the appender runs between two yields to the loop (a 16-row statement takes
# 0.1-0.3 ms of SQLite): SLICE_SHARE of the time the loop just spent on other work,
# within [SLICE_MIN, SLICE_MAX], and at most SLICE_ROWS rows. An idle loop comes back at
# once, so the ledger holds it in short stretches (bench/stall_bench.py counts the
# longer ones); a saturated loop is away for milliseconds, and short slices would then
# write fewer rows than the requests make (bench/ledger_saturation.py).
SLICE_MIN = 0.0003
SLICE_MAX = 0.001
SLICE_SHARE = 0.25
SLICE_ROWS = 128


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


class Appender:
    """One connection to the SQLite file ``path`` that runs write transactions of many
    statements from the loop's thread and commits them on a thread of its own."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._commit: Future[None] | None = None  # the last commit, maybe still running

    async def append(self, statements: Iterable[tuple[str, Any, int]]) -> None:
        """Run ``statements`` (SQL text, its parameters, the rows it inserts) in one write
        transaction: all of them are committed, or none is (the error is raised).

        ``statements`` may be a generator: it is advanced only between statements, so a
        caller can build each one's parameters inside the appender's slices.
        """
        await self._committed()
        conn = self._connection()
        await _begin(conn)
        try:
            rows, until = 0, time.perf_counter() + SLICE_MIN
            for sql, params, count in statements:
                if rows + count > SLICE_ROWS or time.perf_counter() >= until:
                    until = await _yield_slice()
                    rows = 0
                conn.execute(sql, params)
                rows += count
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        assert self._thread is not None
        # From here the appender's thread owns the connection: a caller cancelled while
        # the commit runs stops waiting, and the next append waits for it (_committed).
        self._commit = self._thread.submit(_commit, conn)
        await asyncio.wrap_future(self._commit)

    async def aclose(self) -> None:
        """Close the connection once its last commit has ended."""
        await self._committed()
        conn, self._conn = self._conn, None
        thread, self._thread = self._thread, None
        if conn is not None and thread is not None:
            # Closing the last connection to the file checkpoints the WAL: not on the loop.
            await asyncio.wrap_future(thread.submit(conn.close))
            thread.shutdown(wait=False)

    async def _committed(self) -> None:
        commit = self._commit
        if commit is not None and not commit.done():
            await asyncio.wait([asyncio.wrap_future(commit)])

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=0")  # never wait inside SQLite: see BUSY_STEP
            conn.execute("PRAGMA foreign_keys=ON")  # as the engine's connections (engine.py)
            self._conn = conn
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="tollhouse-ledger-commit")
        return self._conn


async def _yield_slice() -> float:
    """Yield to the loop; return when the next slice must end (see SLICE_SHARE)."""
    paused = time.perf_counter()
    await asyncio.sleep(0)
    resumed = time.perf_counter()
    return resumed + min(SLICE_MAX, max(SLICE_MIN, SLICE_SHARE * (resumed - paused)))


async def _begin(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` (the write lock now, so no statement after it waits), retried
    on the loop while another connection writes."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as err:
            busy = err.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # SQLITE_BUSY_* too
            if not busy or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(BUSY_STEP)


def _commit(conn: sqlite3.Connection) -> None:
    """On the appender's thread: ``COMMIT``, or roll back if it fails (a full disk)."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
