"""Checks on client request bodies: the few fields the gateway relies on.

Everything else passes through to the upstream untouched, which knows its
own parameters better than we do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollhouse.errors import BadRequest

# The longest ``user`` accepted. Each distinct value is an end user: a ledger column, a
# budget counter, a label on the budget gauges when an end-user budget applies, and a
# cache entry; an id, a hashed e-mail or a UUID fits with room to spare.
MAX_USER_CHARS = 256


@dataclass(frozen=True, slots=True)
class ChatParams:
    model: str
    stream: bool
    wants_usage: bool
    messages: list[Any]
    max_tokens: int | None
    end_user: str | None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", param="model")
    return model


def _positive_int(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise BadRequest(f"'{name}' must be a positive integer", param=name)


def chat(body: Any) -> ChatParams:
    body = _object(body)
    model = _model(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("you must provide a messages parameter", param="messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(
                f"messages[{i}] must be an object with a string 'role'", param="messages"
            )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    wants_usage = bool(options and options.get("include_usage") is True)
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    # Reserve for the larger cap when both are sent: providers differ in which one wins.
    caps = [c for c in (body.get("max_completion_tokens"), body.get("max_tokens")) if c]
    cap = max(caps) if caps else None
    return ChatParams(model, stream, wants_usage, messages, cap, _end_user(body))


def _end_user(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if user is None:
        return None
    if not isinstance(user, str):
        raise BadRequest("'user' must be a string", param="user")
    if len(user) > MAX_USER_CHARS:
        raise BadRequest(f"'user' must be at most {MAX_USER_CHARS} characters", param="user")
    return user or None


@dataclass(frozen=True, slots=True)
class EmbeddingsParams:
    model: str
    input: Any
    end_user: str | None


def embeddings(body: Any) -> EmbeddingsParams:
    body = _object(body)
    model = _model(body)
    value = body.get("input")
    if value is None:
        raise BadRequest("you must provide an input parameter", param="input")
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and value
        and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value)
        )
    )
    if not ok:
        raise BadRequest(
            "'input' must be a string, an array of strings, or an array of token arrays",
            param="input",
        )
    return EmbeddingsParams(model, value, _end_user(body))
