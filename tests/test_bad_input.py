"""Bad input gets a clear OpenAI-style error with the right status, is counted, and the
gateway keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import mock_config, run_gateway

GOOD = b'{"model":"chat","messages":[{"role":"user","content":"hi"}]}'

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
