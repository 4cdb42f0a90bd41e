"""The lean HTTP/1.1 client: wire format, pooling, retries, timeouts and failure mapping.

Runs against the mock upstream and against tiny raw asyncio servers started inside each
test, which can misbehave on purpose (close idle connections, answer garbage, stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from bench.mock_upstream import MockUpstream
from tollhouse.config.schema import Timeouts
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers.base import Transport, UpstreamRequest
from tollhouse.providers.h1 import H1Response, H1Transport

FAST = Timeouts(connect=2.0, read=5.0, stream_idle=5.0)
OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body, or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


async def serve_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await read_request(reader) is not None:
        writer.write(OK)


class RawServer:
    """A loopback server on port 0 that runs ``handler`` per connection and counts them."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down; asyncio's stream callback would log a cancelled handler
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


def post(url: str, body: dict[str, Any] | None = None, *, stream: bool = False) -> UpstreamRequest:
    return UpstreamRequest(
        method="POST",
        url=url,
        headers={"authorization": "Bearer k", "content-type": "application/json"},
        body=orjson.dumps(body or {}),
        stream=stream,
    )


@contextlib.asynccontextmanager
async def client(timeouts: Timeouts = FAST, max_connections: int = 10, **kw: Any) -> Any:
    transport = H1Transport(timeouts, max_connections, **kw)
    try:
        yield transport
        for pool in transport._pools.values():  # at rest every slot is a live connection
            assert pool.count == len(pool.conns) <= max_connections
            assert not [fut for fut in pool.waiters if not fut.done()]
    finally:
        await transport.aclose()


async def fails(aw: Awaitable[object], error_type: ErrorType) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await aw
    assert info.value.error_type is error_type, info.value.message
    return info.value


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream(record=False) as up:
        yield up


def chat(up: MockUpstream, model: str = "m", *, stream: bool = False) -> UpstreamRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    if stream:
        body["stream"] = True
    return post(up.base_url + "/v1/chat/completions", body, stream=stream)


# -- the happy paths ------------------------------------------------------------------


async def test_json_round_trip_with_content_length(upstream: MockUpstream) -> None:
    async with client() as t:
        checked: Transport = t  # the seam the router plugs it into
        resp = await checked.send(chat(upstream))
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("application/json")
        assert int(resp.headers["content-length"]) > 0
        payload = orjson.loads(await resp.read())
        assert payload["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        await resp.aclose()
        await resp.aclose()  # idempotent


def test_built_outside_a_loop_and_used_in_one(upstream: MockUpstream) -> None:
    transport = H1Transport(FAST, 4)  # a config-time object: nothing loop-bound yet

    async def use() -> bytes:
        try:
            return await (await transport.send(chat(upstream))).read()
        finally:
            await transport.aclose()

    assert b"tok0" in asyncio.run(use())


async def test_request_wire_format_and_query_string() -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (req := await read_request(reader)) is not None:
            seen.append(req[0] + req[1])
            writer.write(OK)

    async with RawServer(echo) as server, client() as t:
        url = server.url + "?api-version=2024-06-01"
        resp = await t.send(post(url, {"a": 1}))
        assert await resp.read() == b'{"ok":true}'
        request = UpstreamRequest("POST", url, {"Host": "example.test", "x-a": "1"}, b"xyz")
        assert await (await t.send(request)).read() == b'{"ok":true}'
        resp = await t.send(UpstreamRequest("GET", f"http://127.0.0.1:{server.port}?q=1", {}, b""))
        await resp.read()
    first, second, third = seen
    lines = first.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions?api-version=2024-06-01 HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in lines
    for line in (b"content-length: 7", b"connection: keep-alive", b"accept-encoding: identity"):
        assert line in lines
    assert first.endswith(b'\r\n\r\n{"a":1}')
    assert second.lower().count(b"host:") == 1 and b"Host: example.test" in second
    assert b"content-length: 3\r\n" in second and second.endswith(b"\r\n\r\nxyz")
    assert third.startswith(b"GET /?q=1 HTTP/1.1\r\n")


async def test_header_with_line_break_is_refused() -> None:
    async with client() as t:
        request = UpstreamRequest("POST", "http://127.0.0.1:9/x", {"x": "a\r\nevil: 1"}, b"")
        await fails(t.send(request), ErrorType.UNKNOWN)


async def test_chunked_response_and_duplicate_headers() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while await read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Thing: a\r\nset-thing: b\r\n"
                b"\r\n5\r\nhello\r\n"
            )
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"6\r\n world\r\n0\r\n\r\n")

    async with RawServer(chunked) as server, client() as t:
        for _ in range(2):
            resp = await t.send(post(server.url))
            assert resp.headers["set-thing"] == "a, b"
            assert await resp.read() == b"hello world"
    assert server.connections == 1


