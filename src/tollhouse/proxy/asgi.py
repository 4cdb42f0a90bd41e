"""Small pure-ASGI helpers for the hot path (no Request/Response objects to build)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson

from tollhouse.errors import (
    ClientDisconnected,
    InvalidJSON,
    PayloadTooLarge,
    UnsupportedEncoding,
)

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
    """Read the whole body, refusing (413) anything larger than ``limit`` bytes and (415)
    a compressed one. A client that leaves before the end of its body raises
    ``ClientDisconnected``: the part that arrived is not a request it made."""
    for name, value in scope["headers"]:  # one pass for both headers (the hot path)
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            shown = value[:32].decode("latin-1")
            raise UnsupportedEncoding(
                f"request bodies with Content-Encoding '{shown}' are not supported; send the "
                "JSON uncompressed"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# How deep a request body's arrays and objects may nest. orjson reads up to 1024 levels
# but writes at most 254, and the gateway writes every body again (to the upstream, into
# a cache key); the margin covers the levels a translation adds (Anthropic's content
# blocks). Real requests, tool schemas included, stay far below it.
MAX_DEPTH = 128


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidJSON(f"request body is not valid JSON: {err}") from None
    # Only a body with that many brackets can nest that deep: two C-speed scans spare
    # the walk to nearly every request.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise InvalidJSON(f"request body nests arrays and objects more than {MAX_DEPTH} deep")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` has containers nested more than ``limit`` deep (no recursion:
    the point is to survive what would exhaust it)."""
    if not isinstance(value, dict | list):
        return False
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                pending.append((child, depth + 1))
    return False


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
