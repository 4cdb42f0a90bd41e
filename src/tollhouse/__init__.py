"""tollhouse: an LLM gateway whose numbers are exactly right.

The public surface is small on purpose; everything else lives in subpackages
whose layout ``ARCHITECTURE.md`` describes. Library mode (no proxy) is
``instrument(client)`` for openai/anthropic clients, ``track(...)`` for any
other call, and ``metrics_app``/``start_http_server`` to expose the metrics
(``docs/library.md``).

``tollhouse.instrument`` is both the entry point and a subpackage: the name is
bound (below, after the subpackage is imported) to a callable stand-in that
forwards every other attribute to the subpackage, so ``tollhouse.instrument(c)``,
``tollhouse.instrument.otel`` and ``import tollhouse.instrument.otel`` all work.
Everything but the two entry points loads on first use, so importing tollhouse
stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("tollhouse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

from tollhouse.instrument.api import entry as instrument
from tollhouse.instrument.api import track

if TYPE_CHECKING:
    from tollhouse.instrument.core import Instrumentation
    from tollhouse.instrument.exposition import metrics_app, start_http_server

__all__ = [
    "Instrumentation",
    "__version__",
    "instrument",
    "metrics_app",
    "start_http_server",
    "track",
]


def __getattr__(name: str) -> Any:
    """``Instrumentation``, ``metrics_app`` and ``start_http_server``, imported on first use."""
    if name == "Instrumentation":
        from tollhouse.instrument.core import Instrumentation

        return Instrumentation
    if name in ("metrics_app", "start_http_server"):
        from tollhouse.instrument import exposition

        return getattr(exposition, name)
    raise AttributeError(f"module 'tollhouse' has no attribute {name!r}")