async def test_interim_1xx_and_eof_delimited_body() -> None:
    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n")
        writer.write(b"\r\nok")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"the end")

    async with RawServer(odd) as server, client() as t:
        resp = await t.send(post(server.url))
        assert (resp.status, await resp.read()) == (201, b"ok")
        resp = await t.send(post(server.url))
        assert await resp.read() == b"until the end"
    assert server.connections == 1


async def test_stream_lines_arrive_as_they_are_sent() -> None:
    go_on = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        await go_on.wait()
        # the next line is split across chunks and writes, with a CRLF line ending
        for part in (b"da", b"ta: 2\r\n", b"\r\n", b"tail"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.write(b"0\r\n\r\n")
        await read_request(reader)

    async with RawServer(sse) as server, client() as t:
        resp = await t.send(post(server.url, stream=True))
        lines = resp.iter_lines()
        assert await asyncio.wait_for(anext(lines), 2) == b"data: 1"  # before the rest exists
        assert not go_on.is_set()
        go_on.set()
        rest = [line async for line in lines]
        assert rest == [b"", b"data: 2", b"", b"tail"]
        await resp.aclose()


async def test_mock_upstream_stream(upstream: MockUpstream) -> None:
    async with client() as t:
        for _ in range(3):
            resp = await t.send(chat(upstream, stream=True))
            assert resp.headers["content-type"].startswith("text/event-stream")
            data = [line async for line in resp.iter_lines() if line]
            assert len(data) == 1 + 3 + 1 + 1  # role, 3 words, finish, [DONE]
            assert data[-1] == b"data: [DONE]"
            await resp.aclose()
        assert t._pools and sum(p.count for p in t._pools.values()) == 1


async def test_stream_backpressure_pauses_reading() -> None:
    line = b"x" * 1023 + b"\n"

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        body = line * 4096  # 4 MiB
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await read_request(reader)

    async with RawServer(flood) as server, client() as t:
        resp = await t.send(post(server.url, stream=True))
        lines = resp.iter_lines()
        await anext(lines)
        await asyncio.sleep(0.2)
        conn = resp._conn
        assert conn is not None and conn.paused
        assert resp._size <= 3 << 20
        count = 1 + len([x async for x in lines])
        assert count == 4096
        await resp.aclose()


# -- the pool -------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with RawServer(serve_ok) as server, client() as t:
        for _ in range(20):
            resp = await t.send(post(server.url))
            assert await resp.read() == b'{"ok":true}'
            await resp.aclose()
    assert server.connections == 1


async def test_pool_limit_holds_under_concurrency() -> None:
    busy = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal busy, peak
        while await read_request(reader) is not None:
            busy += 1
            peak = max(peak, busy)
            await asyncio.sleep(0.02)
            busy -= 1
            writer.write(OK)

    async def one(t: H1Transport) -> bytes:
        resp = await t.send(post(server.url))
        return await resp.read()

    async with RawServer(slow) as server, client(max_connections=2) as t:
        results = await asyncio.gather(*(one(t) for _ in range(10)))
    assert results == [b'{"ok":true}'] * 10
    assert server.connections <= 2 and peak <= 2


async def test_pool_wait_is_bounded_by_connect_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await read_request(reader)

    timeouts = Timeouts(connect=0.2, read=5.0, stream_idle=5.0)
    async with RawServer(stall) as server, client(timeouts, max_connections=1) as t:
        first = asyncio.create_task(t.send(post(server.url)))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await fails(t.send(post(server.url)), ErrorType.TIMEOUT)
        assert 0.15 < time.monotonic() - started < 1.0
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_early_aclose_of_a_stream_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n")
        if n == 1:
            await read_request(reader)  # EOF once the client drops the stream
            closed.set()
        else:
            writer.write(b"0\r\n\r\n")
            await read_request(reader)

    async with RawServer(sse) as server, client() as t:
        resp = await t.send(post(server.url, stream=True))
        assert await anext(resp.iter_lines()) == b"data: 1"
        await resp.aclose()
        await asyncio.wait_for(closed.wait(), 2)
        resp = await t.send(post(server.url, stream=True))
        assert [line async for line in resp.iter_lines()] == [b"data: 1"]
    assert server.connections == 2


async def test_idle_connections_expire() -> None:
    async with RawServer(serve_ok) as server, client() as t:
        await (await t.send(post(server.url))).read()
        (pool,) = t._pools.values()
        pool.idle[0].used_at -= 61
        await (await t.send(post(server.url))).read()
    assert server.connections == 2


# -- stale connections and retries ----------------------------------------------------


@pytest.mark.parametrize("notice", [True, False], ids=["closed-while-idle", "closed-in-flight"])
async def test_a_closed_keep_alive_connection_is_not_reused_and_no_request_is_sent_twice(
    notice: bool,
) -> None:
    """Closed while idle: noticed, a fresh connection serves. Closed after reading the next
    request: a network error, not a silent second send; the upstream may have billed the
    first (it was sent twice before, and counted once)."""

    async def closer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (req := await read_request(reader)) is not None:
            server.requests.append(req[0])
            if n == 1 and len(server.requests) > 1:
                return  # the second request on the first connection: close, no answer
            writer.write(OK)
            if n == 1 and notice:
                return  # close right after the first answer

    async with RawServer(closer) as server, client() as t:
        assert await (await t.send(post(server.url))).read() == b'{"ok":true}'
        if notice:
            await asyncio.sleep(0.05)
            assert await (await t.send(post(server.url))).read() == b'{"ok":true}'
        else:
            err = await fails(t.send(post(server.url)), ErrorType.NETWORK)
            assert "before answering" in err.message
    assert server.connections == (2 if notice else 1)
    assert len(server.requests) == 2


async def test_no_retry_on_a_fresh_connection() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async with RawServer(rude) as server, client() as t:
        err = await fails(t.send(post(server.url)), ErrorType.NETWORK)
        assert "before answering" in err.message
    assert server.connections == 1


async def test_no_retry_once_the_answer_started() -> None:
    async def partial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    async with RawServer(partial) as server, client() as t:
        await (await t.send(post(server.url))).read()
        resp = await t.send(post(server.url))
        err = await fails(resp.read(), ErrorType.NETWORK)
        assert err.message == "upstream connection broke mid-response"
    assert server.connections == 1


async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client() as t:
        err = await fails(t.send(post(f"http://127.0.0.1:{port}/x")), ErrorType.NETWORK)
        assert err.message.startswith("cannot reach upstream")
        await fails(t.send(post("ftp://127.0.0.1/x")), ErrorType.NETWORK)


# -- timeouts, broken and malformed answers -------------------------------------------


async def test_read_timeout(upstream: MockUpstream) -> None:
    async with client(Timeouts(connect=2, read=0.3, stream_idle=5)) as t:
        started = time.monotonic()
        err = await fails(t.send(chat(upstream, "m-hang")), ErrorType.TIMEOUT)
        assert err.message == "upstream timed out"
        assert 0.25 < time.monotonic() - started < 1.5


async def test_read_timeout_covers_the_whole_body() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await read_request(reader)

    async with RawServer(stall) as server, client(Timeouts(read=0.3)) as t:
        started = time.monotonic()
        resp = await t.send(post(server.url))
        await fails(resp.read(), ErrorType.TIMEOUT)
        assert 0.25 < time.monotonic() - started < 1.5


async def test_stream_idle_timeout(upstream: MockUpstream) -> None:
    async with client(Timeouts(connect=2, read=5, stream_idle=0.2)) as t:
        resp = await t.send(chat(upstream, "m-hang-after-2", stream=True))
        seen: list[bytes] = []
        started = time.monotonic()

        async def drain() -> None:
            async for line in resp.iter_lines():
                seen.append(line)

        await fails(drain(), ErrorType.TIMEOUT)
        assert 0.15 < time.monotonic() - started < 1.5
        words = [line for line in seen if b'"content":"tok' in line]
        assert len(words) == 2
        await resp.aclose()


async def test_stream_dropped_mid_response(upstream: MockUpstream) -> None:
    async with client() as t:
        resp = await t.send(chat(upstream, "m-drop-after-2", stream=True))
        err = await fails(resp.read(), ErrorType.NETWORK)
        assert err.message == "upstream connection broke mid-response"


async def test_malformed_status_line() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 abc OK\r\n\r\n")
        await read_request(reader)

    async with RawServer(garbage) as server, client() as t:
        await fails(t.send(post(server.url)), ErrorType.INVALID_RESPONSE)


async def test_mock_malformed_body_is_just_bytes(upstream: MockUpstream) -> None:
    async with client() as t:
        resp = await t.send(chat(upstream, "m-malformed"))
        assert (resp.status, await resp.read()) == (200, b"{not json")


# -- cancellation and shutdown --------------------------------------------------------


@pytest.mark.parametrize("stage", ["headers", "body"])
async def test_cancellation_closes_the_connection(stage: str) -> None:
    gone = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            if stage == "body":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await read_request(reader)
            gone.set()
        else:
            writer.write(OK)
            await read_request(reader)

    async def call(t: H1Transport) -> bytes:
        resp: H1Response = await t.send(post(server.url))
        return await resp.read()

    async with RawServer(stall) as server, client(max_connections=1) as t:
        task = asyncio.create_task(call(t))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(gone.wait(), 2)
        assert await call(t) == b'{"ok":true}'  # the slot was given back
    assert server.connections == 2


async def test_transport_aclose_ends_open_streams() -> None:
    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n")
        await read_request(reader)

    async with RawServer(sse) as server:
        t = H1Transport(FAST, 4)
        resp = await t.send(post(server.url, stream=True))
        lines = resp.iter_lines()
        assert await anext(lines) == b"data: 1"
        await t.aclose()
        await fails(anext(lines), ErrorType.NETWORK)
        await fails(t.send(post(server.url)), ErrorType.NETWORK)


# -- TLS ------------------------------------------------------------------------------


def self_signed() -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and its key, as PEM (needs ``cryptography``)."""
    x509 = pytest.importorskip("cryptography.x509")
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "tollhouse-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem: bytes = cert.public_bytes(serialization.Encoding.PEM)
    return cert_pem, key_pem


async def test_tls(tmp_path: Any) -> None:
    cert, key = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    trusting = ssl.create_default_context(cadata=cert.decode())
    async with RawServer(serve_ok, server_ctx) as server:
        async with client(ssl_context=trusting) as t:
            for _ in range(3):
                assert await (await t.send(post(server.url))).read() == b'{"ok":true}'
        assert server.connections == 1
        async with client() as t:  # the system trust store does not know this certificate
            err = await fails(t.send(post(server.url)), ErrorType.NETWORK)
            assert "SSL" in err.message


# -- the same behaviour on uvloop, the gateway's production loop ----------------------

UVLOOP_CASES: dict[str, Callable[[MockUpstream], Awaitable[None]]] = {
    "json": test_json_round_trip_with_content_length,
    "wire": lambda _: test_request_wire_format_and_query_string(),
    "chunked": lambda _: test_chunked_response_and_duplicate_headers(),
    "1xx-eof": lambda _: test_interim_1xx_and_eof_delimited_body(),
    "sse": lambda _: test_stream_lines_arrive_as_they_are_sent(),
    "mock-stream": test_mock_upstream_stream,
    "backpressure": lambda _: test_stream_backpressure_pauses_reading(),
    "keep-alive": lambda _: test_keep_alive_reuses_one_connection(),
    "pool-limit": lambda _: test_pool_limit_holds_under_concurrency(),
    "pool-wait": lambda _: test_pool_wait_is_bounded_by_connect_timeout(),
    "early-close": lambda _: test_early_aclose_of_a_stream_closes_its_connection(),
    "stale-idle": lambda _: (
        test_a_closed_keep_alive_connection_is_not_reused_and_no_request_is_sent_twice(True)
    ),
    "stale-in-flight": lambda _: (
        test_a_closed_keep_alive_connection_is_not_reused_and_no_request_is_sent_twice(False)
    ),
    "no-retry": lambda _: test_no_retry_on_a_fresh_connection(),
    "refused": lambda _: test_connect_refused(),
    "read-timeout": test_read_timeout,
    "idle-timeout": test_stream_idle_timeout,
    "dropped": test_stream_dropped_mid_response,
    "malformed": lambda _: test_malformed_status_line(),
    "cancel-headers": lambda _: test_cancellation_closes_the_connection("headers"),
    "cancel-body": lambda _: test_cancellation_closes_the_connection("body"),
    "shutdown": lambda _: test_transport_aclose_ends_open_streams(),
}


@pytest.mark.parametrize("case", UVLOOP_CASES)
def test_under_uvloop(case: str, upstream: MockUpstream) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        await UVLOOP_CASES[case](upstream)

    uvloop.run(run())
