"""A do-nothing TCP relay: the floor of what any proxy hop costs on this machine.

It parses nothing and forwards bytes both ways on one upstream connection per
client connection, so its latency is only the extra hop: one more process to
wake, two more socket reads and writes. ``bench.run`` measures it beside the
gateway at concurrency 1, so the gateway's added latency can be read against
what the machine charges any proxy (after an idle wait, notably: a process woken
after 50 ms of silence runs its first fraction of a millisecond several times
slower than a busy one on a virtual machine).

    python -m bench.relay --port 9500 --upstream-port 9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import cast

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self._port = upstream_port
        self._pending: list[bytes] = []
        self._upstream: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        client = cast(asyncio.Transport, transport)
        self._connecting = asyncio.ensure_future(self._connect(client))

    async def _connect(self, client: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(client), "127.0.0.1", self._port
            )
        except OSError:
            client.close()
            return
        self._upstream = upstream
        for data in self._pending:
            upstream.write(data)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upstream is not None:
            self._upstream.close()


async def serve(port: int, client: Callable[[], asyncio.Protocol]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def run_proxy(prog: str, doc: str | None, client: Callable[[int], asyncio.Protocol]) -> None:
    """``--port P --upstream-port U``: serve ``client(U)`` per connection on P, on uvloop
    (shared with ``bench/floor_proxy.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, lambda: client(args.upstream_port)))


def main() -> None:
    run_proxy("python -m bench.relay", __doc__, _Client)


if __name__ == "__main__":
    main()
