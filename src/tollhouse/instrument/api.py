"""``tollhouse.instrument(client)`` and ``tollhouse.track(...)``: the one-line entry points.

They record into the process-wide ``Instrumentation`` on prometheus_client's
global ``REGISTRY`` unless given one of your own (``instrumentation=``). This
module imports nothing heavy: prometheus_client, pricing and the SDK wrappers
load on the first call, so ``import tollhouse`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tollhouse.instrument.core import Instrumentation, PriceSpec
    from tollhouse.instrument.tracker import Tracker

C = TypeVar("C")
NONE = "none"


def _resolve(instrumentation: Instrumentation | None) -> Instrumentation:
    if instrumentation is not None:
        return instrumentation
    from tollhouse.instrument.core import default_instrumentation

    return default_instrumentation()


def instrument(
    client: C,
    *,
    backend: str | None = None,
    provider: str | None = None,
    key: str = NONE,
    team: str = NONE,
    prices: PriceSpec | Mapping[str, PriceSpec] | None = None,
    price_provider: str | None = None,
    instrumentation: Instrumentation | None = None,
) -> C:
    """Record every call ``client`` makes as a ``UsageEvent`` — the gateway's metrics, no proxy.

    ``client`` is an ``openai.OpenAI``/``AsyncOpenAI`` or an
    ``anthropic.Anthropic``/``AsyncAnthropic``; it is changed in place (only this
    instance) and returned. Labels: ``model`` is the model asked for,
    ``provider`` the SDK (or ``provider=``), ``backend`` the base URL's host (or
    ``backend=``), ``key``/``team`` as given. Cost comes from genai-prices for
    ``price_provider`` (default: the provider), unless ``prices=`` gives one
    price (``{"input": "2.5", "output": "10"}``, USD per million tokens) or one
    per model (``{"my-model": {...}}``). Instrumenting a client twice does nothing.
    """
    return _resolve(instrumentation).instrument(
        client,
        backend=backend,
        provider=provider,
        key=key,
        team=team,
        prices=prices,
        price_provider=price_provider,
    )


def track(
    *,
    provider: str,
    model: str,
    operation: str = "chat",
    backend: str = NONE,
    stream: bool = False,
    key: str = NONE,
    team: str = NONE,
    prices: PriceSpec | None = None,
    price_provider: str | None = None,
    instrumentation: Instrumentation | None = None,
) -> Tracker:
    """Time a call made by any other client, as a context manager or a decorator.

    ``with tollhouse.track(provider="mistral", model="mistral-large") as call:``
    then ``call.record_usage(input_tokens=..., output_tokens=...)`` and, for
    streams, ``call.first_token()``. Exceptions are classified, recorded and
    re-raised.
    """
    return _resolve(instrumentation).track(
        provider=provider,
        model=model,
        operation=operation,
        backend=backend,
        stream=stream,
        key=key,
        team=team,
        prices=prices,
        price_provider=price_provider,
    )


class InstrumentEntry:
    """``tollhouse.instrument``: call it to instrument a client (see ``instrument``);
    any other attribute is the ``tollhouse.instrument`` package's.

    One name is both the one-line entry point and a subpackage. A plain function
    bound over the subpackage would break ``import tollhouse.instrument.otel`` and
    ``tollhouse.instrument.otel`` attribute paths; this stand-in forwards them.
    """

    __slots__ = ()
    __call__ = staticmethod(instrument)

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("tollhouse.instrument"), name)

    def __repr__(self) -> str:
        return "<tollhouse.instrument: call with a client, or use its modules>"


entry = InstrumentEntry()
