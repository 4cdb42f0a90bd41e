"""A cached answer, and the two shapes it travels in: one JSON body or an SSE stream.

An answer is stored once, as a complete OpenAI ``chat.completion`` body, however
it was first delivered: a streamed answer is rebuilt from its chunks
(``tollhouse.cache.rebuild.from_stream``) and a streaming request that hits is
served by replaying the body as chunks (``to_sse``). So a streamed and a
non-streamed request for the same thing share one entry.

The stored record keeps what the original call used and cost, because a hit is
accounted as zero spent and that much saved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from tollhouse.accounting.usage import Usage

PIECE = 16
"""Characters per replayed content chunk: enough chunks that a client sees a stream."""

DONE = b"data: [DONE]\n\n"
_FORMAT = 2  # 2: the cost is an exact decimal string (1 rounded it up to the nano-USD)
_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A complete ``chat.completion`` body with what producing it used and cost."""

    body: bytes
    usage: Usage
    cost: Decimal | None
    """What the original call cost in USD, exactly; ``None`` when it was not priced."""
    created: float
    """Wall-clock time (``time.time()``) the answer was produced, e.g. for an ``Age`` header."""


def to_sse(body: bytes, include_usage: bool) -> list[bytes]:
    """Replay a stored ``chat.completion`` as the SSE events of an OpenAI stream.

    Per choice: a role chunk, the message's text in ``PIECE``-character chunks,
    each tool call (id and name, then its arguments in pieces), a finish chunk;
    then the usage chunk (``choices: []``) if the client asked for it, then
    ``[DONE]``. A choice's ``logprobs`` ride on its role chunk, whole.
    Raises ``ValueError`` for a body that is not a ``chat.completion``.
    """
    try:
        data = orjson.loads(body)
        base = {
            "id": data["id"],
            "object": "chat.completion.chunk",
            "created": data["created"],
            "model": data["model"],
        }
        for name in ("system_fingerprint", "service_tier"):
            if data.get(name) is not None:
                base[name] = data[name]
        events = [
            _event({**base, "choices": [choice]})
            for item in data["choices"]
            for choice in _replay(item)
        ]
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError("not a chat.completion body") from err
    if include_usage and data.get("usage") is not None:
        events.append(_event({**base, "choices": [], "usage": data["usage"]}))
    events.append(DONE)
    return events


def _replay(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunk choices of one stored choice, in stream order."""
    message = item["message"]
    content = message.get("content")
    first = {
        "role": message.get("role", "assistant"),
        "content": "" if isinstance(content, str) else None,
    }
    deltas: list[dict[str, Any]] = []
    for name, value in message.items():
        if name in ("role", "content", "tool_calls") or value is None or value == []:
            continue
        pieces = _pieces(value) if isinstance(value, str) else [value]
        deltas += [{name: piece} for piece in pieces]
    if isinstance(content, str):
        deltas += [{"content": piece} for piece in _pieces(content)]
    for n, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        opening = {"name": function["name"], "arguments": ""}
        deltas.append(
            {
                "tool_calls": [
                    {"index": n, "id": call["id"], "type": call["type"], "function": opening}
                ]
            }
        )
        deltas += [
            {"tool_calls": [{"index": n, "function": {"arguments": piece}}]}
            for piece in _pieces(function["arguments"])
        ]
    index = item["index"]
    out = [
        {"index": index, "delta": first, "logprobs": item.get("logprobs"), "finish_reason": None}
    ]
    out += [{"index": index, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas]
    out.append(
        {"index": index, "delta": {}, "logprobs": None, "finish_reason": item["finish_reason"]}
    )
    return out


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)] or [text]


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode(answer: CachedAnswer) -> bytes:
    """Bytes for a shared store: a JSON header line, then the body exactly as it was.

    The body is not re-serialized, so a hit returns the very bytes the upstream
    (or the stream rebuild) produced, and reading one costs a single JSON parse
    of a small header.
    """
    head = {
        "v": _FORMAT,
        "usage": {name: getattr(answer.usage, name) for name in _USAGE_FIELDS},
        "cost": None if answer.cost is None else str(answer.cost),
        "created": answer.created,
    }
    return orjson.dumps(head) + b"\n" + answer.body


def decode(raw: bytes) -> CachedAnswer:
    """The answer ``encode`` wrote; ``ValueError`` for anything else (another format, damage)."""
    header, newline, body = raw.partition(b"\n")
    head = orjson.loads(header)  # JSONDecodeError is a ValueError
    if not newline or not isinstance(head, dict) or head.get("v") != _FORMAT:
        raise ValueError("not a cached answer of this format")
    usage, cost, created = head.get("usage"), head.get("cost"), head.get("created")
    if not isinstance(usage, dict) or usage.keys() != set(_USAGE_FIELDS):
        raise ValueError("cached answer has no usable usage")
    if not all(_is_int(v) for v in usage.values()):
        raise ValueError("cached answer's counts are not integers")
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise ValueError("cached answer has no creation time")
    return CachedAnswer(body, Usage(**usage), _decimal(cost), float(created))


def _decimal(value: Any) -> Decimal | None:
    """The stored cost: ``None``, or a finite decimal string (anything else is damage)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("cached answer's cost is not a decimal string")
    try:
        cost = Decimal(value)
    except InvalidOperation:
        raise ValueError("cached answer's cost is not a decimal string") from None
    if not cost.is_finite():
        raise ValueError("cached answer's cost is not finite")
    return cost


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
