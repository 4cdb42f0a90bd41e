"""The HTTP server protocol: when response bytes leave for the socket.

uvicorn's protocol is driven in-process with a recording transport, so what is
checked is exactly the sequence of ``write`` calls the socket would get: the
head and body of an answer in one write, a stream's parts each as soon as the
application yields, and a complete answer written before the application's own
epilogue (and the sinks after it) runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from tollhouse.server import GatewayHttpProtocol

REQUEST = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class Recorder(asyncio.Transport):
    """A transport that keeps every write (and whether it was closed)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.open_after_answer = False  # still open once the application was done

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


App = Callable[[Any, Any, Any], Awaitable[None]]


async def drive(make_app: Callable[[Recorder], App], request: bytes = REQUEST) -> Recorder:
    """Feed ``request`` to a fresh protocol running ``make_app(transport)``; return the
    transport once the application is done."""
    transport = Recorder()
    config = uvicorn.Config(
        make_app(transport), lifespan="off", log_level="warning", access_log=False
    )
    config.load()
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    protocol.data_received(request)
    for task in list(protocol.tasks):
        await task
    await asyncio.sleep(0)  # the next loop turn: anything still buffered is written
    transport.open_after_answer = not transport.closed
    protocol.connection_lost(None)  # the client hangs up (uvicorn then closes)
    return transport


def head(status: int = 200, length: int | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


async def test_an_answer_is_one_write_sent_before_the_app_returns() -> None:
    """Head and body leave together, and before the application's code after its last
    ``send`` runs: the client is not kept waiting for the epilogue."""
    seen_after_send: list[list[bytes]] = []

    def make_app(transport: Recorder) -> App:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send(head(length=11))
            await send({"type": "http.response.body", "body": b'{"ok":true}'})
            seen_after_send.append(list(transport.writes))  # no await since the send

        return app

    transport = await drive(make_app)
    (written,) = seen_after_send
    assert len(written) == 1, written
    assert written[0].startswith(b"HTTP/1.1 200 OK\r\n") and written[0].endswith(b'{"ok":true}')
    assert transport.writes == written and transport.open_after_answer  # kept alive


async def test_stream_parts_are_written_as_the_app_yields() -> None:
    """A stream's head and first part go out together; each later part as soon as the
    application waits for more, not held back to the end."""
    while_open: list[int] = []

    def make_app(transport: Recorder) -> App:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send(head())
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
            while_open.append(len(transport.writes))  # nothing yet: held for this turn
            await asyncio.sleep(0)  # the application waits for its next part
            while_open.append(len(transport.writes))
            await send({"type": "http.response.body", "body": b"two", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        return app

    transport = await drive(make_app)
    assert while_open == [0, 1]  # head + "one" in one write, while the stream is still open
    first, rest = transport.writes[0], b"".join(transport.writes[1:])
    assert b"transfer-encoding: chunked" in first and first.endswith(b"3\r\none\r\n")
    assert rest == b"3\r\ntwo\r\n0\r\n\r\n"


async def test_connection_close_is_honoured_after_the_bytes() -> None:
    """A ``connection: close`` request gets its whole answer, then the socket closes."""

    def make_app(transport: Recorder) -> App:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send(head(length=2))
            await send({"type": "http.response.body", "body": b"{}"})

        return app

    request = REQUEST.replace(b"host: t\r\n", b"host: t\r\nconnection: close\r\n")
    transport = await drive(make_app, request)
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n{}")
    assert not transport.open_after_answer
