"""The ``openai`` SDK: chat completions, embeddings and the Responses API, sync and async.

Streaming chat requests are sent as the caller wrote them: the wrapper does not
add ``stream_options.include_usage``, so the caller never sees a chunk it did
not ask for. When the provider sends no usage the event's tokens are the
gateway's estimate (``source="estimated"``); ask for ``include_usage`` to get
reported ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import openai

from tollhouse.instrument import readers
from tollhouse.instrument.clients import Api, async_wrapper, patch, sync_wrapper
from tollhouse.instrument.core import Instrumentation, Site


def _no_content(tally: readers.Tally, item: Any) -> bool:
    return False  # embeddings never stream


CHAT = Api(
    "chat",
    readers.openai_usage,
    readers.openai_reported,
    readers.read_chat_chunk,
    readers.estimate_chat,
)
EMBEDDINGS = Api(
    "embeddings",
    readers.openai_usage,
    readers.openai_reported,
    _no_content,
    readers.estimate_embeddings,
)
# OTel names no separate operation for the Responses API: it is a chat operation.
RESPONSES = Api(
    "chat",
    readers.responses_usage,
    readers.responses_reported,
    readers.read_responses_event,
    readers.estimate_responses,
)


def instrument(inst: Instrumentation, client: Any, where: Site) -> None:
    """Wrap ``client.chat.completions.create``, ``client.embeddings.create`` and
    ``client.responses.create`` on this client instance."""
    if isinstance(client, openai.AsyncOpenAI):
        for resource, api in _resources(client):
            patch(resource, "create", async_wrapper(inst, where, api, openai.AsyncStream))
    else:
        for resource, api in _resources(client):
            patch(resource, "create", sync_wrapper(inst, where, api, openai.Stream))
    if callable(getattr(client.responses, "stream", None)):
        patch(client.responses, "stream", _as_helper)


def _as_helper(stream: Callable[..., Any]) -> Callable[..., Any]:
    """``responses.stream`` calls the (wrapped) ``responses.create`` without saying so,
    unlike ``chat.completions.stream``, which sets the SDK's helper header: set it here
    too, so the wrapper passes that call through as it does the chat helper's. (The
    helper's stream closes its HTTP response directly, past any wrapper.)"""

    @functools.wraps(stream)
    def helper(*args: Any, **kwargs: Any) -> Any:
        headers = dict(kwargs.get("extra_headers") or {})
        headers.setdefault("X-Stainless-Helper-Method", "responses.stream")
        return stream(*args, **{**kwargs, "extra_headers": headers})

    return helper


def _resources(client: Any) -> list[tuple[Any, Api]]:
    return [
        (client.chat.completions, CHAT),
        (client.embeddings, EMBEDDINGS),
        (client.responses, RESPONSES),
    ]
