"""The OpenAI-compatible wire format (and Azure's URL shape): pure translation and classification."""

from __future__ import annotations

import orjson
import pytest

from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers.base import Target
from tollhouse.providers.openai import AzureOpenAIAdapter, OpenAIAdapter, OpenAIStream

T = Target(backend="b", provider="openai", base_url="http://up/v1/", upstream_model="real-model",
           api_key="k", headers={"x-extra": "1"})  # fmt: skip


def test_chat_request_rewrites_model_and_asks_for_stream_usage() -> None:
    body = {"model": "public", "messages": [], "temperature": 0.2, "stream": True}
    req = OpenAIAdapter().chat_request(body, T, stream=True)
    sent = orjson.loads(req.body)
    assert req.url == "http://up/v1/chat/completions" and req.stream
    assert sent["model"] == "real-model" and sent["temperature"] == 0.2
    assert sent["stream_options"] == {"include_usage": True}
    assert req.headers["authorization"] == "Bearer k" and req.headers["x-extra"] == "1"
    assert (
        body["model"] == "public" and "stream_options" not in body
    )  # the client's body is untouched


def test_stream_usage_can_be_turned_off_for_servers_that_reject_it() -> None:
    target = Target(backend="b", provider="openai", base_url="http://up/v1", upstream_model="m",
                    stream_usage=False)  # fmt: skip
    req = OpenAIAdapter().chat_request({"model": "x", "messages": []}, target, stream=True)
    assert "stream_options" not in orjson.loads(req.body)
    assert "authorization" not in req.headers


def test_azure_uses_deployment_url_api_version_and_api_key_header() -> None:
    target = Target(backend="az", provider="azure", base_url="https://res.openai.azure.com",
                    upstream_model="my-deploy", api_key="azk", api_version="2024-10-21")  # fmt: skip
    adapter = AzureOpenAIAdapter()
    chat = adapter.chat_request({"model": "x", "messages": []}, target, stream=False)
    emb = adapter.embeddings_request({"model": "x", "input": "a"}, target)
    base = "https://res.openai.azure.com/openai/deployments/my-deploy"
    assert chat.url == f"{base}/chat/completions?api-version=2024-10-21"
    assert emb.url == f"{base}/embeddings?api-version=2024-10-21"
    assert chat.headers["api-key"] == "azk" and "authorization" not in chat.headers


def test_parse_chat_reads_usage_details() -> None:
    payload = orjson.dumps({"choices": [], "model": "m", "usage": {
        "prompt_tokens": 10, "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 3}}})  # fmt: skip
    parsed = OpenAIAdapter().parse_chat(payload, T)
    assert parsed.usage == Usage(input=10, output=7, cached_input=4, reasoning=3)
    assert parsed.body == payload  # relayed byte for byte


@pytest.mark.parametrize("payload", [b"not json", b'{"no": "choices"}', b"[]"])
def test_unreadable_answers_are_invalid_responses(payload: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        OpenAIAdapter().parse_chat(payload, T)
    assert info.value.error_type is ErrorType.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, ErrorType.RATE_LIMIT),
        (401, {"error": {"message": "bad key"}}, ErrorType.AUTH),
        (403, {"error": {"message": "forbidden"}}, ErrorType.AUTH),
        (400, {"error": {"message": "This model's maximum context length is 8192 tokens",
                         "code": "context_length_exceeded"}}, ErrorType.CONTEXT_LENGTH),
        (400, {"error": {"message": "flagged", "code": "content_filter"}}, ErrorType.CONTENT_FILTER),
        (400, {"error": {"message": "bad param"}}, ErrorType.BAD_REQUEST),
        (404, {"error": {"message": "no such model"}}, ErrorType.NOT_FOUND),
        (408, {"error": "timeout"}, ErrorType.TIMEOUT),
        (500, {"error": {"message": "boom"}}, ErrorType.SERVER_ERROR),
        (503, "<html>down</html>", ErrorType.SERVER_ERROR),
        (504, {}, ErrorType.TIMEOUT),
    ],
)  # fmt: skip
def test_classify(status: int, body: object, expected: ErrorType) -> None:
    payload = body.encode() if isinstance(body, str) else orjson.dumps(body)
    err = OpenAIAdapter().classify(status, payload, {"retry-after": "7"})
    assert err.error_type is expected and err.status == status and err.retry_after == 7


def test_rate_limit_headers() -> None:
    info = OpenAIAdapter().rate_limits(
        {"x-ratelimit-remaining-requests": "99", "x-ratelimit-remaining-tokens": "1500"}
    )
    assert (info.remaining_requests, info.remaining_tokens) == (99, 1500)
    assert OpenAIAdapter().rate_limits({}).remaining_requests is None


def chunk(delta: dict[str, object], usage: dict[str, int] | None = None) -> bytes:
    data: dict[str, object] = {
        "id": "c",
        "choices": [{"index": 0, "delta": delta}] if delta else [],
    }
    if usage:
        data["usage"] = usage
    return b"data: " + orjson.dumps(data)


def test_stream_relays_raw_chunks_counts_content_and_withholds_usage_chunk() -> None:
    s = OpenAIStream(client_wants_usage=False)
    role = chunk({"role": "assistant", "content": ""})
    assert s.feed(role) == [role + b"\n\n"] and s.content_chunks == 0
    assert s.feed(b"") == [] and s.feed(b": keep-alive comment") == []
    assert s.feed(chunk({"content": "hi"})) and s.content_chunks == 1
    assert s.feed(chunk({}, {"prompt_tokens": 5, "completion_tokens": 1})) == []
    assert s.usage == Usage(input=5, output=1)
    assert s.feed(b"data: [DONE]") == [] and s.done
    assert s.finish() == [b"data: [DONE]\n\n"]


def test_stream_usage_on_a_content_chunk_is_stripped_for_clients_that_did_not_ask() -> None:
    s = OpenAIStream(client_wants_usage=False)
    out = s.feed(chunk({"content": "x"}, {"prompt_tokens": 2, "completion_tokens": 1}))
    assert "usage" not in orjson.loads(out[0][6:]) and s.usage == Usage(input=2, output=1)
    keep = OpenAIStream(client_wants_usage=True)
    line = chunk({}, {"prompt_tokens": 2, "completion_tokens": 1})
    assert keep.feed(line) == [line + b"\n\n"]


def test_stream_errors() -> None:
    s = OpenAIStream(client_wants_usage=False)
    s.feed(b"data: {broken")
    assert s.error is not None and s.error.error_type is ErrorType.INVALID_RESPONSE
    s = OpenAIStream(client_wants_usage=False)
    s.feed(b'data: {"error": {"message": "overloaded", "code": "server_error"}}')
    assert s.error is not None and s.error.error_type is ErrorType.SERVER_ERROR
