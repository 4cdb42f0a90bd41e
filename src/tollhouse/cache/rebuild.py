"""Rebuild the ``chat.completion`` a streamed answer amounts to, so it can be cached.

Faithful or nothing: ``from_stream`` returns ``None`` for any stream it cannot
rebuild exactly (an error chunk, a choice that never finished, a tool call
without id or name, a field it does not know how to merge), and such an answer
is simply not cached; a miss costs one upstream call, a wrong rebuild would be
served to everyone asking the same thing.

Merging follows the OpenAI stream: per choice index, string fields of the
delta (``content``, ``refusal``, ``reasoning_content``, ...) are concatenated,
list fields extended, an object field taken if it comes once; tool calls merge
by their own index (arguments concatenated); ``logprobs`` lists are
concatenated. The result is canonical: ``null`` fields and empty lists of a
message are left out, except ``content``, always there (``null`` when the
answer is only tool calls) -- the same form ``to_sse`` replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class _Unfaithful(Exception):
    """The stream holds something a rebuilt ``chat.completion`` would not reproduce."""


@dataclass
class _Choice:
    role: str = "assistant"
    parts: dict[str, list[Any]] = field(default_factory=dict)
    kinds: dict[str, type] = field(default_factory=dict)
    tools: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: dict[str, list[Any]] | None = None
    finish: str | None = None


def from_stream(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``chat.completion`` a streamed answer amounts to, or ``None`` if not exactly."""
    try:
        return _rebuild(chunks)
    except _Unfaithful:
        return None


def _rebuild(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage: Any = None
    for chunk in chunks:
        if not isinstance(chunk, dict) or chunk.get("error") is not None:
            raise _Unfaithful
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name):  # Azure opens with a filter-results chunk: id "", created 0
                head.setdefault(name, chunk[name])
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        raw = chunk.get("choices", [])
        if not isinstance(raw, list):
            raise _Unfaithful
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("index"), int):
                raise _Unfaithful
            _absorb(choices.setdefault(item["index"], _Choice()), item)
    if not choices or any(c.finish is None for c in choices.values()):
        raise _Unfaithful  # cut off, or an empty stream
    if not {"id", "created", "model"} <= head.keys():
        raise _Unfaithful
    out: dict[str, Any] = {
        "id": head.pop("id"),
        "object": "chat.completion",
        "created": head.pop("created"),
        "model": head.pop("model"),
        "choices": [_finish(i, choices[i]) for i in sorted(choices)],
    }
    if usage is not None:
        out["usage"] = usage
    out.update(head)
    return out


def _absorb(choice: _Choice, item: dict[str, Any]) -> None:
    delta = item.get("delta") or {}
    if not isinstance(delta, dict):
        raise _Unfaithful
    for name, value in delta.items():
        if value is None:
            continue
        if name == "role":
            if not isinstance(value, str):
                raise _Unfaithful
            choice.role = value
        elif name == "tool_calls":
            _merge_tools(choice.tools, value)
        else:
            kind = str if isinstance(value, str) else list if isinstance(value, list) else dict
            if choice.kinds.setdefault(name, kind) is not kind:
                raise _Unfaithful
            if kind is dict and name in choice.parts:
                raise _Unfaithful  # an object sent in pieces (e.g. audio): no safe merge
            choice.parts.setdefault(name, []).extend(value if kind is list else [value])
    if item.get("logprobs") is not None:
        _merge_logprobs(choice, item["logprobs"])
    if item.get("finish_reason") is not None:
        choice.finish = item["finish_reason"]


def _merge_tools(tools: dict[int, dict[str, Any]], value: Any) -> None:
    """Tool calls arrive by index: id, type and name once, arguments in pieces."""
    if not isinstance(value, list):
        raise _Unfaithful
    for call in value:
        if not isinstance(call, dict) or not isinstance(call.get("index"), int):
            raise _Unfaithful
        if not call.keys() <= {"index", "id", "type", "function"}:
            raise _Unfaithful  # e.g. a custom tool call, whose shape we do not rebuild
        empty: dict[str, Any] = {"id": None, "type": "function", "name": None, "arguments": []}
        slot = tools.setdefault(call["index"], empty)
        _set_once(slot, "id", call.get("id"))
        if call.get("type") is not None:
            slot["type"] = call["type"]
        function = call.get("function")
        if function is None:
            continue
        if not isinstance(function, dict) or not function.keys() <= {"name", "arguments"}:
            raise _Unfaithful
        _set_once(slot, "name", function.get("name"))
        arguments = function.get("arguments")
        if arguments is not None:
            if not isinstance(arguments, str):
                raise _Unfaithful
            slot["arguments"].append(arguments)


def _set_once(slot: dict[str, Any], name: str, value: Any) -> None:
    """Some servers repeat a call's id and name on every chunk; another value is ambiguous."""
    if value is None:
        return
    if slot[name] is not None and slot[name] != value:
        raise _Unfaithful
    slot[name] = value


def _merge_logprobs(choice: _Choice, logprobs: Any) -> None:
    if not isinstance(logprobs, dict):
        raise _Unfaithful
    merged = choice.logprobs if choice.logprobs is not None else {}
    for name, value in logprobs.items():
        if value is None:
            continue
        if not isinstance(value, list):
            raise _Unfaithful
        merged.setdefault(name, []).extend(value)
    choice.logprobs = merged


def _finish(index: int, choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": choice.role, "content": None}
    for name, parts in choice.parts.items():
        kind = choice.kinds[name]
        message[name] = "".join(parts) if kind is str else parts if kind is list else parts[0]
    if choice.tools:
        message["tool_calls"] = [_tool(choice.tools[i]) for i in sorted(choice.tools)]
    return {
        "index": index,
        "message": message,
        "logprobs": choice.logprobs,
        "finish_reason": choice.finish,
    }


def _tool(slot: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(slot["id"], str) or not isinstance(slot["name"], str):
        raise _Unfaithful  # a client could not answer a call with no id or name
    arguments = "".join(slot["arguments"])
    return {
        "id": slot["id"],
        "type": slot["type"],
        "function": {"name": slot["name"], "arguments": arguments},
    }
