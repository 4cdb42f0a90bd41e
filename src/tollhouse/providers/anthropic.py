"""The Anthropic Messages API wire format (``POST /v1/messages``).

Clients speak OpenAI chat completions; this adapter translates their bodies into
Messages requests and the answers back, so Anthropic models sit behind the same
endpoint as every other provider. Everything here is pure: no I/O, no metrics.
Streaming translation lives in ``tollhouse.providers.anthropic_stream``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers import classify
from tollhouse.providers.anthropic_stream import (
    AnthropicStreamTranslator,
    error_from,
    finish_reason,
    openai_usage,
    usage_counts,
    usage_from,
)
from tollhouse.providers.base import Parsed, RateLimitInfo, Target, UpstreamRequest

ANTHROPIC_VERSION = "2023-06-01"

JSON = dict[str, Any]


def _bad(message: str) -> UpstreamError:
    """A request this wire format cannot express: the client's fault, so BAD_REQUEST."""
    return UpstreamError(ErrorType.BAD_REQUEST, message)


def _image_block(part: Mapping[str, Any]) -> JSON:
    """An OpenAI ``image_url`` part as an Anthropic image block (base64 or URL source)."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    if not isinstance(url, str):
        raise _bad("image_url part without a url")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            raise _bad("image data URLs must be base64-encoded")
        source: JSON = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad("image URLs must be data: or http(s) URLs")


def _blocks(content: object) -> str | list[JSON]:
    """OpenAI message content (a string or parts) as Anthropic content.

    Parts the Messages API cannot take (audio, files) are rejected rather than
    dropped: silently losing part of a prompt would change the answer.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("message content must be a string or a list of parts")
    out: list[JSON] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            out.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            out.append(_image_block(part))
        else:
            raise _bad(f"content part type {kind!r} is not supported by anthropic")
    return out


def _text(content: object) -> str:
    """The text of a system/developer message (Anthropic's ``system`` is text only)."""
    blocks = _blocks(content)
    if isinstance(blocks, str):
        return blocks
    if any(b["type"] != "text" for b in blocks):
        raise _bad("system messages may only contain text")
    return "\n".join(str(b["text"]) for b in blocks)


def _tool_use(call: object) -> JSON:
    """An OpenAI assistant ``tool_calls`` entry as a ``tool_use`` block (arguments decoded)."""
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(call, Mapping) or not isinstance(fn, Mapping):
        raise _bad("tool_calls entries need a function")
    raw = fn.get("arguments") or "{}"
    try:
        args = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("tool call arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise _bad("tool call arguments must be a JSON object")
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args}


def _assistant(msg: Mapping[str, Any]) -> JSON:
    """An assistant turn; with tool calls, text (if any) comes first, then ``tool_use`` blocks."""
    content = _blocks(msg.get("content"))
    calls = msg.get("tool_calls") or []
    if not calls:
        return {"role": "assistant", "content": content}
    if isinstance(content, str):
        content = [{"type": "text", "text": content}] if content else []
    return {"role": "assistant", "content": content + [_tool_use(c) for c in calls]}


def _messages(messages: object) -> tuple[str | None, list[JSON]]:
    """Split OpenAI messages into Anthropic's top-level ``system`` and its turns.

    Tool results become ``tool_result`` blocks in a user turn; consecutive ones
    share one turn, as Anthropic expects all results of a parallel call together.
    """
    if not isinstance(messages, list):
        raise _bad("messages must be a list")
    system: list[str] = []
    out: list[JSON] = []
    for msg in messages:
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role in ("system", "developer"):
            system.append(_text(msg.get("content")))
        elif role == "user":
            out.append({"role": "user", "content": _blocks(msg.get("content"))})
        elif role == "assistant":
            out.append(_assistant(msg))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": msg.get("tool_call_id"),
                "content": _blocks(msg.get("content")),
            }
            if out and _is_tool_results(out[-1]):
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
        else:
            raise _bad(f"message role {role!r} is not supported by anthropic")
    return ("\n\n".join(system) if system else None), out


def _is_tool_results(turn: JSON) -> bool:
    """Whether ``turn`` is a user turn built only from tool results (so more can join it)."""
    content = turn.get("content")
    return (
        turn.get("role") == "user"
        and isinstance(content, list)
        and all(b.get("type") == "tool_result" for b in content)
    )


