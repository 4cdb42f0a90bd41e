"""Instrumenting one SDK client instance: which SDK it is, and the method wrappers.

Only the given client is touched: its resource objects' bound methods
(``client.chat.completions.create``, ...) are replaced by instance attributes
that wrap them. The SDK classes are never patched, so other clients in the
process (and the SDK's own tests) see the SDK unchanged. Instrumenting twice
is a no-op, and ``client.with_options(...)``/``copy()`` return clients
instrumented the same way.

A wrapper's work around the SDK call is: bind the labels (done at instrument
time), start a ``Call`` (two clock reads and a queue append), and on return
check that the answer reports usage and queue it; the batch reads the usage,
prices and records it. Streams are handed back
wrapped (``tollhouse.instrument.streams``).

Calls made through ``with_raw_response``/``with_streaming_response`` are passed
through unrecorded: what they return is an HTTP response, not an answer.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tollhouse.accounting.event import Outcome, TokenSource
from tollhouse.accounting.usage import ZERO_USAGE, Usage
from tollhouse.errors import ErrorType
from tollhouse.instrument.call import Call, model_name
from tollhouse.instrument.core import Instrumentation, PriceSpec, Site, site
from tollhouse.instrument.errors import classify_exception
from tollhouse.instrument.readers import Estimate, Reader
from tollhouse.instrument.streams import AsyncInstrumentedStream, InstrumentedStream, Watch

C = TypeVar("C")
_MARK = "__tollhouse__"  # set on every wrapper, so a second instrument() sees its own work
_CLIENT_MARK = "_tollhouse_site"
# Calls passed through unrecorded, by a header the SDK sets on them: the raw-response
# wrappers, and its helpers (chat.completions.stream; responses.stream gets it from
# openai_sdk), which document-wise are not recorded and whose streams close beneath
# the wrapper, so a call could never be seen to end.
_PASS_HEADERS = frozenset({"x-stainless-raw-response", "x-stainless-helper-method"})


@dataclass(frozen=True, slots=True)
class Api:
    """How to account one SDK method: its operation name and how to read its answers."""

    operation: str
    usage_of: Callable[[Any], Usage | None]  # the answer's ``usage`` attribute → Usage
    reported: Callable[[Any], bool]  # cheaply: will ``usage_of`` find usage in it?
    reader: Reader  # one stream item
    estimate: Estimate  # request kwargs → prompt tokens, when no usage is reported


def instrument_client(
    inst: Instrumentation,
    client: C,
    *,
    backend: str | None,
    provider: str | None,
    key: str,
    team: str,
    prices: PriceSpec | Mapping[str, PriceSpec] | None,
    price_provider: str | None,
) -> C:
    """Wrap ``client``'s methods in place and return it."""
    sdk = sdk_of(client)
    if _CLIENT_MARK in vars(client):
        return client
    where = site(
        provider or sdk,
        backend or _host(client),
        key=key,
        team=team,
        prices=prices,
        price_provider=price_provider,
    )
    where = inst.intern(where)
    if sdk == "openai":
        from tollhouse.instrument import openai_sdk as wrappers
    else:
        from tollhouse.instrument import anthropic_sdk as wrappers  # type: ignore[no-redef]
    wrappers.instrument(inst, client, where)
    options = {
        "backend": backend,
        "provider": provider,
        "key": key,
        "team": team,
        "prices": prices,
        "price_provider": price_provider,
    }
    for name in ("copy", "with_options"):
        if callable(getattr(client, name, None)):
            setattr(client, name, _instrumented_copy(inst, getattr(client, name), options))
    setattr(client, _CLIENT_MARK, where)
    return client


def sdk_of(client: object) -> str:
    """``"openai"`` or ``"anthropic"``: the SDK whose client class ``client`` is."""
    for cls in type(client).__mro__:
        root = cls.__module__.partition(".")[0]
        if root in ("openai", "anthropic"):
            return root
    raise TypeError(
        f"tollhouse.instrument() supports openai and anthropic clients, not "
        f"{type(client).__qualname__}; time other clients with tollhouse.track()"
    )


def _host(client: Any) -> str:
    """The default ``backend`` label: the host of the client's base URL."""
    host = getattr(getattr(client, "base_url", None), "host", None)
    return host if isinstance(host, str) and host else "unknown"


def _instrumented_copy(
    inst: Instrumentation, copy: Callable[..., Any], options: dict[str, Any]
) -> Callable[..., Any]:
    @functools.wraps(copy)
    def instrumented(*args: Any, **kwargs: Any) -> Any:
        return instrument_client(inst, copy(*args, **kwargs), **options)

    return instrumented


