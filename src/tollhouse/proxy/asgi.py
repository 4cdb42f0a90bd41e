"""Small pure-ASGI helpers for the hot path (no Request/Response objects to build)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson

from tollhouse.errors import InvalidJSON, PayloadTooLarge

Scope = dict[str, Any]
Message = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


# Set in a request's scope by the server (``tollhouse.server``) when the client's
# connection closed before the response was complete.
CLIENT_GONE = "tollhouse.client_gone"
# A callable the application may put in a request's scope; the server calls it (once, on
# the event loop) when that client's connection closes before the response is complete.
ON_CLIENT_GONE = "tollhouse.on_client_gone"


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


_ID_PREFIX = uuid.uuid4().hex[:12]  # unique per process; the counter makes ids unique within it
_ids = itertools.count(1)


def request_id(scope: Scope) -> str:
    """The caller's ``x-request-id`` if it is sane, else a fresh one (no syscall per request)."""
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and given.isascii():
        text = given.decode("ascii")
        if text.isprintable() and " " not in text:
            return text
    return f"{_ID_PREFIX}{next(_ids):010x}"


async def read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    """Read the whole body, refusing (413) anything larger than ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidJSON(f"request body is not valid JSON: {err}") from None


async def send_bytes(
    send: Any, status: int, body: bytes, headers: Headers, content_type: bytes = b"application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
