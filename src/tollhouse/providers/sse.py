"""Minimal Server-Sent Events framing shared by the stream translators."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    """Encode one ``data:`` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def split_field(line: bytes) -> tuple[bytes, bytes] | None:
    """Split an SSE line into (field, value); ``None`` for blank lines and comments."""
    if not line or line.startswith(b":"):
        return None
    name, sep, value = line.partition(b":")
    if not sep:
        return name, b""
    if value.startswith(b" "):
        value = value[1:]
    return name, value.rstrip(b"\r")
