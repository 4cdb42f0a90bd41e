"""The production transport: one aiohttp connection pool per backend.

aiohttp's client was chosen by measurement (see ``bench/``): at high
concurrency it costs far less CPU per call than httpx's pool. Every aiohttp
and timeout exception is mapped to ``UpstreamError`` here, at the boundary,
so nothing above this module sees a foreign exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp

from tollhouse.config.schema import Timeouts
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers.base import UpstreamRequest

_READ_BUFSIZE = 1 << 20  # SSE lines (e.g. one big tool-call chunk) may be long


@contextmanager
def map_aiohttp_errors() -> Iterator[None]:
    """Translate aiohttp/timeout exceptions into the gateway's taxonomy."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as err:
        raise UpstreamError(ErrorType.TIMEOUT, "upstream timed out") from err
    except aiohttp.ClientPayloadError as err:
        raise UpstreamError(ErrorType.NETWORK, "upstream connection broke mid-response") from err
    except (aiohttp.ClientConnectionError, aiohttp.ClientOSError) as err:
        raise UpstreamError(
            ErrorType.NETWORK, f"cannot reach upstream: {type(err).__name__}"
        ) from err
    except aiohttp.ClientResponseError as err:
        raise UpstreamError(
            ErrorType.INVALID_RESPONSE, f"malformed upstream response: {err.message}"
        ) from err
    except aiohttp.ClientError as err:
        raise UpstreamError(
            ErrorType.NETWORK, f"upstream client error: {type(err).__name__}"
        ) from err


class HttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers  # case-insensitive already

    async def read(self) -> bytes:
        with map_aiohttp_errors():
            return await self._resp.read()

    async def iter_lines(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        while True:
            with map_aiohttp_errors():
                line = await content.readline()
            if not line:
                return
            yield line.rstrip(b"\r\n")

    async def aclose(self) -> None:
        self._resp.close()  # drops the connection if the body was not read to the end


class HttpTransport:
    """aiohttp pool for one backend; created inside the running loop (lifespan)."""

    def __init__(self, timeouts: Timeouts, max_connections: int) -> None:
        self._timeouts = timeouts
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300),
            read_bufsize=_READ_BUFSIZE,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            trust_env=True,  # honour HTTP(S)_PROXY: the reason to pick this client
        )
        self._whole = aiohttp.ClientTimeout(total=timeouts.read, connect=timeouts.connect)
        self._stream = aiohttp.ClientTimeout(
            connect=timeouts.connect, sock_read=timeouts.stream_idle
        )

    async def send(self, request: UpstreamRequest) -> HttpResponse:
        # A stream's headers (and first byte) may take as long as ``read``; after that the
        # per-read ``stream_idle`` bound applies between chunks. A whole answer gets ``read``.
        timeout = self._stream if request.stream else self._whole
        with map_aiohttp_errors():
            async with asyncio.timeout(self._timeouts.read if request.stream else None):
                resp = await self._session.request(
                    request.method,
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=timeout,
                )
        return HttpResponse(resp)

    async def aclose(self) -> None:
        await self._session.close()
