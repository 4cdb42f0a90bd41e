"""Library mode: the gateway's metrics from inside an application, with no proxy.

``instrument(client)`` wraps an ``openai`` or ``anthropic`` client instance;
``track(...)`` times any other call; ``metrics_app``/``start_http_server``
expose the metrics; ``OTelExporter`` (``tollhouse.instrument.otel``) mirrors
the events into OpenTelemetry's GenAI metrics. ``docs/library.md`` is the
guide.

Modules: ``core`` (the ``Instrumentation`` that owns metrics, prices and
sinks), ``call`` (one call → one ``UsageEvent``), ``clients``/``openai_sdk``/
``anthropic_sdk`` (the wrappers), ``streams`` (stream proxies), ``readers``
(usage out of SDK objects), ``errors`` (SDK exceptions → ``ErrorType``),
``tracker`` (``track()``), ``exposition``, ``otel``.

Only ``api`` is imported eagerly; the rest loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tollhouse.instrument.api import instrument, track

if TYPE_CHECKING:
    from tollhouse.instrument.core import Instrumentation
    from tollhouse.instrument.exposition import metrics_app, start_http_server
    from tollhouse.instrument.tracker import current_call

__all__ = [
    "Instrumentation",
    "current_call",
    "instrument",
    "metrics_app",
    "start_http_server",
    "track",
]

_LAZY = {
    "Instrumentation": "tollhouse.instrument.core",
    "metrics_app": "tollhouse.instrument.exposition",
    "start_http_server": "tollhouse.instrument.exposition",
    "current_call": "tollhouse.instrument.tracker",
}


_MODULES = frozenset(
    {
        "anthropic_sdk", "api", "call", "clients", "core", "errors", "exposition",
        "openai_sdk", "otel", "readers", "streams", "tracker",
    }
)  # fmt: skip


def __getattr__(name: str) -> Any:
    """The lazy names above, and submodules on first attribute access."""
    import importlib

    module = _LAZY.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
