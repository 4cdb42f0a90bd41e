"""Library-mode pieces tested on their own: the SDK exception taxonomy for errors the
mock cannot produce (errors inside a stream), and robustness of the stream watcher."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from prometheus_client import CollectorRegistry

from tollhouse.errors import ErrorType
from tollhouse.instrument.call import Call
from tollhouse.instrument.core import Instrumentation, site
from tollhouse.instrument.errors import classify_exception
from tollhouse.instrument.readers import Tally
from tollhouse.instrument.streams import Watch

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def status_error(sdk: Any, status: int, body: object) -> Exception:
    response = httpx2.Response(status, request=REQUEST)
    error: Exception = sdk.APIStatusError("failed", response=response, body=body)
    return error


@pytest.mark.parametrize(
    ("error", "expected", "status"),
    [
        # An ``error`` object inside an OpenAI stream (HTTP 200 already sent).
        (
            openai.APIError("slow down", REQUEST, body={"code": "rate_limit_exceeded"}),
            "rate_limit",
            429,
        ),
        (openai.APIError("boom", REQUEST, body={"code": "server_error"}), "server_error", 502),
        # Mid-stream, anything but a rate limit is the provider breaking (as in the gateway).
        (
            openai.APIError("too long", REQUEST, body={"code": "context_length_exceeded"}),
            "server_error",
            502,
        ),
        # An Anthropic ``error`` event inside a 200 stream.
        (
            status_error(
                anthropic,
                200,
                {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
            ),
            "server_error",
            502,
        ),
        (
            status_error(
                anthropic,
                400,
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "prompt is too long"},
                },
            ),
            "context_length",
            400,
        ),
        (status_error(openai, 503, {"message": "unavailable"}), "server_error", 503),
        (openai.APITimeoutError(REQUEST), "timeout", 504),
        (anthropic.APIConnectionError(request=REQUEST), "network", 502),
        (httpx2.ConnectTimeout("slow"), "timeout", 504),
        (httpx2.RemoteProtocolError("cut"), "network", 502),
    ],
)
def test_sdk_and_transport_errors(error: Exception, expected: str, status: int) -> None:
    """Each error lands in the gateway's taxonomy; without an HTTP error status, the
    status is the one the gateway answers for that type (429, 400, 502, 504)."""
    failure = classify_exception(error)
    assert (failure.error_type.value, failure.status) == (expected, status)


def test_errors_after_a_stream_started_keep_status_200() -> None:
    """Once a stream answered 200, the recorded status stays 200 whatever broke."""
    failure = classify_exception(openai.APIConnectionError(request=REQUEST), started=True)
    assert (failure.error_type, failure.status) == (ErrorType.NETWORK, 200)


def test_cancellation_is_not_an_error() -> None:
    for err in (asyncio.CancelledError(), KeyboardInterrupt(), GeneratorExit()):
        failure = classify_exception(err)
        assert (failure.outcome.value, failure.status) == ("cancelled", 499)


def test_unreadable_stream_item_never_breaks_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    """A reader that fails on an odd item stops watching (logged once); the call still ends."""
    inst = Instrumentation(CollectorRegistry())
    events: list[Any] = []
    inst.add_sink(events.append)

    def reader(tally: Tally, item: Any) -> bool:
        if item == "odd":
            raise AttributeError("no such field")
        return True

    watch = Watch(Call(inst, site("acme", "b"), "chat", "m", True), reader, lambda r: 4, {})
    for item in ("a", "odd", "b", "c"):
        watch.observe(item)
    watch.exhausted()
    assert [r.message for r in caplog.records].count("stream_item_unreadable model=m") == 1
    inst.flush()
    (event,) = events
    assert (event.outcome.value, event.usage.input, event.usage.output) == ("success", 4, 1)
