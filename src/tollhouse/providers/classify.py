"""Shared pieces of error classification: what an HTTP status means on its own.

Adapters refine this with what their wire format says in the body (an OpenAI
``code`` of ``context_length_exceeded``, an Anthropic ``overloaded_error``...).
"""

from __future__ import annotations

from collections.abc import Mapping

from tollhouse.errors import ErrorType

_CONTEXT_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
)
_FILTER_HINTS = ("content_filter", "content_policy", "content management policy", "safety")


def by_status(status: int) -> ErrorType:
    """The error type an HTTP status implies when the body says nothing more."""
    if status == 429:
        return ErrorType.RATE_LIMIT
    if status in (401, 403):
        return ErrorType.AUTH
    if status in (408, 504):
        return ErrorType.TIMEOUT
    if status == 413:
        return ErrorType.CONTEXT_LENGTH
    if status == 404:
        return ErrorType.NOT_FOUND
    if 400 <= status < 500:
        return ErrorType.BAD_REQUEST
    if status >= 500:
        return ErrorType.SERVER_ERROR
    if 300 <= status < 400:  # a redirect, which the gateway does not follow
        return ErrorType.INVALID_RESPONSE
    return ErrorType.UNKNOWN


def refine(base: ErrorType, text: str) -> ErrorType:
    """Narrow a 4xx classification using words the providers put in their messages/codes."""
    if base not in (ErrorType.BAD_REQUEST, ErrorType.CONTEXT_LENGTH, ErrorType.NOT_FOUND):
        return base
    low = text.lower()
    if any(h in low for h in _CONTEXT_HINTS):
        return ErrorType.CONTEXT_LENGTH
    if any(h in low for h in _FILTER_HINTS):
        return ErrorType.CONTENT_FILTER
    return base


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asked us to wait (``retry-after-ms`` wins over ``retry-after``)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None  # HTTP-date form: rare from LLM APIs; ignoring it only loses a hint
    return None


def header_number(headers: Mapping[str, str], name: str) -> float | None:
    """A numeric header such as ``x-ratelimit-remaining-requests``, or ``None``."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
