"""Reading usage out of SDK objects, whole answers and stream items alike.

The SDKs hand back pydantic models; ``model_dump()`` on every chunk would cost
tens of microseconds, so these read attributes directly and map them onto the
same ``Usage`` conventions the gateway's adapters use (``input`` is every
prompt token, cached and cache-written ones included; ``output`` includes
reasoning). Anthropic counts go through the adapter's own ``usage_from``.

Asking for an attribute that is not there is the expensive case: ``getattr``
with a default still raises inside, and pydantic's ``__getattr__`` builds an
error message first (~3 µs, more than the rest of a chunk's reading). So
optional parts (``None`` details) are tested before use, and a provider's
extra field such as ``reasoning_content`` is looked up with ``extra_field``.

A stream reader looks at one item, updates a ``Tally`` and returns whether the
item carried generated content (the first such item is the time to first
token, and the count is the output estimate when no usage arrives).

When a provider reports no usage, the input is estimated from the request with
the gateway's documented rule (``tollhouse.accounting.tokens``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tollhouse.accounting.tokens import estimate_input_tokens, estimate_prompt_tokens
from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType
from tollhouse.providers import classify
from tollhouse.providers.anthropic_stream import usage_from

_ANTHROPIC_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class Tally:
    """What a stream has shown so far."""

    __slots__ = (
        "choices",
        "complete",
        "content_chunks",
        "counts",
        "failure",
        "finished",
        "response_id",
        "response_model",
        "usage",
    )

    def __init__(self) -> None:
        self.content_chunks = 0
        self.usage: Usage | None = None
        self.counts: dict[str, int] = {}  # Anthropic's counts, merged event by event
        self.complete = False  # the final usage arrived
        self.choices = 0  # chat: how many choices the stream has shown
        self.finished = 0  # chat: how many of them sent their finish_reason
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.failure: ErrorType | None = None  # an error reported in-band, not raised

    def answered(self) -> bool:
        """Every choice of a chat stream sent its finish_reason: the answer is whole even
        if the caller stops before the usage chunk (or none was asked for)."""
        return self.choices > 0 and self.finished >= self.choices

    def known_usage(self) -> Usage | None:
        if self.usage is not None:
            return self.usage
        return usage_from(self.counts) if self.counts else None


Reader = Callable[[Tally, Any], bool]
Estimate = Callable[[Mapping[str, Any]], int]


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def extra_field(model: Any, name: str) -> Any:
    """``getattr(model, name, None)`` for a field the SDK may not declare, without
    the exception when it is absent: pydantic keeps undeclared fields in
    ``__pydantic_extra__`` (declared ones are in ``__dict__``)."""
    values = getattr(model, "__dict__", None)
    if values is not None and name in values:
        return values[name]
    extra = getattr(model, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        return extra.get(name)
    return getattr(model, name, None)


# -- OpenAI chat completions and embeddings -------------------------------------------


def openai_reported(raw: Any) -> bool:
    """Whether ``openai_usage(raw)`` finds usage (the caller's cheap check)."""
    return isinstance(getattr(raw, "prompt_tokens", None), int)


def openai_usage(raw: Any) -> Usage | None:
    """An OpenAI ``usage`` object (chat ``CompletionUsage`` or embeddings usage)."""
    if raw is None:
        return None
    prompt = getattr(raw, "prompt_tokens", None)
    if not isinstance(prompt, int):
        return None
    cached = write = reasoning = 0
    details = getattr(raw, "prompt_tokens_details", None)
    if details is not None:
        cached = _int(getattr(details, "cached_tokens", 0))
        write = _int(extra_field(details, "cache_write_tokens"))  # newer SDKs declare it
    details = getattr(raw, "completion_tokens_details", None)
    if details is not None:
        reasoning = _int(getattr(details, "reasoning_tokens", 0))
    return Usage(prompt, _int(getattr(raw, "completion_tokens", 0)), cached, write, reasoning)


def read_chat_chunk(tally: Tally, chunk: Any) -> bool:
    """A ``ChatCompletionChunk``: content deltas, and the usage-only chunk at the end."""
    if tally.response_id is None:
        tally.response_id = getattr(chunk, "id", None)
        tally.response_model = getattr(chunk, "model", None)
    raw = getattr(chunk, "usage", None)
    if raw is not None:
        tally.usage = openai_usage(raw)
        tally.complete = tally.usage is not None
    content = False
    for choice in getattr(chunk, "choices", None) or ():
        index = getattr(choice, "index", 0)
        if isinstance(index, int) and index >= tally.choices:
            tally.choices = index + 1
        if getattr(choice, "finish_reason", None):
            tally.finished += 1  # the answer (this choice of it) is whole
        delta = getattr(choice, "delta", None)
        if delta is not None and (
            delta.content or delta.tool_calls or extra_field(delta, "reasoning_content")
        ):
            content = True
    return content


def estimate_chat(request: Mapping[str, Any]) -> int:
    return estimate_prompt_tokens(request.get("messages"))


def estimate_embeddings(request: Mapping[str, Any]) -> int:
    return estimate_input_tokens(request.get("input"))


# -- OpenAI Responses API ---------------------------------------------------------------


def responses_reported(raw: Any) -> bool:
    """Whether ``responses_usage(raw)`` finds usage (the caller's cheap check)."""
    return isinstance(getattr(raw, "input_tokens", None), int)


def responses_usage(raw: Any) -> Usage | None:
    """A Responses ``usage`` object (``input_tokens``/``output_tokens`` with details)."""
    if raw is None:
        return None
    prompt = getattr(raw, "input_tokens", None)
    if not isinstance(prompt, int):
        return None
    cached = write = reasoning = 0
    details = getattr(raw, "input_tokens_details", None)
    if details is not None:
        cached = _int(getattr(details, "cached_tokens", 0))
        write = _int(extra_field(details, "cache_write_tokens"))
    details = getattr(raw, "output_tokens_details", None)
    if details is not None:
        reasoning = _int(getattr(details, "reasoning_tokens", 0))
    return Usage(prompt, _int(getattr(raw, "output_tokens", 0)), cached, write, reasoning)


_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def read_responses_event(tally: Tally, event: Any) -> bool:
    """A Responses stream event: every ``*.delta`` is generated content; the final
    ``response.completed``/``incomplete``/``failed`` event carries the usage."""
    kind = getattr(event, "type", "")
    if kind.endswith(".delta"):
        return True
    if kind in _FINAL_RESPONSE_EVENTS:
        response = event.response
        _note_response(tally, response)
        tally.usage = responses_usage(getattr(response, "usage", None))
        tally.complete = tally.usage is not None
        if kind == "response.failed":
            tally.failure = _responses_error(getattr(response, "error", None))
    elif kind == "response.created":
        _note_response(tally, event.response)
    elif kind == "error":
        tally.failure = _responses_error(event)
    return False


def _note_response(tally: Tally, response: Any) -> None:
    tally.response_id = getattr(response, "id", None) or tally.response_id
    tally.response_model = getattr(response, "model", None) or tally.response_model


def _responses_error(error: Any) -> ErrorType:
    """A failed response's ``error`` (``code``, ``message``): the provider broke mid-answer."""
    code = str(getattr(error, "code", None) or "")
    if "rate" in code:
        return ErrorType.RATE_LIMIT
    return classify.refine(ErrorType.SERVER_ERROR, f"{code} {getattr(error, 'message', '')}")


def estimate_responses(request: Mapping[str, Any]) -> int:
    value = request.get("input")
    prompt = (
        estimate_input_tokens(value) if isinstance(value, str) else estimate_prompt_tokens(value)
    )
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        prompt += estimate_prompt_tokens([{"content": instructions}])
    return prompt


# -- Anthropic messages -----------------------------------------------------------------


def anthropic_counts(raw: Any, into: dict[str, int] | None = None) -> dict[str, int]:
    """Merge the integer counts of an Anthropic ``usage`` object into ``into``."""
    counts = {} if into is None else into
    if raw is None:
        return counts
    for name in _ANTHROPIC_FIELDS:
        value = getattr(raw, name, None)
        if isinstance(value, int):
            counts[name] = value
    return counts


def anthropic_reported(raw: Any) -> bool:
    """Whether ``anthropic_usage(raw)`` finds usage (the caller's cheap check): it does
    when any count is an integer, and ``input_tokens`` is the one always sent."""
    if isinstance(getattr(raw, "input_tokens", None), int):
        return True
    return any(isinstance(getattr(raw, name, None), int) for name in _ANTHROPIC_FIELDS)


def anthropic_usage(raw: Any) -> Usage | None:
    counts = anthropic_counts(raw)
    return usage_from(counts) if counts else None


def read_anthropic_event(tally: Tally, event: Any) -> bool:
    """A raw Messages stream event: ``message_start`` has the prompt counts,
    ``message_delta`` the final output count, ``message_stop`` ends it."""
    kind = getattr(event, "type", "")
    if kind == "content_block_delta":
        return True
    if kind == "message_start":
        message = event.message
        tally.response_id = getattr(message, "id", None)
        tally.response_model = getattr(message, "model", None)
        anthropic_counts(getattr(message, "usage", None), tally.counts)
    elif kind == "message_delta":
        anthropic_counts(getattr(event, "usage", None), tally.counts)
        tally.complete = True
    elif kind == "message_stop":
        tally.complete = bool(tally.counts)
    return False


def estimate_anthropic(request: Mapping[str, Any]) -> int:
    """The mock's and the gateway's rule: the ``system`` prompt counts as a leading message."""
    messages = request.get("messages")
    listed = list(messages) if isinstance(messages, list | tuple) else []
    system = request.get("system")
    if isinstance(system, str | list):
        listed = [{"content": system}, *listed]
    return estimate_prompt_tokens(listed)
