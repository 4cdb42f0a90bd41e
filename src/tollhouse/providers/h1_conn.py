"""One upstream HTTP/1.1 connection and the response its parser fills.

``Conn`` is the asyncio protocol: httptools calls it back as bytes arrive and it
writes straight into the current ``H1Response`` (status, headers, body chunks),
waking the task that waits on it; it also owns the connection's timers (read
timeout, then the silence allowed between a stream's reads). The two are one
unit: the connection touches the response's buffers directly, which is why they
live together. Pools and the transport are in ``tollhouse.providers.h1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, cast

import httptools  # httptools ships its own type information (py.typed)

from tollhouse.errors import ErrorType, UpstreamError

if TYPE_CHECKING:
    from tollhouse.providers.h1 import Pool

_HIGH_WATER: Final = 1 << 20  # a stream with more than this buffered unread pauses the socket
_PARSER_ERRORS: Final = (httptools.HttpParserError, httptools.HttpParserUpgrade)
_BROKE: Final = "upstream connection broke mid-response"
_SILENT: Final = "upstream closed the connection before answering"
_CLOSED: Final = "upstream response was closed"


class Conn(asyncio.Protocol):
    """One keep-alive connection; the parser's callbacks fill the current response."""

    __slots__ = (
        "closed", "got_bytes", "headers", "idle", "keep", "last", "owns_slot", "parser", "paused",
        "pool", "resp", "reused", "skip", "timer", "transport", "used_at",
    )  # fmt: skip
    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.resp: H1Response | None = None
        self.headers: dict[str, str] = {}  # the current response's (a plain dict)
        self.timer: asyncio.TimerHandle | None = None
        self.idle = 0.0  # stream_idle once a stream's headers are in; 0 while ``read`` applies
        self.last = self.used_at = 0.0
        self.closed = self.got_bytes = self.keep = self.owns_slot = False
        self.paused = self.reused = self.skip = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owns_slot = True
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.idle:
            self.last = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except _PARSER_ERRORS as err:
            self.fail(
                UpstreamError(ErrorType.INVALID_RESPONSE, f"malformed upstream response: {err}")
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead()
        resp = self.resp
        if resp is None:
            return
        headers = resp.headers
        if (
            resp.status
            and "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "")
        ):
            self.on_message_complete()  # a body without a length ends at EOF
        else:
            self.fail(UpstreamError(ErrorType.NETWORK, _BROKE if self.got_bytes else _SILENT))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.resp is None:
            raise ConnectionError("unsolicited bytes on an idle connection")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        prev = headers.get(key)
        headers[key] = text if prev is None else f"{prev}, {text}"

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        status = self.parser.get_status_code()
        if status < 200:  # an interim 1xx answer: the real one follows
            self.skip = True
            self.headers.clear()
            return
        resp.status = status
        self.keep = self.parser.should_keep_alive()
        if resp._stream:  # from now on only the silence between reads is bounded
            if self.timer is not None:
                self.timer.cancel()
            loop = self.pool.loop
            self.idle = self.pool.timeouts.stream_idle
            self.last = loop.time()
            self.timer = loop.call_later(self.idle, self._on_timer)
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is not None:
            resp._chunks.append(body)
            resp._size += len(body)
            if resp._stream and not resp._want_all:
                if resp._size > _HIGH_WATER and not self.paused:
                    self.paused = True
                    self.transport.pause_reading()
                resp._wake()

    def on_message_complete(self) -> None:
        if self.skip:
            self.skip = False
            return
        resp = self.resp
        if resp is None:
            return
        self.resp = resp._conn = None
        resp._done = True
        resp._wake()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    def start(self, resp: H1Response, data: bytes) -> None:
        self.resp = resp
        resp.headers = self.headers = {}
        self.got_bytes = False
        self.idle = 0.0
        self.timer = self.pool.loop.call_later(self.pool.timeouts.read, self._on_timer)
        self.transport.write(data)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.last = self.pool.loop.time()
            self.transport.resume_reading()

    def _on_timer(self) -> None:
        self.timer = None
        if self.idle:
            left = self.idle if self.paused else self.last + self.idle - self.pool.loop.time()
            if left > 0:  # data arrived since the timer was armed (or we stopped reading)
                self.timer = self.pool.loop.call_later(left, self._on_timer)
                return
        self.fail(UpstreamError(ErrorType.TIMEOUT, "upstream timed out"))

    def fail(self, err: UpstreamError) -> None:
        """End the current response with ``err`` and close the connection."""
        resp = self.resp
        if resp is not None:
            self.resp = resp._conn = None
            resp._error = err
            resp._wake()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self._dead()
            self.transport.abort()

    def _dead(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.owns_slot:
            self.owns_slot = False
            self.pool.conns.discard(self)
            self.pool.free_slot()


class H1Response:
    """An upstream answer: ``status`` and ``headers`` (lower-case keys) are in; the body streams."""

    __slots__ = (
        "_chunks", "_conn", "_done", "_error", "_size", "_stream", "_waiter", "_want_all",
        "headers", "status",
    )  # fmt: skip

    def __init__(self, conn: Conn, stream: bool) -> None:
        self.status = 0
        self.headers: Mapping[str, str] = {}  # set by Conn.start
        self._conn: Conn | None = conn
        self._stream = stream
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = self._want_all = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        self._want_all = True
        if self._conn is not None:
            self._conn.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._take()

    def iter_lines(self) -> _Lines:
        """Body lines without ``\\r\\n``/``\\n``, yielded as the data arrives."""
        return _Lines(self)

    async def aclose(self) -> None:
        """Idempotent; a response not read to the end closes its connection."""
        conn = self._conn
        if conn is not None:
            self._conn = conn.resp = None
            conn.close()
        if not self._done and self._error is None:
            self._error = UpstreamError(ErrorType.NETWORK, _CLOSED)
        self._wake()
        self._chunks.clear()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    def _wake(self) -> None:
        fut = self._waiter
        if fut is not None:
            self._waiter = None
            if not fut.done():
                fut.set_result(None)

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:  # only after aclose() or a failure, which set ``_error``
            raise self._error or UpstreamError(ErrorType.NETWORK, _CLOSED)
        fut = conn.pool.loop.create_future()
        self._waiter = fut
        try:
            await fut
        except asyncio.CancelledError:  # the connection is mid-response: not reusable
            self._waiter = None
            await self.aclose()
            raise


class _Lines:
    """Async iterator over a response's lines; handles lines split across reads."""

    __slots__ = ("_i", "_lines", "_pending", "_resp")

    def __init__(self, resp: H1Response) -> None:
        self._resp = resp
        self._lines: list[bytes] = []
        self._i = 0
        self._pending: list[bytes] = []  # the unterminated tail, possibly over many reads

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        resp = self._resp
        while True:
            if self._i < len(self._lines):
                line = self._lines[self._i]
                self._i += 1
                return line[:-1] if line.endswith(b"\r") else line
            if resp._chunks:
                self._split(resp._take())
            elif resp._error is not None:
                raise resp._error
            elif resp._done:
                if not self._pending:
                    raise StopAsyncIteration
                self._lines, self._i = [b"".join(self._pending)], 0
                self._pending.clear()
            else:
                await resp._wait()

    def _split(self, data: bytes) -> None:
        if b"\n" not in data:
            if data:
                self._pending.append(data)
            return
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        self._lines, self._i = lines, 0
