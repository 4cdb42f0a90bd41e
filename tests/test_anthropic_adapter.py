"""Unit tests for the Anthropic Messages adapter: translation both ways, streaming, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers.anthropic import AnthropicAdapter
from tollhouse.providers.anthropic_stream import AnthropicStreamTranslator
from tollhouse.providers.base import Adapter, RateLimitInfo, StreamTranslator, Target

NOW = 1_700_000_000
MODEL = "claude-sonnet-4-20250514"
TARGET = Target(
    backend="claude",
    provider="anthropic",
    base_url="https://api.anthropic.com/",
    upstream_model=MODEL,
    api_key="sk-ant-secret",
    default_max_tokens=1024,
)


def _adapter() -> AnthropicAdapter:
    return AnthropicAdapter(clock=lambda: NOW + 0.75)


def _payload(body: dict[str, Any], target: Target = TARGET, stream: bool = False) -> Any:
    return orjson.loads(_adapter().chat_request(body, target, stream=stream).body)


def _user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_satisfies_the_protocols() -> None:
    adapter: Adapter = _adapter()
    translator: StreamTranslator = adapter.chat_stream(TARGET, client_wants_usage=False)
    assert adapter.provider == "anthropic"
    assert isinstance(translator, AnthropicStreamTranslator)


# --------------------------------------------------------------------------- requests


def test_request_url_headers_and_encoding() -> None:
    target = Target(
        backend="b",
        provider="anthropic",
        base_url="https://gw.example/anthropic/",
        upstream_model=MODEL,
        api_key="k1",
        headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    req = _adapter().chat_request({"messages": [_user()]}, target, stream=True)
    assert req.method == "POST"
    assert req.url == "https://gw.example/anthropic/v1/messages"
    assert req.headers == {
        "x-api-key": "k1",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "anthropic-beta": "prompt-caching-2024-07-31",
    }
    assert req.stream is True
    assert orjson.loads(req.body) == {
        "model": MODEL,
        "messages": [_user()],
        "max_tokens": 4096,
        "stream": True,
    }


def test_request_without_api_key_sends_no_key_header() -> None:
    target = Target(backend="b", provider="anthropic", base_url="http://local", upstream_model="m")
    req = _adapter().chat_request({"messages": [_user()]}, target, stream=False)
    assert "x-api-key" not in req.headers
    assert req.url == "http://local/v1/messages"
    assert "stream" not in orjson.loads(req.body)


REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "system and developer messages hoisted and joined",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                _user(),
            ]
        },
        {"system": "Be brief.\n\nUse French.", "messages": [_user()], "max_tokens": 1024},
    ),
    (
        "max_tokens passed through",
        {"messages": [_user()], "max_tokens": 50},
        {"messages": [_user()], "max_tokens": 50},
    ),
    (
        "max_completion_tokens wins over max_tokens",
        {"messages": [_user()], "max_tokens": 50, "max_completion_tokens": 70},
        {"messages": [_user()], "max_tokens": 70},
    ),
    (
        "sampling params kept, stop string listed, user to metadata, unknowns dropped",
        {
            "messages": [_user()],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "user": "u-42",
            "frequency_penalty": 0.5,
            "logprobs": True,
            "seed": 7,
            "stream_options": {"include_usage": True},
            "n": 1,
        },
        {
            "messages": [_user()],
            "max_tokens": 1024,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-42"},
        },
    ),
    (
        "stop list",
        {"messages": [_user()], "stop": ["a", "b"]},
        {"messages": [_user()], "max_tokens": 1024, "stop_sequences": ["a", "b"]},
    ),
    (
        "images: data URL to base64 source, https URL to url source",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBOR",
                            },
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                    ],
                }
            ],
            "max_tokens": 1024,
        },
    ),
    (
        "assistant tool calls and consecutive tool results merged into one user turn",
        {
            "messages": [
                _user("weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_2",
                    "content": [{"type": "text", "text": "24C"}],
                },
                {"role": "assistant", "content": "Paris 18C, Rome 24C."},
            ]
        },
        {
            "messages": [
                _user("weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "24C"}],
                        },
                    ],
                },
                {"role": "assistant", "content": "Paris 18C, Rome 24C."},
            ],
            "max_tokens": 1024,
        },
    ),
    (
        "assistant with only tool calls and null content has no text block",
        {
            "messages": [
                _user(),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ],
                },
            ]
        },
        {
            "messages": [
                _user(),
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
            ],
            "max_tokens": 1024,
        },
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b, e) for _, b, e in REQUEST_CASES],
    ids=[name for name, _, _ in REQUEST_CASES],
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert _payload(body) == {"model": MODEL, **expected}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
BARE_TOOL = {"type": "function", "function": {"name": "now"}}
ANTHROPIC_TOOLS = [
    {
        "name": "weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {"name": "now", "input_schema": {"type": "object", "properties": {}}},
]


@pytest.mark.parametrize(
    ("extra", "expected_choice"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
            {"type": "tool", "name": "weather"},
        ),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            {"parallel_tool_calls": False, "tool_choice": "required"},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
        ({"parallel_tool_calls": False, "tool_choice": "none"}, {"type": "none"}),
    ],
)
def test_tools_and_tool_choice(
    extra: dict[str, Any], expected_choice: dict[str, Any] | None
) -> None:
    body = {"messages": [_user()], "tools": [WEATHER_TOOL, BARE_TOOL], **extra}
    payload = _payload(body)
    assert payload["tools"] == ANTHROPIC_TOOLS
    assert payload.get("tool_choice") == expected_choice


def test_tool_choice_dropped_without_tools() -> None:
    payload = _payload({"messages": [_user()], "tools": [], "tool_choice": "auto"})
    assert "tools" not in payload
    assert "tool_choice" not in payload


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [_user()], "n": 2}, "n must be 1"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "'input_audio' is not supported",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}],
                    }
                ]
            },
            "data: or http(s)",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,xx"}}
                        ],
                    }
                ]
            },
            "base64",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "t", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    }
                ]
            },
            "not valid JSON",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "role 'function'"),
        ({"messages": "hi"}, "must be a list"),
        (
            {"messages": [_user()], "tools": [WEATHER_TOOL], "tool_choice": "sometimes"},
            "tool_choice",
        ),
    ],
)
def test_untranslatable_requests_are_bad_requests(body: dict[str, Any], words: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _adapter().chat_request(body, TARGET, stream=False)
    assert info.value.error_type is ErrorType.BAD_REQUEST
    assert words in info.value.message


def test_embeddings_are_bad_requests() -> None:
    adapter = _adapter()
    with pytest.raises(UpstreamError) as info:
        adapter.embeddings_request({"input": "x"}, TARGET)
    assert info.value.error_type is ErrorType.BAD_REQUEST
    assert info.value.message == "anthropic has no embeddings API"
    with pytest.raises(UpstreamError) as info:
        adapter.parse_embeddings(b"{}", TARGET)
    assert info.value.error_type is ErrorType.BAD_REQUEST


# --------------------------------------------------------------------------- responses

TEXT_ANSWER = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 2000,
        "output_tokens": 6,
    },
}
TOOL_ANSWER = {
    "id": "msg_02",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 40, "cache_creation_input_tokens": None, "output_tokens": 22},
}


def test_parse_text_answer_with_cache_usage() -> None:
    parsed = _adapter().parse_chat(orjson.dumps(TEXT_ANSWER), TARGET)
    assert parsed.usage == Usage(input=2312, output=6, cached_input=2000, cache_write_input=300)
    assert parsed.model == MODEL
    assert orjson.loads(parsed.body) == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": NOW,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 2312,
            "completion_tokens": 6,
            "total_tokens": 2318,
            "prompt_tokens_details": {"cached_tokens": 2000},
        },
    }


def test_parse_tool_use_answer() -> None:
    parsed = _adapter().parse_chat(orjson.dumps(TOOL_ANSWER), TARGET)
    assert parsed.usage == Usage(input=40, output=22)
    body = orjson.loads(parsed.body)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ]
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_finish_reason_mapping(stop_reason: str, finish: str) -> None:
    answer = {**TEXT_ANSWER, "stop_reason": stop_reason}
    body = orjson.loads(_adapter().parse_chat(orjson.dumps(answer), TARGET).body)
    assert body["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    "payload",
    [b"<html>bad gateway</html>", b"[]", b'{"id":"msg","type":"message"}', b'{"content":"x"}'],
)
def test_unreadable_answers_are_invalid_responses(payload: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        _adapter().parse_chat(payload, TARGET)
    assert info.value.error_type is ErrorType.INVALID_RESPONSE


# --------------------------------------------------------------------------- streams


def _sse(*events: dict[str, Any]) -> list[bytes]:
    """Frame events the way Anthropic does: ``event:`` line, ``data:`` line, blank line."""
    lines: list[bytes] = []
    for ev in events:
        lines += [b"event: " + ev["type"].encode(), b"data: " + orjson.dumps(ev), b""]
    return lines


MESSAGE_START: dict[str, Any] = {
    "type": "message_start",
    "message": {
        "id": "msg_01XF",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": MODEL,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": 1,
        },
    },
}
TEXT_STREAM = _sse(
    MESSAGE_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
)
TOOL_STREAM = _sse(
    {**MESSAGE_START, "message": {**MESSAGE_START["message"], "usage": {"input_tokens": 472}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Ok."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01T1", "name": "weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ""},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89},
    },
    {"type": "message_stop"},
)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "msg_01XF",
        "object": "chat.completion.chunk",
        "created": NOW,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _run(lines: list[bytes], *, wants_usage: bool) -> tuple[StreamTranslator, list[bytes]]:
    translator = _adapter().chat_stream(TARGET, client_wants_usage=wants_usage)
    out: list[bytes] = []
    for line in lines:
        out += translator.feed(line)
    out += translator.finish()
    return translator, out


def _decode(events: list[bytes]) -> list[Any]:
    for ev in events:
        assert ev.startswith(b"data: ")
        assert ev.endswith(b"\n\n")
    return [ev if ev == b"data: [DONE]\n\n" else orjson.loads(ev[6:]) for ev in events]


TEXT_USAGE = Usage(input=2125, output=15, cached_input=2000, cache_write_input=100)
TEXT_CHUNKS = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hello"}),
    _chunk({"content": "!"}),
    _chunk({}, "stop"),
]
USAGE_CHUNK = {
    "id": "msg_01XF",
    "object": "chat.completion.chunk",
    "created": NOW,
    "model": MODEL,
    "choices": [],
    "usage": {
        "prompt_tokens": 2125,
        "completion_tokens": 15,
        "total_tokens": 2140,
        "prompt_tokens_details": {"cached_tokens": 2000},
    },
}


@pytest.mark.parametrize(
    ("wants_usage", "tail"),
    [(False, [b"data: [DONE]\n\n"]), (True, [USAGE_CHUNK, b"data: [DONE]\n\n"])],
)
def test_text_stream(wants_usage: bool, tail: list[Any]) -> None:
    translator, out = _run(TEXT_STREAM, wants_usage=wants_usage)
    assert _decode(out) == TEXT_CHUNKS + tail
    assert translator.content_chunks == 2
    assert translator.usage == TEXT_USAGE
    assert translator.done is True
    assert translator.error is None


def test_tool_stream() -> None:
    translator, out = _run(TOOL_STREAM, wants_usage=True)
    start = {"index": 0, "id": "toolu_01T1", "type": "function"}
    assert _decode(out)[:-2] == [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Ok."}),
        _chunk({"tool_calls": [{**start, "function": {"name": "weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        _chunk({}, "tool_calls"),
    ]
    assert _decode(out)[-2]["usage"]["completion_tokens"] == 89
    assert translator.content_chunks == 3
    assert translator.usage == Usage(input=472, output=89)


def test_stream_usage_is_known_at_message_start_and_output_is_cumulative() -> None:
    translator = _adapter().chat_stream(TARGET, client_wants_usage=True)
    for line in _sse(MESSAGE_START):
        translator.feed(line)
    assert translator.usage == Usage(input=2125, output=0, cached_input=2000, cache_write_input=100)
    for output in (3, 10, 15):
        translator.feed(
            b"data: "
            + orjson.dumps(
                {"type": "message_delta", "delta": {}, "usage": {"output_tokens": output}}
            )
        )
    assert translator.usage == TEXT_USAGE
    assert translator.done is False


def test_stream_without_message_start_still_closes() -> None:
    translator, out = _run(
        [b": comment", b"event: ping", b'data: {"type":"ping"}'], wants_usage=True
    )
    assert out == [b"data: [DONE]\n\n"]
    assert translator.usage is None
    assert translator.content_chunks == 0


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", ErrorType.SERVER_ERROR),
        ("rate_limit_error", ErrorType.RATE_LIMIT),
        ("api_error", ErrorType.SERVER_ERROR),
        ("invalid_request_error", ErrorType.BAD_REQUEST),
        ("authentication_error", ErrorType.AUTH),
        ("brand_new_error", ErrorType.UNKNOWN),
    ],
)
def test_in_stream_error_event(error_type: str, expected: ErrorType) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    lines = TEXT_STREAM[:12] + _sse(error)  # dies after the first text delta
    translator, out = _run(lines, wants_usage=False)
    assert _decode(out) == [*TEXT_CHUNKS[:2], b"data: [DONE]\n\n"]
    assert translator.error is not None
    assert translator.error.error_type is expected
    assert translator.error.message == "Overloaded"
    assert translator.error.status is None
    assert translator.content_chunks == 1
    assert translator.done is False


def test_unreadable_stream_line_is_an_invalid_response() -> None:
    translator = _adapter().chat_stream(TARGET, client_wants_usage=False)
    assert translator.feed(b"data: {not json") == []
    assert translator.error is not None
    assert translator.error.error_type is ErrorType.INVALID_RESPONSE


# --------------------------------------------------------------------------- errors


def _err(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "payload", "headers", "expected", "message", "retry"),
    [
        (
            429,
            _err("rate_limit_error", "Slow down"),
            {"retry-after": "12"},
            ErrorType.RATE_LIMIT,
            "Slow down",
            12.0,
        ),
        (
            429,
            b"",
            {"retry-after-ms": "1500"},
            ErrorType.RATE_LIMIT,
            "anthropic returned HTTP 429",
            1.5,
        ),
        (
            529,
            _err("overloaded_error", "Overloaded"),
            {},
            ErrorType.SERVER_ERROR,
            "Overloaded",
            None,
        ),
        (529, b"", {}, ErrorType.SERVER_ERROR, "anthropic returned HTTP 529", None),
        (
            401,
            _err("authentication_error", "invalid x-api-key"),
            {},
            ErrorType.AUTH,
            "invalid x-api-key",
            None,
        ),
        (403, _err("permission_error", "no access"), {}, ErrorType.AUTH, "no access", None),
        (
            413,
            _err("request_too_large", "Request exceeds the maximum size"),
            {},
            ErrorType.CONTEXT_LENGTH,
            "Request exceeds the maximum size",
            None,
        ),
        (
            413,
            b"<html>too big</html>",
            {},
            ErrorType.CONTEXT_LENGTH,
            "anthropic returned HTTP 413",
            None,
        ),
        (
            400,
            _err("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            {},
            ErrorType.CONTEXT_LENGTH,
            "prompt is too long: 210000 tokens > 200000 maximum",
            None,
        ),
        (
            400,
            _err("invalid_request_error", "max_tokens: Field required"),
            {},
            ErrorType.BAD_REQUEST,
            "max_tokens: Field required",
            None,
        ),
        (
            404,
            _err("not_found_error", "model: claude-9"),
            {},
            ErrorType.NOT_FOUND,
            "model: claude-9",
            None,
        ),
        (
            500,
            _err("api_error", "Internal server error"),
            {},
            ErrorType.SERVER_ERROR,
            "Internal server error",
            None,
        ),
        (
            504,
            _err("api_error", "upstream timed out"),
            {},
            ErrorType.TIMEOUT,
            "upstream timed out",
            None,
        ),
        (504, b"gateway timeout", {}, ErrorType.TIMEOUT, "anthropic returned HTTP 504", None),
        (408, b"", {}, ErrorType.TIMEOUT, "anthropic returned HTTP 408", None),
        (502, b"[1, 2]", {}, ErrorType.SERVER_ERROR, "anthropic returned HTTP 502", None),
    ],
)
def test_classify(
    status: int,
    payload: bytes,
    headers: dict[str, str],
    expected: ErrorType,
    message: str,
    retry: float | None,
) -> None:
    err = _adapter().classify(status, payload, headers)
    assert (err.error_type, err.message, err.status, err.retry_after) == (
        expected,
        message,
        status,
        retry,
    )


def test_classify_never_repeats_header_values() -> None:
    headers = {"x-api-key": "sk-ant-secret", "request-id": "req_abc", "retry-after": "3"}
    err = _adapter().classify(401, _err("authentication_error", "invalid x-api-key"), headers)
    assert "sk-ant-secret" not in str(err)
    assert "req_abc" not in str(err)


# --------------------------------------------------------------------------- rate limits


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-tokens-remaining": "39000",
                "x-ratelimit-remaining-requests": "1",
            },
            RateLimitInfo(remaining_requests=49.0, remaining_tokens=39000.0),
        ),
        ({"anthropic-ratelimit-tokens-remaining": "7"}, RateLimitInfo(remaining_tokens=7.0)),
        ({"anthropic-ratelimit-requests-remaining": "lots"}, RateLimitInfo()),
        ({}, RateLimitInfo()),
    ],
)
def test_rate_limits(headers: dict[str, str], expected: RateLimitInfo) -> None:
    assert _adapter().rate_limits(headers) == expected
