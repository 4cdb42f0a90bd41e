"""Anthropic Messages streaming → OpenAI ``chat.completion.chunk`` events.

Anthropic streams typed events (``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``, ``ping``, ``error``); OpenAI clients expect
one flat chunk shape. The translator is a small state machine fed one SSE line
at a time, so the proxy can relay each chunk as soon as its line arrives.

The usage, finish-reason and error-type helpers live here too because both the
streamed and the whole-answer paths (``tollhouse.providers.anthropic``) need
them and this module must not import that one (it imports this one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers import classify, sse
from tollhouse.providers.base import Target

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic's error ``type`` values. ``api_error`` is deliberately absent: it is
# Anthropic's generic "something broke", so the HTTP status says more (504 → timeout).
# ``billing_error`` is the operator's account, not the client's request: treat as auth.
_ERROR_TYPES: dict[str, ErrorType] = {
    "rate_limit_error": ErrorType.RATE_LIMIT,
    "overloaded_error": ErrorType.SERVER_ERROR,
    "authentication_error": ErrorType.AUTH,
    "permission_error": ErrorType.AUTH,
    "billing_error": ErrorType.AUTH,
    "request_too_large": ErrorType.CONTEXT_LENGTH,
    "not_found_error": ErrorType.NOT_FOUND,
    "timeout_error": ErrorType.TIMEOUT,
    "invalid_request_error": ErrorType.BAD_REQUEST,
}
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def finish_reason(stop_reason: object) -> str | None:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason`` (unknown ones → ``stop``)."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(str(stop_reason), "stop")


def usage_counts(raw: object) -> dict[str, int]:
    """The integer token counts of an Anthropic ``usage`` object (nulls and extras dropped)."""
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k in _USAGE_FIELDS if isinstance(v := raw.get(k), int)}


def usage_from(counts: Mapping[str, int]) -> Usage:
    """Map Anthropic counts to ``Usage``, whose ``input`` includes both cache parts.

    Anthropic's ``input_tokens`` excludes cached and cache-written tokens; summing
    them keeps ``input`` meaning "all prompt tokens" for every provider.
    """
    read = counts.get("cache_read_input_tokens", 0)
    write = counts.get("cache_creation_input_tokens", 0)
    return Usage(
        input=counts.get("input_tokens", 0) + read + write,
        output=counts.get("output_tokens", 0),
        cached_input=read,
        cache_write_input=write,
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    """The OpenAI ``usage`` object for ``usage`` (same shape streamed or not)."""
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input},
    }


def error_from(
    error_type: str | None,
    message: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    """Classify an Anthropic error (HTTP answer or in-stream ``error`` event).

    The body's ``type`` wins when it is specific; otherwise the HTTP status
    decides. Bad requests are then narrowed by the message wording (e.g.
    "prompt is too long" → context length).
    """
    kind = _ERROR_TYPES.get(error_type or "")
    if kind is None:
        if status is not None:
            kind = classify.by_status(status)
        elif error_type == "api_error":
            kind = ErrorType.SERVER_ERROR
        else:
            kind = ErrorType.UNKNOWN
    if kind is ErrorType.BAD_REQUEST:
        kind = classify.refine(kind, message)
    return UpstreamError(kind, message, status=status, retry_after=retry_after)


def _block_index(data: Mapping[str, Any]) -> int:
    """The Anthropic content-block index of an event (0 if absent or malformed)."""
    index = data.get("index")
    return index if isinstance(index, int) else 0


class AnthropicStreamTranslator:
    """Feeds on Anthropic SSE lines and yields OpenAI chunk events (``StreamTranslator``)."""

    def __init__(self, target: Target, *, client_wants_usage: bool, created: int) -> None:
        self.content_chunks = 0
        self.usage: Usage | None = None
        self.error: UpstreamError | None = None
        self.done = False
        # message_start's usage has a placeholder output count: the answer is whole
        # only once message_delta (the real count) or message_stop arrived.
        self.complete = False
        self._wants_usage = client_wants_usage
        self._id = "chatcmpl-anthropic"
        self._model = target.upstream_model
        self._created = created
        self._counts: dict[str, int] = {}
        # Anthropic indexes every content block; OpenAI numbers only tool calls.
        self._tool_index: dict[int, int] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], list[bytes]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
        }

    def feed(self, line: bytes) -> list[bytes]:
        """Handle one line; only ``data:`` lines matter since each payload names its type."""
        field = sse.split_field(line)
        if field is None or field[0] != b"data":
            return []
        try:
            data = orjson.loads(field[1])
        except orjson.JSONDecodeError:
            self.error = UpstreamError(
                ErrorType.INVALID_RESPONSE, "unreadable anthropic stream event"
            )
            return []
        if not isinstance(data, dict):
            return []
        handler = self._handlers.get(str(data.get("type")))
        return handler(data) if handler else []  # ping and unknown future events

    def finish(self) -> list[bytes]:
        """Close the stream: the usage chunk OpenAI sends for ``include_usage``, then DONE."""
        out: list[bytes] = []
        if self._wants_usage and self.usage is not None:
            out.append(self._chunk([], usage=openai_usage(self.usage)))
        out.append(sse.DONE)
        return out

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        payload.update(extra)
        return sse.event(payload)

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def _message_start(self, data: dict[str, Any]) -> list[bytes]:
        message = data.get("message")
        if not isinstance(message, dict):
            return []
        self._id = str(message.get("id") or self._id)
        self._model = str(message.get("model") or self._model)
        self._counts = usage_counts(message.get("usage"))
        # message_start's output count is a placeholder; message_delta carries the real one.
        self._counts["output_tokens"] = 0
        self.usage = usage_from(self._counts)
        return [self._delta({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict[str, Any]) -> list[bytes]:
        block = data.get("content_block")
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return []  # text starts empty; thinking and server-tool blocks have no OpenAI form
        index = len(self._tool_index)
        self._tool_index[_block_index(data)] = index
        call = {
            "index": index,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self._delta({"tool_calls": [call]})]

    def _block_delta(self, data: dict[str, Any]) -> list[bytes]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            out = self._delta({"content": delta["text"]})
        elif kind == "input_json_delta" and delta.get("partial_json"):
            tool = self._tool_index.get(_block_index(data), 0)
            args = {"index": tool, "function": {"arguments": delta["partial_json"]}}
            out = self._delta({"tool_calls": [args]})
        else:
            return []  # empty deltas, thinking and signatures
        self.content_chunks += 1
        return [out]

    def _message_delta(self, data: dict[str, Any]) -> list[bytes]:
        # Counts here are cumulative totals, so the latest simply replaces the earlier.
        counts = usage_counts(data.get("usage"))
        if counts:
            self._counts.update(counts)
            self.usage = usage_from(self._counts)
            self.complete = True
        delta = data.get("delta")
        reason = finish_reason(delta.get("stop_reason")) if isinstance(delta, dict) else None
        return [self._delta({}, reason)] if reason else []

    def _message_stop(self, data: dict[str, Any]) -> list[bytes]:
        self.done = self.complete = True
        return []

    def _error(self, data: dict[str, Any]) -> list[bytes]:
        err = data.get("error")
        err = err if isinstance(err, dict) else {}
        kind = err.get("type")
        message = str(err.get("message") or "anthropic stream error")
        self.error = error_from(kind if isinstance(kind, str) else None, message)
        return []
