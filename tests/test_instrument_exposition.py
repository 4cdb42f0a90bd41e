"""Exposing library-mode metrics: ``metrics_app`` under a real uvicorn, and
``start_http_server``, both scraped over HTTP with httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

import tollhouse
from tests.test_instrument_helpers import Probe

SAMPLE = (
    'llm_requests_total{backend="none",key="none",model="m",outcome="success",'
    'provider="acme",status_class="2xx",team="none"} 1.0'
)


@pytest.fixture
def probe() -> Probe:
    probe = Probe()
    with tollhouse.track(provider="acme", model="m", instrumentation=probe.inst) as call:
        call.record_usage(input_tokens=5, output_tokens=2)
    return probe


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port, in a thread."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_metrics_app_under_uvicorn(probe: Probe) -> None:
    """The ASGI app alone: Prometheus text, OpenMetrics on request, HEAD, and 405 for POST."""
    with serve(tollhouse.metrics_app(probe.registry)) as url, httpx.Client() as http:
        text = http.get(url + "/metrics")
        assert text.status_code == 200
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert SAMPLE in text.text
        om = http.get(url + "/metrics", headers={"accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        head = http.head(url + "/metrics")
        assert head.status_code == 200 and head.content == b""
        assert http.post(url + "/metrics").status_code == 405


def test_metrics_app_mounted_in_starlette(probe: Probe) -> None:
    """Mounted at ``/metrics`` in an application of the user's."""
    app = Starlette(routes=[Mount("/metrics", app=tollhouse.metrics_app(probe.registry))])
    with serve(app) as url, httpx.Client() as http:
        scraped = http.get(url + "/metrics/")
    assert scraped.status_code == 200 and SAMPLE in scraped.text


def test_start_http_server_scraped_and_closed(probe: Probe) -> None:
    """A standalone server on a free port; ``close()`` frees it."""
    server = tollhouse.start_http_server(0, registry=probe.registry)
    with server, httpx.Client() as http:
        scraped = http.get(server.url)
        assert scraped.status_code == 200 and SAMPLE in scraped.text
        assert 'llm_tokens_total{backend="none",key="none",model="m"' in scraped.text
    with pytest.raises(httpx.ConnectError), httpx.Client() as http:
        http.get(server.url)
