"""Library mode records finished calls in batches, off the caller's path.

What must hold: the drainer thread records every queued call without anyone
asking; a scrape right after a call is exact; a caller records its own
backlog when the drainer falls behind; calls still queued at interpreter exit
are recorded; a forked child (whose copy of the process has no drainer
thread) records its calls too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tollhouse.accounting.event import UsageEvent
from tollhouse.instrument import core, drain
from tollhouse.instrument.core import Instrumentation


def _wait_for(events: list[Any], n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(events) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_drainer_thread_records_calls_without_a_flush() -> None:
    """Nobody flushes or scrapes: the events still reach the sinks, on the drainer thread."""
    threads: list[str] = []
    inst = Instrumentation(CollectorRegistry())
    inst.add_sink(lambda event: threads.append(threading.current_thread().name))
    for _ in range(3):
        with inst.track(provider="acme", model="m"):
            pass
    _wait_for(threads, 3)
    assert threads == ["tollhouse-drain"] * 3


def test_a_scrape_right_after_calls_from_many_threads_is_exact() -> None:
    """Calls queued by several threads are all in the very next scrape."""
    registry = CollectorRegistry()
    inst = Instrumentation(registry)

    def calls() -> None:
        for _ in range(50):
            with inst.track(provider="acme", model="m") as call:
                call.record_usage(input_tokens=3, output_tokens=5)

    workers = [threading.Thread(target=calls) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    labels = {"model": "m", "backend": "none", "provider": "acme", "key": "none", "team": "none"}
    requests = registry.get_sample_value(
        "llm_requests_total", {**labels, "outcome": "success", "status_class": "2xx"}
    )
    assert requests == 200
    tokens = {**labels, "type": "output", "source": "reported"}
    assert registry.get_sample_value("llm_tokens_total", tokens) == 1000
    assert registry.get_sample_value("llm_requests_in_flight", {"model": "m"}) == 0


def test_a_caller_records_the_backlog_when_the_drainer_falls_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the drainer stalled, the call that fills the queue records it itself."""
    monkeypatch.setattr(core, "MAX_PENDING", 3)
    monkeypatch.setattr(drain.drainer, "schedule", lambda target: None)  # a stalled thread
    events: list[UsageEvent] = []
    inst = Instrumentation(CollectorRegistry(), sinks=[events.append])
    for _ in range(2):
        with inst.track(provider="acme", model="m"):
            pass
    assert events == []  # queued, waiting for a batch
    with inst.track(provider="acme", model="m"):
        pass
    assert len(events) == 3


def test_calls_queued_at_exit_are_recorded() -> None:
    """A script that exits right after its last call still hands that call to its sinks."""
    script = textwrap.dedent(
        """
        from prometheus_client import CollectorRegistry
        from tollhouse.instrument.core import Instrumentation

        inst = Instrumentation(
            CollectorRegistry(), sinks=[lambda e: print("recorded", e.model, flush=True)]
        )
        with inst.track(provider="acme", model="last-call"):
            pass
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["recorded last-call"], done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_records_its_calls() -> None:
    """The drainer thread does not survive fork(); the child starts its own."""
    events: list[UsageEvent] = []
    inst = Instrumentation(CollectorRegistry(), sinks=[events.append])
    with inst.track(provider="acme", model="parent"):
        pass
    _wait_for(events, 1)  # the parent's drainer thread is running now
    assert len(events) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: no pytest teardown here, only an exit status
        code = 1
        try:
            with inst.track(provider="acme", model="child"):
                pass
            _wait_for(events, 2)
            code = 0 if [e.model for e in events] == ["parent", "child"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_in_flight_counts_only_calls_still_running_at_the_scrape() -> None:
    """The gauge is counted by the batch, not the call: a call open across a scrape
    is in it, one that started and ended between two scrapes never is, and the
    series exists (at 0) from the first call."""
    registry = CollectorRegistry()
    inst = Instrumentation(registry)

    def in_flight() -> float | None:
        return registry.get_sample_value("llm_requests_in_flight", {"model": "m"})

    with inst.track(provider="acme", model="m"):
        pass
    assert in_flight() == 0
    with inst.track(provider="acme", model="m"):
        assert in_flight() == 1  # started, not yet ended: the scrape counts it
        with inst.track(provider="acme", model="m"):
            assert in_flight() == 2
        assert in_flight() == 1
    assert in_flight() == 0
    outer = inst.track(provider="acme", model="m")
    outer.__enter__()
    with inst.track(provider="acme", model="m"):
        pass  # starts and ends with no scrape between: never counted, never taken off
    assert in_flight() == 1
    outer.__exit__(None, None, None)
    assert in_flight() == 0


def test_an_answer_without_usage_is_estimated_from_the_request_as_sent() -> None:
    """Usage is read by the batch, but an answer with none is estimated at once:
    the application may append to its ``messages`` as soon as the call returns."""
    import httpx2 as httpx  # the HTTP library openai 3.x is built on
    import openai
    import orjson

    from tollhouse.accounting.tokens import estimate_prompt_tokens

    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"},
            }
        ],
    }

    def handle(request: Any) -> Any:
        return httpx.Response(200, content=orjson.dumps(answer))

    registry = CollectorRegistry()
    inst = Instrumentation(registry)
    events: list[UsageEvent] = []
    inst.add_sink(events.append)
    client = openai.OpenAI(
        base_url="http://local.test/v1",
        api_key="k",
        http_client=httpx.Client(transport=httpx.MockTransport(handle)),
    )
    inst.instrument(client)
    messages: list[Any] = [{"role": "user", "content": "hello there"}]
    expected = estimate_prompt_tokens(messages)
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    messages.append({"role": "assistant", "content": "a much longer reply " * 50})
    inst.flush()
    (event,) = events
    assert event.token_source.value == "estimated"
    assert event.usage.input == expected
    assert (event.request_id, event.upstream_model) == ("chatcmpl-1", "gpt-4o-mini")