def _tools(body: Mapping[str, Any]) -> JSON:
    """OpenAI function tools and ``tool_choice`` as Anthropic ``tools``/``tool_choice``."""
    tools: list[JSON] = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or tool.get("type", "function") != "function":
            continue  # non-function tools have no Anthropic equivalent
        spec: JSON = {"name": fn.get("name")}
        if fn.get("description"):
            spec["description"] = fn["description"]
        spec["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        tools.append(spec)
    if not tools:
        return {}  # Anthropic rejects a tool_choice without tools
    out: JSON = {"tools": tools}
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and choice.get("type", "auto") != "none":
        choice = {"type": "auto", **choice, "disable_parallel_tool_use": True}
    if choice:
        out["tool_choice"] = choice
    return out


def _tool_choice(choice: object) -> JSON:
    """OpenAI's ``tool_choice`` in Anthropic terms ("required" is Anthropic's "any")."""
    if choice is None:
        return {}
    if isinstance(choice, str):
        names = {"auto": "auto", "required": "any", "none": "none"}
        if choice not in names:
            raise _bad(f"tool_choice {choice!r} is not supported")
        return {"type": names[choice]}
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    if not isinstance(fn, Mapping) or not fn.get("name"):
        raise _bad("tool_choice must name a function")
    return {"type": "tool", "name": fn["name"]}


def _sampling(body: Mapping[str, Any], target: Target) -> JSON:
    """Generation limits and sampling params; ``max_tokens`` always set (Anthropic requires it)."""
    if body.get("n") not in (None, 1):
        raise _bad("anthropic returns one choice per request (n must be 1)")
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    out: JSON = {"max_tokens": target.default_max_tokens if limit is None else limit}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


class AnthropicAdapter:
    """The ``Adapter`` for Anthropic's Messages API.

    ``clock`` gives the OpenAI ``created`` timestamp (Anthropic sends none); tests
    pass a fixed one so translated bodies can be compared byte for byte.
    """

    provider = "anthropic"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def chat_request(
        self, body: dict[str, Any], target: Target, *, stream: bool
    ) -> UpstreamRequest:
        """Build ``POST {base_url}/v1/messages``, dropping params with no Anthropic meaning."""
        system, messages = _messages(body.get("messages"))
        payload: JSON = {"model": target.upstream_model, "messages": messages}
        if system is not None:
            payload["system"] = system
        payload.update(_sampling(body, target))
        payload.update(_tools(body))
        if stream:
            payload["stream"] = True  # Anthropic always reports usage in streams
        headers = _headers(target)
        url = target.base_url.rstrip("/") + "/v1/messages"
        return UpstreamRequest("POST", url, headers, orjson.dumps(payload), stream=stream)

    def probe_request(self, target: Target) -> UpstreamRequest:
        """``GET /v1/models``: authenticated, cheap, and free of charge."""
        headers = _headers(target)
        headers.pop("content-type", None)
        return UpstreamRequest("GET", target.base_url.rstrip("/") + "/v1/models", headers, b"")

    def parse_chat(self, payload: bytes, target: Target) -> Parsed:
        """Translate a whole Messages answer into an OpenAI ``chat.completion``."""
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                ErrorType.INVALID_RESPONSE, "anthropic answer is not JSON"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise UpstreamError(ErrorType.INVALID_RESPONSE, "anthropic answer has no content")
        model = str(data.get("model") or target.upstream_model)
        usage = usage_from(usage_counts(data["usage"])) if "usage" in data else None
        choice = {
            "index": 0,
            "message": _openai_message(data["content"]),
            "finish_reason": finish_reason(data.get("stop_reason")),
        }
        out: JSON = {
            "id": data.get("id"),
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": model,
            "choices": [choice],
        }
        if usage is not None:
            out["usage"] = openai_usage(usage)
        return Parsed(orjson.dumps(out), usage, model)

    def chat_stream(self, target: Target, *, client_wants_usage: bool) -> AnthropicStreamTranslator:
        """A translator for one streamed answer (see ``anthropic_stream``)."""
        created = int(self._clock())
        return AnthropicStreamTranslator(
            target, client_wants_usage=client_wants_usage, created=created
        )

    def embeddings_request(self, body: dict[str, Any], target: Target) -> UpstreamRequest:
        """Anthropic has no embeddings endpoint; routing one here is a client error."""
        raise _bad("anthropic has no embeddings API")

    def parse_embeddings(self, payload: bytes, target: Target) -> Parsed:
        """Unreachable in practice (no request is ever built); kept for the protocol."""
        raise _bad("anthropic has no embeddings API")

    def classify(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """Classify a non-2xx answer from its ``{"type":"error","error":{...}}`` body.

        Only the upstream's own message is kept, never header values, so no
        credential can leak into logs or client-facing errors.
        """
        kind: str | None = None
        message = f"anthropic returned HTTP {status}"
        try:
            err = orjson.loads(payload).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            err = None
        if isinstance(err, dict):
            kind = err.get("type") if isinstance(err.get("type"), str) else None
            message = str(err.get("message") or kind or message)
        return error_from(kind, message, status=status, retry_after=classify.retry_after(headers))

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitInfo:
        """Remaining quota from Anthropic's ``anthropic-ratelimit-*-remaining`` headers."""
        return RateLimitInfo(
            remaining_requests=classify.header_number(
                headers, "anthropic-ratelimit-requests-remaining"
            ),
            remaining_tokens=classify.header_number(
                headers, "anthropic-ratelimit-tokens-remaining"
            ),
        )


def _openai_message(content: list[Any]) -> JSON:
    """Anthropic content blocks as one OpenAI assistant message (text joined, tools as calls)."""
    texts: list[str] = []
    calls: list[JSON] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _headers(target: Target) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    headers.update(target.headers)
    return headers