def patch(resource: Any, name: str, wrap: Callable[[Any], Callable[..., Any]]) -> None:
    """Replace ``resource.name`` with ``wrap(resource.name)`` unless it is already ours."""
    method = getattr(resource, name)
    if getattr(method, _MARK, False):
        return
    wrapped = wrap(method)
    setattr(wrapped, _MARK, True)
    setattr(resource, name, wrapped)


def _passed_through(kwargs: Mapping[str, Any]) -> bool:
    """A raw-response call or an SDK helper's (one of ``_PASS_HEADERS`` is set)."""
    headers = kwargs.get("extra_headers")
    if not headers:
        return False
    return any(str(k).lower() in _PASS_HEADERS for k in headers)


def _never_sent(err: BaseException) -> bool:
    """A ``TypeError`` raised before the SDK reached its HTTP client: a misspelt or
    missing argument. No request left, so there is no call to record."""
    if not isinstance(err, TypeError):
        return False
    tb = err.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("httpx", "httpcore")):
            return False
        tb = tb.tb_next
    return True


def snapshot(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request as it was sent, for a stream's prompt estimate made when the stream
    ends: by then the caller may have appended the answer to its ``messages``."""
    for name in ("messages", "input"):
        value = kwargs.get(name)
        if type(value) is list:
            kwargs[name] = list(value)
    return kwargs


def answered(call: Call, result: Any, api: Api, request: Mapping[str, Any]) -> None:
    """A whole answer arrived: queue it, and the batch reads its usage, model and id.

    Only an answer that reports no usage is read here: its prompt estimate comes
    from the request, which the application may change once the call returns.
    """
    raw = getattr(result, "usage", None)
    if raw is not None and api.reported(raw):
        call.answered(result, api.usage_of)
        return
    usage, source = Usage(input=api.estimate(request)), TokenSource.ESTIMATED
    model = getattr(result, "model", None)
    rid = getattr(result, "id", None)
    call.end(
        Outcome.SUCCESS,
        usage=usage,
        source=source,
        response_model=model if isinstance(model, str) else None,
        request_id=rid if isinstance(rid, str) else None,
    )


def failed(call: Call, err: BaseException, api: Api, request: Mapping[str, Any]) -> None:
    """The SDK raised: classify, record, and let the caller re-raise it unchanged.

    An unreadable 2xx answer means the provider took the prompt, so it is charged
    (estimated), as the gateway does. A call whose arguments the SDK refused before
    sending is dropped: nothing happened upstream.
    """
    if _never_sent(err):
        call.discard()
        return
    failure = classify_exception(err)
    usage, source = ZERO_USAGE, TokenSource.REPORTED
    if failure.error_type is ErrorType.INVALID_RESPONSE:
        usage, source = Usage(input=api.estimate(request)), TokenSource.ESTIMATED
    rid = getattr(err, "request_id", None)
    call.end(
        failure.outcome,
        status=failure.status,
        error_type=failure.error_type,
        usage=usage,
        source=source,
        request_id=rid if isinstance(rid, str) else None,
    )


def sync_wrapper(
    inst: Instrumentation, where: Site, api: Api, stream_type: type
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a synchronous ``create``."""
    operation = api.operation

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def create(*args: Any, **kwargs: Any) -> Any:
            if "extra_headers" in kwargs and _passed_through(kwargs):
                return method(*args, **kwargs)
            call = Call(inst, where, operation, model_name(kwargs), kwargs.get("stream") is True)
            try:
                result = method(*args, **kwargs)
            except BaseException as err:
                failed(call, err, api, kwargs)
                raise
            if isinstance(result, stream_type):
                watch = Watch(call, api.reader, api.estimate, snapshot(kwargs))
                return InstrumentedStream(result, watch)
            answered(call, result, api, kwargs)
            return result

        return create

    return wrap


def async_wrapper(
    inst: Instrumentation, where: Site, api: Api, stream_type: type
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Wrap an asynchronous ``create``."""
    operation = api.operation

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def create(*args: Any, **kwargs: Any) -> Any:
            if "extra_headers" in kwargs and _passed_through(kwargs):
                return await method(*args, **kwargs)
            call = Call(inst, where, operation, model_name(kwargs), kwargs.get("stream") is True)
            try:
                result = await method(*args, **kwargs)
            except BaseException as err:
                failed(call, err, api, kwargs)
                raise
            if isinstance(result, stream_type):
                watch = Watch(call, api.reader, api.estimate, snapshot(kwargs))
                return AsyncInstrumentedStream(result, watch)
            answered(call, result, api, kwargs)
            return result

        return create

    return wrap
