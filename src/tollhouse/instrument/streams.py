"""Wrappers around the SDKs' stream objects that end the call when the stream ends.

The caller gets a proxy that iterates, closes and context-manages like the
SDK's ``Stream``/``AsyncStream`` (any other attribute is forwarded), while a
``Watch`` notes the first content chunk (time to first token) and the usage.
The call's one event is written at the first of:

* the stream runs out → ``success`` (usage as reported, or estimated when the
  provider sent none, e.g. an OpenAI stream without ``include_usage``);
* the SDK raises while reading → ``error``, classified, tokens seen so far;
* ``close()`` / leaving ``with`` before the end → ``cancelled``, tokens so far
  (a stream whose final usage already arrived counts as ``success``);
* the proxy is garbage-collected unread → ``cancelled``, queued from
  ``__del__`` (see ``tollhouse.instrument.core``);
* the interpreter exits with the stream still open → ``cancelled``, at exit
  (finalizers may not run then, so open proxies are kept in a weak set).

"Tokens so far" follows the gateway: the prompt (reported if the provider sent
it early, as Anthropic does, else estimated) and one output token per content
chunk, labelled ``source="estimated"``.

Iterating the proxy is the same as iterating the stream: breaking out of a
``for`` loop does not end the call (the SDK lets you resume reading), only
closing, exhausting or dropping the stream does.
"""

from __future__ import annotations

import atexit
import logging
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tollhouse.accounting.event import Outcome, TokenSource
from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType
from tollhouse.instrument.call import Call
from tollhouse.instrument.drain import drainer
from tollhouse.instrument.errors import classify_exception
from tollhouse.instrument.readers import Estimate, Reader, Tally

log = logging.getLogger("tollhouse.instrument")


class Watch:
    """Observes one stream's items and ends its call."""

    __slots__ = ("blind", "call", "estimate", "reader", "request", "tally")

    def __init__(
        self, call: Call, reader: Reader, estimate: Estimate, request: Mapping[str, Any]
    ) -> None:
        self.call = call
        self.reader = reader
        self.estimate = estimate
        self.request = request
        self.tally = Tally()
        self.blind = False  # an item could not be read: stop looking, keep relaying

    def observe(self, item: Any) -> None:
        if self.blind:
            return
        try:
            content = self.reader(self.tally, item)
        except Exception:  # an odd item must never break the caller's stream
            self.blind = True
            log.warning("stream_item_unreadable model=%s", self.call.model, exc_info=True)
            return
        if content:
            self.tally.content_chunks += 1
            if self.call.ttft is None:
                self.call.first_token()

    def usage(self, complete: bool) -> tuple[Usage, TokenSource]:
        """Reported usage when it arrived whole; otherwise the gateway's estimate."""
        t = self.tally
        known = t.known_usage()
        if complete and known is not None:
            return known, TokenSource.REPORTED
        estimated = Usage(
            input=known.input if known else self.estimate(self.request),
            output=max(t.content_chunks, known.output if known else 0),
            cached_input=known.cached_input if known else 0,
            cache_write_input=known.cache_write_input if known else 0,
        )
        return estimated, TokenSource.ESTIMATED

    def exhausted(self, *, deferred: bool = False) -> None:
        """The stream ran out; an error the provider sent in-band still makes it a failure."""
        if self.call.done:
            return
        t = self.tally
        usage, source = self.usage(t.complete)
        self.call.end(
            Outcome.SUCCESS if t.failure is None else Outcome.ERROR,
            error_type=t.failure,
            usage=usage,
            source=source,
            response_model=t.response_model,
            request_id=t.response_id,
            deferred=deferred,
        )

    def failed(self, err: BaseException) -> None:
        if self.call.done:
            return
        failure = classify_exception(err, started=True)
        usage, source = self.usage(False)
        self.call.end(
            failure.outcome,
            status=failure.status,
            error_type=failure.error_type,
            usage=usage,
            source=source,
            response_model=self.tally.response_model,
            request_id=self.tally.response_id,
        )

    def stopped(self, *, deferred: bool = False) -> None:
        """Closed or dropped before the end: cancelled, unless the answer was whole (its
        final usage, or every choice's finish_reason, was in)."""
        if self.call.done:
            return
        t = self.tally
        if t.complete or t.answered():
            self.exhausted(deferred=deferred)
            return
        usage, source = self.usage(False)
        self.call.end(
            Outcome.CANCELLED,
            error_type=ErrorType.CANCELLED,
            usage=usage,
            source=source,
            response_model=t.response_model,
            request_id=t.response_id,
            deferred=deferred,
        )


