"""The HTTP server: uvicorn's httptools protocol, with each response written at once.

uvicorn writes a response's status line and headers in one ``write`` and its
body in another. On loopback and in VMs every write that reaches the peer is a
wake-up, so a small JSON answer costs two wake-ups instead of one; measured on
the benchmark machine this alone added ~0.1-0.3 ms per request. The wrapper
below collects the writes made during one event-loop iteration and hands them
to the socket together on the next, which is how the head and the body (or
the head and the first SSE chunk) leave in one segment. Nothing is held longer
than one loop iteration, so streaming stays chunk-by-chunk.

The last part of a response does not wait for that next iteration: it is
written as uvicorn completes the response, before the rest of the
application's coroutine and uvicorn's own bookkeeping run. Measured with the
gateway woken after a 50 ms upstream wait (when a VM runs everything several
times slower), that epilogue took ~65 µs of the ~120 µs between the gateway's
reply and its bytes leaving.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tollhouse.proxy.asgi import CLIENT_GONE, ON_CLIENT_GONE


class _CoalescingTransport:
    """Delegates to the real transport, batching writes within one loop iteration."""

    __slots__ = ("_buf", "_closing", "_loop", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._buf: list[bytes] = []
        self._closing = False

    def write(self, data: bytes) -> None:
        if not self._buf:
            self._loop.call_soon(self.flush)
        self._buf.append(data)

    def flush(self) -> None:
        """Hand what this loop iteration wrote to the socket (and close, if asked)."""
        if self._buf:
            data = b"".join(self._buf) if len(self._buf) > 1 else self._buf[0]
            self._buf.clear()
            if not self._real.is_closing():
                self._real.write(data)
        if self._closing:
            self._real.close()

    def close(self) -> None:
        if self._buf:
            self._closing = True  # close once the pending bytes are written
        else:
            self._real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with coalesced response writes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = _CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(wrapped)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        """Mark the request in progress, if any, as left by its client: the application
        records it as cancelled even when its answer was ready only afterwards (uvicorn
        drops that answer without telling it), and may have asked to be told at once
        (``server.on_disconnect: cancel``)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            scope = cast(dict[str, Any], cycle.scope)
            scope[CLIENT_GONE] = True
            told = scope.pop(ON_CLIENT_GONE, None)
            if told is not None:
                told()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """uvicorn calls this as the last body part is written: send the bytes now, not
        after the application's and uvicorn's epilogue has run (the sinks run later still,
        from ``call_soon``)."""
        transport = self.transport
        if isinstance(transport, _CoalescingTransport):
            transport.flush()
        super().on_response_complete()
