"""``track()``: the manual API for clients ``instrument()`` does not know.

    with tollhouse.track(provider="mistral", model="mistral-large") as call:
        answer = my_client.generate(...)
        call.record_usage(input_tokens=answer.prompt_tokens, output_tokens=answer.tokens)

    @tollhouse.track(provider="local", model="llama-3")
    async def ask(prompt: str) -> str:
        ...
        tollhouse.instrument.current_call().record_usage(input_tokens=12, output_tokens=40)

The block (or each call of the decorated function) becomes one ``UsageEvent``
with the same labels, metrics and pricing as an instrumented SDK call. An
exception inside is classified with the gateway's taxonomy, recorded, and
re-raised unchanged. ``current_call()`` returns the innermost tracked call of
the running task or thread, so decorated functions can report usage.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from tollhouse.accounting.event import Outcome, TokenSource
from tollhouse.accounting.usage import Usage
from tollhouse.instrument.call import Call
from tollhouse.instrument.core import Instrumentation, Site
from tollhouse.instrument.errors import classify_exception

F = TypeVar("F", bound=Callable[..., Any])
_current: contextvars.ContextVar[TrackedCall | None] = contextvars.ContextVar(
    "tollhouse_tracked_call", default=None
)


def current_call() -> TrackedCall:
    """The tracked call this code runs inside (raises ``LookupError`` outside one)."""
    call = _current.get()
    if call is None:
        raise LookupError("not inside tollhouse.track()")
    return call


class TrackedCall:
    """What the ``with`` block gets: report usage and the first token."""

    __slots__ = ("_call", "_token", "response_model", "source", "usage")

    def __init__(self, call: Call) -> None:
        self._call = call
        self.usage = Usage()
        self.source = TokenSource.REPORTED
        self.response_model: str | None = None
        self._token: contextvars.Token[TrackedCall | None] | None = None

    def first_token(self) -> None:
        """Mark the first generated token (time to first token); later calls are ignored."""
        self._call.first_token()

    def record_usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_input_tokens: int = 0,
        reasoning_tokens: int = 0,
        estimated: bool = False,
        response_model: str | None = None,
    ) -> None:
        """Set the call's usage (the last report wins). Conventions as everywhere:
        ``input_tokens`` includes cached and cache-write ones, ``output_tokens``
        includes reasoning ones."""
        self.usage = Usage(
            input=input_tokens,
            output=output_tokens,
            cached_input=cached_input_tokens,
            cache_write_input=cache_write_input_tokens,
            reasoning=reasoning_tokens,
        )
        self.source = TokenSource.ESTIMATED if estimated else TokenSource.REPORTED
        if response_model is not None:
            self.response_model = response_model

    def _enter(self) -> TrackedCall:
        self._token = _current.set(self)
        return self

    def _exit(self, err: BaseException | None) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if err is None:
            self._call.end(
                Outcome.SUCCESS,
                usage=self.usage,
                source=self.source,
                response_model=self.response_model,
            )
            return
        failure = classify_exception(err, started=self._call.ttft is not None)
        self._call.end(
            failure.outcome,
            status=failure.status,
            error_type=failure.error_type,
            usage=self.usage,
            source=self.source,
            response_model=self.response_model,
        )


class Tracker:
    """``tollhouse.track(...)``: a context manager (sync or async) and a decorator.

    As a context manager it tracks one block; as a decorator it tracks every
    call of the function, each as its own call.
    """

    def __init__(
        self, inst: Instrumentation, where: Site, operation: str, model: str, stream: bool
    ) -> None:
        self._inst = inst
        self._site = where
        self._operation = operation
        self._model = model
        self._stream = stream
        self._active: list[TrackedCall] = []

    def start(self) -> TrackedCall:
        """Begin a call now (what entering the ``with`` block does)."""
        call = Call(self._inst, self._site, self._operation, self._model, self._stream)
        return TrackedCall(call)._enter()

    def __enter__(self) -> TrackedCall:
        tracked = self.start()
        self._active.append(tracked)
        return tracked

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._active.pop()._exit(exc)

    async def __aenter__(self) -> TrackedCall:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def tracked_async(*args: Any, **kwargs: Any) -> Any:
                tracked = self.start()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as err:
                    tracked._exit(err)
                    raise
                tracked._exit(None)
                return result

            return cast(F, tracked_async)

        @functools.wraps(fn)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            call = self.start()
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:
                call._exit(err)
                raise
            call._exit(None)
            return result

        return cast(F, tracked)
