"""Bad input gets a clear OpenAI-style error with the right status, is counted, and the
gateway keeps serving."""

from __future__ import annotations

import gzip
import logging
import socket
import time
from typing import Any

import httpx
import pytest

from tests.conftest import mock_config, run_gateway

GOOD = b'{"model":"chat","messages":[{"role":"user","content":"hi"}]}'
DEEP = b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"input":"x","x":' + (
    b"[" * 300 + b"]" * 300 + b"}"
)
USER = b'{"model":"chat","messages":[{"role":"user","content":"hi"}],"user":%s}'

CASES: list[tuple[str, str, bytes, int, str, str | None]] = [
    # (name, path, body, status, code, param)
    ("invalid json", "/v1/chat/completions", b'{"model": "chat", ', 400, "invalid_json", None),
    ("empty body", "/v1/chat/completions", b"", 400, "invalid_json", None),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400, "invalid_request", None),
    (
        "missing model",
        "/v1/chat/completions",
        b'{"messages":[{"role":"user","content":"x"}]}',
        400,
        "invalid_request",
        "model",
    ),
    (
        "model wrong type",
        "/v1/chat/completions",
        b'{"model":7,"messages":[]}',
        400,
        "invalid_request",
        "model",
    ),
    (
        "missing messages",
        "/v1/chat/completions",
        b'{"model":"chat"}',
        400,
        "invalid_request",
        "messages",
    ),
    (
        "message not object",
        "/v1/chat/completions",
        b'{"model":"chat","messages":["hi"]}',
        400,
        "invalid_request",
        "messages",
    ),
    (
        "stream wrong type",
        "/v1/chat/completions",
        b'{"model":"chat","stream":"yes","messages":[{"role":"user","content":"x"}]}',
        400,
        "invalid_request",
        "stream",
    ),
    (
        "max_tokens wrong type",
        "/v1/chat/completions",
        b'{"model":"chat","max_tokens":"9","messages":[{"role":"user","content":"x"}]}',
        400,
        "invalid_request",
        "max_tokens",
    ),
    (
        "unknown model",
        "/v1/chat/completions",
        b'{"model":"gpt-nope","messages":[{"role":"user","content":"x"}]}',
        404,
        "model_not_found",
        "model",
    ),
    (
        "embeddings missing input",
        "/v1/embeddings",
        b'{"model":"embed"}',
        400,
        "invalid_request",
        "input",
    ),
    (
        "embeddings bad input",
        "/v1/embeddings",
        b'{"model":"embed","input":[1.5]}',
        400,
        "invalid_request",
        "input",
    ),
    # orjson reads 1024 levels but writes 254, and the gateway writes the body again for
    # the upstream: a 300-deep field was a 500 that blamed the backend.
    ("nested too deep", "/v1/chat/completions", DEEP % b"chat", 400, "invalid_json", None),
    ("embeddings nested too deep", "/v1/embeddings", DEEP % b"embed", 400, "invalid_json", None),
    ("user wrong type", "/v1/chat/completions", USER % b"5", 400, "invalid_request", "user"),
    (
        "user too long",
        "/v1/chat/completions",
        USER % (b'"' + b"u" * 257 + b'"'),
        400,
        "invalid_request",
        "user",
    ),
    (
        "embeddings user wrong type",
        "/v1/embeddings",
        b'{"model":"embed","input":"x","user":5}',
        400,
        "invalid_request",
        "user",
    ),
    (
        "embeddings user too long",
        "/v1/embeddings",
        b'{"model":"embed","input":"x","user":"' + b"u" * 257 + b'"}',
        400,
        "invalid_request",
        "user",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_rejected_counted_and_survived(
    name: str, path: str, body: bytes, status: int, code: str, param: str | None
) -> None:
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status
        error: dict[str, Any] = r.json()["error"]
        assert error["code"] == code and error["param"] == param
        assert error["message"] and error["type"] == "invalid_request_error"
        assert r.headers["x-request-id"]
        event = gw.wait_events(1)[0]
        assert (event.status, event.outcome.value) == (status, "error")
        expected_type = "not_found" if status == 404 else "bad_request"
        assert gw.total("llm_errors_total", error_type=expected_type) == 1
        assert gw.total("llm_requests_total", outcome="error", status_class="4xx") == 1
        # still serving
        assert http.post("/v1/chat/completions", content=GOOD).status_code == 200


def test_unknown_model_is_not_a_label_value() -> None:
    """A client-chosen model name must not create a series (unbounded cardinality)."""
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        for i in range(5):
            http.post(
                "/v1/chat/completions",
                json={"model": f"made-up-{i}", "messages": [{"role": "user", "content": "x"}]},
            )
        gw.wait_events(5)
        assert (
            gw.metric(
                "llm_requests_total",
                model="none",
                backend="none",
                provider="none",
                key="anonymous",
                team="none",
                outcome="error",
                status_class="4xx",
            )
            == 5
        )
        scrape = http.get("/metrics").text
        assert "made-up" not in scrape


def test_body_over_limit_is_413_whether_declared_or_streamed() -> None:
    with run_gateway(mock_config(max_body_bytes=2048)) as gw, httpx.Client(base_url=gw.url) as http:
        big = b'{"model":"chat","messages":[{"role":"user","content":"' + b"x" * 4000 + b'"}]}'
        r = http.post("/v1/chat/completions", content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks() -> Any:  # no content-length: chunked transfer, counted as it arrives
            yield big[:1000]
            yield big[1000:]

        r = http.post("/v1/chat/completions", content=chunks())
        assert r.status_code == 413
        gw.wait_events(2)
        assert gw.total("llm_errors_total", error_type="payload_too_large") == 2
        assert http.post("/v1/chat/completions", content=GOOD).status_code == 200


def test_wrong_method_and_unknown_route() -> None:
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        r = http.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert gw.wait_events(1)[0].status == 405
        r = http.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_deep_but_writable_bodies_and_bracket_heavy_ones_are_served() -> None:
    """The depth limit (128) leaves room for real bodies: a field 100 levels deep goes
    through, and so does a long conversation whose many brackets nest only 3 deep."""
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        deep = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        nested: Any = []
        for _ in range(99):
            nested = [nested]
        deep["x"] = nested
        assert http.post("/v1/chat/completions", json=deep).status_code == 200
        turns = [{"role": "user", "content": [{"type": "text", "text": "[{}]"}]}] * 200
        r = http.post("/v1/chat/completions", json={"model": "chat", "messages": turns})
        assert r.status_code == 200
        assert [e.outcome.value for e in gw.wait_events(2)] == ["success", "success"]


def test_a_compressed_body_is_415_and_counted() -> None:
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        r = http.post("/v1/chat/completions", content=gzip.compress(GOOD),
                      headers={"content-encoding": "gzip"})  # fmt: skip
        assert r.status_code == 415
        error = r.json()["error"]
        assert error["code"] == "unsupported_content_encoding" and "gzip" in error["message"]
        assert gw.wait_events(1)[0].status == 415
        assert gw.total("llm_errors_total", error_type="bad_request") == 1
        ok = http.post("/v1/chat/completions", content=GOOD,
                       headers={"content-encoding": "identity"})  # fmt: skip
        assert ok.status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_leaves_mid_body_is_cancelled_and_nothing_goes_upstream(
    framing: str,
) -> None:
    """The part of a body that arrived is not a request the client made: before, it was
    sent upstream and billed (or, cut inside the JSON, recorded as the client's bad
    input)."""
    whole = b'{"model":"chat","messages":[{"role":"user","content":"hello world"}]}'
    if framing == "content-length":
        head = f"Content-Length: {len(whole) + 40}\r\n".encode()
        sent = whole  # valid JSON, 40 bytes short of what was declared
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        sent = b"%x\r\n%s\r\n" % (len(whole), whole)  # no closing 0-size chunk
    with run_gateway(mock_config()) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n" + head +
                         b"Content-Type: application/json\r\n\r\n" + sent)  # fmt: skip
            time.sleep(0.2)
        event = gw.wait_events(1)[0]
        assert (event.outcome.value, event.status, event.model) == ("cancelled", 499, "none")
        assert event.attempts == () and event.usage.input == 0
        assert gw.total("llm_upstream_requests_total") == 0
        assert gw.total("llm_requests_total", outcome="cancelled") == 1


def test_an_unknown_route_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A client calling an endpoint the gateway lacks is visible to the operator: 404s
    leave no UsageEvent (no model, no usage) but count by method and log their path."""
    caplog.set_level(logging.INFO, logger="tollhouse")
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.url) as http:
        assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 404
        assert http.get("/v1/nothing-here").status_code == 404
        assert http.request("PROPFIND", "/v1/x").status_code == 404
        assert gw.total("tollhouse_unrouted_requests_total") == 3
        for method in ("POST", "GET", "other"):
            assert gw.metric("tollhouse_unrouted_requests_total", method=method) == 1
    logged = [r.getMessage() for r in caplog.records if "route_not_found" in r.getMessage()]
    assert any("method=POST path=/v1/completions" in line for line in logged)