def _abandoned(proxy: object) -> None:
    """A proxy collected before its stream ended: queue its cancelled call. Skipped at
    interpreter exit, when the modules recording needs may already be gone."""
    watch = proxy.__dict__.get("_watch")
    if watch is not None and not sys.is_finalizing():
        watch.stopped(deferred=True)


# Proxies made and not yet collected (weakly held: a set entry never keeps one alive).
_open: weakref.WeakSet[Any] = weakref.WeakSet()


def _end_open_streams() -> None:
    """At exit: end the calls of streams still open (as their ``close`` would), then
    record them. Finalizers are not run for everything at exit, and ``_abandoned``
    skips a finalizing interpreter, so these calls would otherwise be lost."""
    for proxy in list(_open):
        watch = proxy.__dict__.get("_watch")
        if watch is not None:
            watch.stopped()
    drainer.flush_all()


atexit.register(_end_open_streams)  # after the drainer's: at exit it runs before it


def _forward(proxy: object, name: str) -> Any:
    """Attributes the proxy does not define come from the SDK stream (``response``, ...)."""
    stream = proxy.__dict__.get("_stream")
    if stream is None:
        raise AttributeError(name)
    return getattr(stream, name)


def _relay(owner: object, next_item: Callable[[], Any], watch: Watch) -> Iterator[Any]:
    """The SDK stream's items, each shown to ``watch`` on its way to the caller.

    What ``iter(proxy)`` returns: a generator rather than the proxy's own
    ``__next__``, because a proxy class has to define ``__getattr__`` (to forward
    the rest of the SDK stream), which makes every ``self.`` lookup in a method
    slow (~0.1 µs, two per item), while a generator keeps what it needs in its
    frame. Its frame holds ``owner``, the proxy, although it never reads it: a
    proxy iterated without a name (``for chunk in client...create(stream=True)``)
    must live until the loop ends, as it did when ``iter()`` returned the proxy
    itself, or its ``__del__`` would end the call as abandoned mid-loop.
    """
    observe = watch.observe
    while True:
        try:
            item = next_item()
        except StopIteration:
            watch.exhausted()
            return
        except BaseException as err:
            watch.failed(err)
            raise
        observe(item)
        yield item


class InstrumentedStream:
    """A synchronous SDK stream (``openai.Stream``, ``anthropic.Stream``) being watched.

    ``iter()`` returns a relaying generator (as the SDK's own ``__iter__``
    returns one); ``next()`` on the proxy reads the same SDK stream directly.
    """

    def __init__(self, stream: Any, watch: Watch) -> None:
        self._stream = stream
        self._next = stream.__next__
        self._watch = watch
        _open.add(self)

    def __iter__(self) -> Iterator[Any]:
        return _relay(self, self._next, self._watch)

    def __next__(self) -> Any:
        try:
            item = self._next()
        except StopIteration:
            self._watch.exhausted()
            raise
        except BaseException as err:
            self._watch.failed(err)
            raise
        self._watch.observe(item)
        return item

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._watch.stopped()

    def __enter__(self) -> InstrumentedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return _forward(self, name)

    def __del__(self) -> None:
        _abandoned(self)


class AsyncInstrumentedStream:
    """An asynchronous SDK stream (``openai.AsyncStream``, ``anthropic.AsyncStream``) being watched."""

    def __init__(self, stream: Any, watch: Watch) -> None:
        self._stream = stream
        self._anext = stream.__anext__
        self._watch = watch
        _open.add(self)

    def __aiter__(self) -> AsyncInstrumentedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._anext()
        except StopAsyncIteration:
            self._watch.exhausted()
            raise
        except BaseException as err:
            self._watch.failed(err)
            raise
        self._watch.observe(item)
        return item

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._watch.stopped()

    async def __aenter__(self) -> AsyncInstrumentedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return _forward(self, name)

    def __del__(self) -> None:
        _abandoned(self)
