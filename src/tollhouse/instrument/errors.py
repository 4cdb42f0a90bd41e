"""SDK exceptions → the gateway's closed error taxonomy, at one boundary.

Library mode sees exceptions, not HTTP answers, so this module plays the part
the gateway's transport and adapters play: it maps what the ``openai`` and
``anthropic`` SDKs (and plain ``httpx``/``httpx2``/socket errors, for
``track()``) raise onto ``ErrorType``, reusing the adapters' own rules
(``classify.by_status``/``refine`` for OpenAI-style bodies,
``anthropic_stream.error_from`` for Anthropic ones), so a 429 is ``rate_limit``
and a context overflow ``context_length`` whichever way the call was made.

The tree it recognises, most specific first:

* cancellation (``asyncio.CancelledError``, ``GeneratorExit``,
  ``KeyboardInterrupt``) → outcome ``cancelled``;
* ``APITimeoutError`` (both SDKs), ``TimeoutError``, httpx ``TimeoutException``
  → ``timeout``;
* ``APIConnectionError``, ``ConnectionError``, httpx ``TransportError`` →
  ``network``;
* ``APIResponseValidationError``, and a ``JSONDecodeError`` (the SDKs raise one
  for a 2xx body that is not JSON) → ``invalid_response``;
* ``APIStatusError`` → from its status and body; an error *event* inside a
  stream (a 200 response) → from its body alone;
* anything else → ``unknown``.

The SDK modules are looked up in ``sys.modules`` rather than imported: an
exception from an SDK means that SDK is already loaded, and ``track()`` users
who never installed one pay nothing.

``status`` is the provider's HTTP status when there was one; otherwise the
status the gateway would have answered for that error type (504 timeout, 502
network, 499 cancelled before an answer), so ``status_class`` means the same in
both modes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

from tollhouse.accounting.event import Outcome
from tollhouse.errors import ErrorType, UpstreamError, UpstreamFailed
from tollhouse.providers import classify
from tollhouse.providers.anthropic_stream import error_from

CANCELLED_STATUS = 499  # nginx's "client closed request", as the gateway uses
_CANCELLATION = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)


@dataclass(frozen=True, slots=True)
class Failure:
    """How a call ended when it did not succeed."""

    outcome: Outcome
    error_type: ErrorType
    status: int


CANCELLED = Failure(Outcome.CANCELLED, ErrorType.CANCELLED, CANCELLED_STATUS)


def gateway_status(error_type: ErrorType) -> int:
    """The status the gateway answers for an upstream failure of this type."""
    return UpstreamFailed.from_upstream(UpstreamError(error_type, "")).status


def classify_exception(err: BaseException, *, started: bool = False) -> Failure:
    """Classify ``err``; ``started`` says a stream had already answered 200."""
    if isinstance(err, _CANCELLATION):
        return Failure(Outcome.CANCELLED, ErrorType.CANCELLED, 200 if started else CANCELLED_STATUS)
    kind, status = _sdk_kind(err)
    if kind is None:
        kind, status = _generic_kind(err)
    if status is None or status < 400:
        status = 200 if started else gateway_status(kind)
    return Failure(Outcome.ERROR, kind, status)


def _sdk_kind(err: BaseException) -> tuple[ErrorType | None, int | None]:
    root = type(err).__module__.partition(".")[0]
    sdk = sys.modules.get(root) if root in ("openai", "anthropic") else None
    if sdk is None:
        return None, None
    if isinstance(err, sdk.APITimeoutError):
        return ErrorType.TIMEOUT, None
    if isinstance(err, sdk.APIConnectionError):
        return ErrorType.NETWORK, None
    if isinstance(err, sdk.APIResponseValidationError):
        return ErrorType.INVALID_RESPONSE, None
    status = getattr(err, "status_code", None)
    status = status if isinstance(status, int) else None
    if isinstance(err, sdk.APIError):
        if root == "anthropic":
            return _anthropic_kind(err, status), status
        return _openai_kind(err, status), status
    return ErrorType.UNKNOWN, status


def _openai_kind(err: Any, status: int | None) -> ErrorType:
    """OpenAI's body ``code``/``message`` narrow what the status says (as the adapter does)."""
    code = str(getattr(err, "code", None) or getattr(err, "type", None) or "")
    text = f"{code} {getattr(err, 'message', '')}"
    if status is not None and status >= 400:
        return classify.refine(classify.by_status(status), text)
    # An ``error`` object inside a 200 stream: the provider failed mid-answer.
    if "rate" in code:
        return ErrorType.RATE_LIMIT
    return classify.refine(ErrorType.SERVER_ERROR, text)


def _anthropic_kind(err: Any, status: int | None) -> ErrorType:
    kind = getattr(err, "type", None)
    message = getattr(err, "api_message", None) or getattr(err, "message", "") or ""
    http = status if status is not None and status >= 400 else None
    if kind is None and http is None:
        kind = "api_error"  # an in-stream error event without a type: the provider broke
    return error_from(kind if isinstance(kind, str) else None, str(message), status=http).error_type


def _generic_kind(err: BaseException) -> tuple[ErrorType, int | None]:
    """Errors from code ``track()`` wraps: sockets, httpx, anything with a ``status_code``;
    and a 2xx body that is not JSON, which both SDKs raise as a plain ``JSONDecodeError``."""
    if isinstance(err, json.JSONDecodeError):
        return ErrorType.INVALID_RESPONSE, None
    if isinstance(err, TimeoutError):
        return ErrorType.TIMEOUT, None
    if isinstance(err, ConnectionError):
        return ErrorType.NETWORK, None
    for name in ("httpx", "httpx2"):
        httpx = sys.modules.get(name)
        if httpx is None:
            continue
        if isinstance(err, httpx.TimeoutException):
            return ErrorType.TIMEOUT, None
        if isinstance(err, httpx.TransportError):
            return ErrorType.NETWORK, None
        if isinstance(err, httpx.HTTPStatusError):
            status = err.response.status_code
            return classify.by_status(status), status
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return classify.by_status(status), status
    return ErrorType.UNKNOWN, None
