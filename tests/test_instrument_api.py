"""The public surface of library mode: what ``tollhouse`` exports, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

import tollhouse
from tollhouse.instrument import api, core


def test_all_is_pinned() -> None:
    """``tollhouse.__all__`` changes only on purpose, and every name resolves."""
    assert sorted(tollhouse.__all__) == [
        "Instrumentation",
        "__version__",
        "instrument",
        "metrics_app",
        "start_http_server",
        "track",
    ]
    for name in tollhouse.__all__:
        assert getattr(tollhouse, name) is not None
    assert tollhouse.instrument is api.entry and tollhouse.track is api.track
    assert tollhouse.Instrumentation is core.Instrumentation


def test_import_is_cheap() -> None:
    """``import tollhouse`` loads neither an SDK nor prometheus_client nor pydantic."""
    code = (
        "import sys, tollhouse; "
        "print(sorted(m for m in ('openai', 'anthropic', 'prometheus_client', 'pydantic', "
        "'tollhouse.instrument.core') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_instrument_is_callable_and_a_package() -> None:
    """``tollhouse.instrument`` calls like a function and reaches the subpackage's
    modules every way they can be written."""
    import tollhouse.instrument.otel as imported
    from tollhouse.instrument import otel, streams

    assert tollhouse.instrument.otel is imported is otel
    assert tollhouse.instrument.streams is streams
    assert tollhouse.instrument.current_call is tollhouse.instrument.tracker.current_call
    assert tollhouse.instrument.track is tollhouse.track
    assert callable(tollhouse.instrument)
    with pytest.raises(AttributeError):
        tollhouse.instrument.no_such_thing  # noqa: B018


def test_unknown_client_is_refused() -> None:
    """Anything but an openai/anthropic client is a clear ``TypeError`` pointing at ``track``."""
    with pytest.raises(TypeError, match=r"tollhouse\.track"):
        tollhouse.instrument(object(), instrumentation=core.Instrumentation(CollectorRegistry()))


def test_default_instrumentation_is_shared_and_on_the_global_registry() -> None:
    """Without ``instrumentation=``, one instance on prometheus_client's ``REGISTRY``."""
    from prometheus_client import REGISTRY

    first = core.default_instrumentation()
    assert first is core.default_instrumentation() and first.registry is REGISTRY
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    claude = anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="sk-test")
    with tollhouse.instrument(client) as c, tollhouse.instrument(claude) as a:
        assert getattr(c.chat.completions.create, "__tollhouse__", False)
        assert getattr(a.messages.stream, "__tollhouse__", False)
