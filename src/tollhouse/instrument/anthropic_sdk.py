"""The ``anthropic`` SDK: ``messages.create`` (whole or ``stream=True``) and the
``messages.stream(...)`` helper, sync and async.

``messages.stream`` returns a manager whose ``MessageStream`` reads a raw
event stream; the wrapper starts the call when the ``with`` block opens (that
is when the request is sent) and swaps the raw stream for an instrumented one
before anything reads it, so ``text_stream``, iteration and
``get_final_message()`` are all observed through one path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anthropic

from tollhouse.instrument import readers
from tollhouse.instrument.call import Call, model_name
from tollhouse.instrument.clients import (
    Api,
    answered,
    async_wrapper,
    failed,
    patch,
    snapshot,
    sync_wrapper,
)
from tollhouse.instrument.core import Instrumentation, Site
from tollhouse.instrument.streams import AsyncInstrumentedStream, InstrumentedStream, Watch

log = logging.getLogger("tollhouse.instrument")

MESSAGES = Api(
    "chat",
    readers.anthropic_usage,
    readers.anthropic_reported,
    readers.read_anthropic_event,
    readers.estimate_anthropic,
)


def instrument(inst: Instrumentation, client: Any, where: Site) -> None:
    """Wrap ``client.messages.create`` and ``client.messages.stream`` on this instance."""
    messages = client.messages
    if isinstance(client, anthropic.AsyncAnthropic):
        patch(messages, "create", async_wrapper(inst, where, MESSAGES, anthropic.AsyncStream))
        patch(messages, "stream", _stream_wrapper(inst, where, _AsyncManager))
    else:
        patch(messages, "create", sync_wrapper(inst, where, MESSAGES, anthropic.Stream))
        patch(messages, "stream", _stream_wrapper(inst, where, _Manager))


def _stream_wrapper(
    inst: Instrumentation, where: Site, manager_type: type[_Manager | _AsyncManager]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def stream(*args: Any, **kwargs: Any) -> Any:
            return manager_type(method(*args, **kwargs), inst, where, snapshot(kwargs))

        return stream

    return wrap


class _Base:
    """What both stream managers share: starting the call and swapping the raw stream."""

    def __init__(
        self, manager: Any, inst: Instrumentation, where: Site, request: Mapping[str, Any]
    ) -> None:
        self._manager = manager
        self._inst = inst
        self._site = where
        self._request = request

    def _start(self) -> Call:
        return Call(self._inst, self._site, MESSAGES.operation, model_name(self._request), True)

    def _watch(self, call: Call, stream: Any, proxy: type[Any]) -> Any:
        raw = getattr(stream, "_raw_stream", None)
        if raw is None:  # an SDK whose helper no longer reads ``_raw_stream``
            log.warning("anthropic messages.stream internals changed; streamed usage estimated")
            answered(call, None, MESSAGES, self._request)
            return stream
        stream._raw_stream = proxy(
            raw, Watch(call, MESSAGES.reader, MESSAGES.estimate, self._request)
        )
        return stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_manager"], name)


class _Manager(_Base):
    """Stands in for ``MessageStreamManager``."""

    def __enter__(self) -> Any:
        call = self._start()
        try:
            stream = self._manager.__enter__()
        except BaseException as err:
            failed(call, err, MESSAGES, self._request)
            raise
        return self._watch(call, stream, InstrumentedStream)

    def __exit__(self, *exc_info: Any) -> Any:
        return self._manager.__exit__(*exc_info)


class _AsyncManager(_Base):
    """Stands in for ``AsyncMessageStreamManager``."""

    async def __aenter__(self) -> Any:
        call = self._start()
        try:
            stream = await self._manager.__aenter__()
        except BaseException as err:
            failed(call, err, MESSAGES, self._request)
            raise
        return self._watch(call, stream, AsyncInstrumentedStream)

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._manager.__aexit__(*exc_info)
