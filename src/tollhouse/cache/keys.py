"""What makes two chat requests "the same": the cache key, and the per-request opt-out.

The key is a SHA-256 over the request body with every field that cannot change
the answer removed, serialized by orjson with sorted keys (at every depth), so
the order a client wrote its fields in never matters. Everything else is part
of the key: ``messages`` and each parameter that changes the answer
(``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``,
``stop``, ``n``, ``seed``, ``tools``, ``tool_choice``, ``parallel_tool_calls``,
``response_format``, ``frequency_penalty``, ``presence_penalty``,
``logit_bias``, ``logprobs``/``top_logprobs``, ``reasoning_effort``, and any
field this module has never heard of). Erring this way is deliberate: an
unknown field in the key costs a miss, an unknown field left out could serve a
wrong answer. For the same reason values are not coerced: ``"temperature": 1``
and ``"temperature": 1.0`` are two keys.

The model in the key is the *public* model name the client asked for, not the
upstream model of the deployment that answered, so an answer cached from one
deployment of a model group serves requests routed to any other.

Sorting nested keys also sorts the properties of JSON schemas (``tools``,
``response_format``); a strict structured output follows its schema's property
order, so a hit may list an object's keys in another order than a fresh call
would. The JSON value is the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

IGNORED: frozenset[str] = frozenset(
    {
        # Transport, not content: a cached answer is replayed as SSE or as one JSON body.
        "stream",
        # Only asks for a usage chunk at the end of a stream; the replay honours it.
        "stream_options",
        # End-user identifiers for the provider's abuse monitoring.
        "user",
        "safety_identifier",
        # Free-form tags echoed into logs and dashboards.
        "metadata",
        # The gateway's own per-request cache flag (see ``opted_out``).
        "cache",
        # Whether OpenAI keeps the completion for its dashboard/evals.
        "store",
        # Which capacity tier serves the request: price and latency, not the answer.
        "service_tier",
        # A routing hint for the provider's prompt cache: price, not the answer.
        "prompt_cache_key",
    }
)
"""Body fields that never change the answer, left out of the key (``model`` is replaced)."""

_OPT_OUT_DIRECTIVES = frozenset({"no-cache", "no-store"})


def cache_key(public_model: str, body: Mapping[str, Any], *, scope: str | None = None) -> str:
    """The hex SHA-256 naming the answer to ``body`` sent to ``public_model``.

    ``scope`` (a team, a key alias) keeps answers from being shared beyond it:
    without one, any client sending the same request gets the same answer,
    which also tells it that someone asked that exact question before.
    """
    normalized: dict[str, Any] = {
        k: v for k, v in body.items() if k not in IGNORED and k != "model"
    }
    normalized["model"] = public_model
    if scope is not None:
        # No top-level "model" here, so a scoped key never equals an unscoped one.
        return _digest({"scope": scope, "request": normalized})
    return _digest(normalized)


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def opted_out(headers: Iterable[tuple[bytes, bytes]], body: Mapping[str, Any]) -> bool:
    """Whether the client asked not to be served from (or stored in) the cache.

    Yes when a ``Cache-Control`` header carries ``no-cache`` or ``no-store``
    (directives are comma-separated and case-insensitive, the header may repeat),
    or the body says ``"cache": false`` or ``"cache": {"no-cache": true}``
    (or ``"no-store": true``): SDKs that cannot set headers can still opt out.
    """
    for name, value in headers:
        if name.lower() != b"cache-control":
            continue
        for directive in value.decode("latin-1").split(","):
            if directive.split("=", 1)[0].strip().lower() in _OPT_OUT_DIRECTIVES:
                return True
    flag = body.get("cache")
    if flag is False:
        return True
    return isinstance(flag, dict) and any(flag.get(d) is True for d in _OPT_OUT_DIRECTIVES)


def strip_flag(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` without the gateway's ``cache`` field, which no upstream knows."""
    return {k: v for k, v in body.items() if k != "cache"}
