"""The one place a ``GatewayError`` becomes an OpenAI-style error response."""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.errors import GatewayError
from tollhouse.proxy.asgi import Headers, send_bytes


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


async def send_error(send: Any, err: GatewayError, headers: Headers) -> None:
    extra = [(k.encode(), v.encode()) for k, v in err.headers.items()]
    await send_bytes(send, err.status, error_body(err), headers + extra)


def stream_error_event(err: GatewayError) -> bytes:
    """An error inside an already-started SSE stream (OpenAI sends the same shape)."""
    return b"data: " + error_body(err) + b"\n\n"
