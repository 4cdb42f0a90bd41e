"""The exact-match response cache: keys, opt-out, stream rebuild and replay, backends."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

import tollhouse.cache
from tests.conftest import need, redis_available
from tollhouse.accounting.usage import Usage
from tollhouse.cache import (
    CachedAnswer,
    MemoryCache,
    RedisCache,
    ResponseCache,
    cache_key,
    decode,
    encode,
    from_stream,
    opted_out,
    strip_flag,
    to_sse,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
DOWN_URL = "redis://127.0.0.1:1/0"

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str = "Paris.", *, cost: Decimal | None = Decimal("0.0000012345")) -> CachedAnswer:
    body = completion([{"role": "assistant", "content": text}])
    return CachedAnswer(orjson.dumps(body), Usage(input=12, output=3, cached_input=4), cost, 1.5)


def completion(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A canonical ``chat.completion`` with one choice per message."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {"index": i, "message": m, "logprobs": None, "finish_reason": "stop"}
            for i, m in enumerate(messages)
        ],
        **extra,
    }


def parse(events: list[bytes]) -> list[dict[str, Any]]:
    """The chunk objects of an SSE stream, checking the framing on the way."""
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = []
    for event in events[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        chunks.append(orjson.loads(event[6:]))
    return chunks


# --- keys ---------------------------------------------------------------------------------


def test_key_ignores_field_order_at_every_depth() -> None:
    """Two bodies that differ only in the order of their fields share a key."""
    a = {"messages": MESSAGES, "temperature": 0.2, "tools": [WEATHER_TOOL]}
    reordered_tool = orjson.loads(orjson.dumps(WEATHER_TOOL, option=orjson.OPT_SORT_KEYS))
    b = {"tools": [reordered_tool], "temperature": 0.2, "messages": MESSAGES}
    assert cache_key("gpt-4o", a) == cache_key("gpt-4o", b)


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},
        {"stream_options": {"include_usage": True}},
        {"user": "alice"},
        {"metadata": {"trace": "t1"}},
        {"cache": False},
        {"store": True},
        {"service_tier": "flex"},
        {"model": "some-upstream-id"},
    ],
)
def test_key_ignores_fields_that_do_not_change_the_answer(extra: dict[str, Any]) -> None:
    """Transport, identity and bookkeeping fields are not part of the key."""
    base = {"model": "gpt-4o", "messages": MESSAGES}
    assert cache_key("gpt-4o", {**base, **extra}) == cache_key("gpt-4o", base)


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 0.7},
        {"max_tokens": 10},
        {"tools": [WEATHER_TOOL]},
        {"tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"seed": 7},
        {"n": 2},
        {"stop": ["\n"]},
        {"some_future_parameter": 1},
    ],
)
def test_key_includes_parameters_that_change_the_answer(extra: dict[str, Any]) -> None:
    """Any parameter that can change the answer (or is unknown) changes the key."""
    base = {"messages": MESSAGES}
    assert cache_key("gpt-4o", {**base, **extra}) != cache_key("gpt-4o", base)


def test_key_uses_the_public_model_name() -> None:
    """The public name is keyed, so every deployment of a group shares entries."""
    body = {"messages": MESSAGES}
    assert cache_key("gpt-4o", {**body, "model": "gpt-4o"}) == cache_key(
        "gpt-4o", {**body, "model": "azure-gpt-4o-eu"}
    )
    assert cache_key("gpt-4o", body) != cache_key("gpt-4o-mini", body)
    assert cache_key("gpt-4o", {**body, "messages": [{"role": "user", "content": "Hi"}]}) != (
        cache_key("gpt-4o", body)
    )


def test_key_scope_separates_tenants() -> None:
    """A scoped key differs from the unscoped key and from other scopes."""
    body = {"messages": MESSAGES}
    keys = {
        cache_key("gpt-4o", body),
        cache_key("gpt-4o", body, scope="team-a"),
        cache_key("gpt-4o", body, scope="team-b"),
    }
    assert len(keys) == 3
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)


# --- opt-out --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ([], {}, False),
        ([(b"cache-control", b"no-cache")], {}, True),
        ([(b"cache-control", b"no-store")], {}, True),
        ([(b"Cache-Control", b"No-Cache")], {}, True),
        ([(b"cache-control", b"max-age=0, no-cache")], {}, True),
        ([(b"cache-control", b"private,no-store")], {}, True),
        ([(b"cache-control", b"max-age=60")], {}, False),
        ([(b"cache-control", b"no-transform")], {}, False),
        ([(b"cache-control", b"max-age=60"), (b"cache-control", b"no-cache")], {}, True),
        ([(b"x-no-cache", b"no-cache")], {}, False),
        ([], {"cache": False}, True),
        ([], {"cache": True}, False),
        ([], {"cache": {"no-cache": True}}, True),
        ([], {"cache": {"no-store": True}}, True),
        ([], {"cache": {"no-cache": False}}, False),
        ([], {"cache": None}, False),
        ([], {"cache": "false"}, False),
    ],
)
def test_opted_out(
    headers: list[tuple[bytes, bytes]], body: dict[str, Any], expected: bool
) -> None:
    """Cache-Control no-cache/no-store or a body flag opts a request out."""
    assert opted_out(headers, body) is expected


def test_strip_flag_removes_only_the_cache_field() -> None:
    """The gateway's flag never reaches the upstream; the caller's body is untouched."""
    body = {"model": "gpt-4o", "messages": MESSAGES, "cache": {"no-cache": True}}
    assert strip_flag(body) == {"model": "gpt-4o", "messages": MESSAGES}
    assert "cache" in body
    plain = {"model": "gpt-4o"}
    assert strip_flag(plain) == plain


# --- stream rebuild and replay ---------------------------------------------------------------


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    return {**base, "model": "gpt-4o-2024-08-06", "choices": choices, **extra}


def delta(d: dict[str, Any], index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return chunk([{"index": index, "delta": d, "logprobs": None, "finish_reason": finish}])


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_from_stream_rebuilds_text_and_usage() -> None:
    """Content pieces concatenate; the usage chunk becomes the body's usage."""
    chunks = [
        delta({"role": "assistant", "content": "", "refusal": None}),
        delta({"content": "The capital"}),
        delta({"content": " is Paris."}),
        delta({}, finish="stop"),
        chunk([], usage=USAGE),
    ]
    message = {"role": "assistant", "content": "The capital is Paris."}
    assert from_stream(chunks) == completion([message], usage=USAGE)


def test_from_stream_skips_chunks_without_choices() -> None:
    """Azure's opening filter-results chunk (empty id, created 0) names nothing."""
    azure_opening = {"id": "", "object": "", "created": 0, "model": "", "choices": []}
    azure_opening["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
    chunks = [
        azure_opening,
        delta({"role": "assistant", "content": "Paris."}),
        delta({}, finish="stop"),
        {"id": "chatcmpl-1", "usage": USAGE},
    ]
    message = {"role": "assistant", "content": "Paris."}
    assert from_stream(chunks) == completion([message], usage=USAGE)


def test_from_stream_merges_tool_calls_by_index() -> None:
    """Two tool calls, arguments in pieces, id and name repeated by the server."""
    call0 = {"index": 0, "id": "call_a", "type": "function"}
    chunks = [
        delta({"role": "assistant", "content": None}),
        delta({"tool_calls": [{**call0, "function": {"name": "get_weather", "arguments": ""}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        delta({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "get_time"}}]}),
        delta(
            {
                "tool_calls": [
                    {**call0, "function": {"name": "get_weather", "arguments": '"Paris"}'}}
                ]
            }
        ),
        delta({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        delta({}, finish="tool_calls"),
    ]
    rebuilt = from_stream(chunks)
    assert rebuilt is not None
    assert rebuilt["choices"][0]["finish_reason"] == "tool_calls"
    assert rebuilt["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    }
    assert "usage" not in rebuilt


def test_from_stream_rebuilds_interleaved_choices() -> None:
    """n > 1: chunks of several choices interleave; each is rebuilt by its index."""
    chunks = [
        delta({"role": "assistant", "content": ""}, index=1),
        delta({"role": "assistant", "content": ""}, index=0),
        delta({"content": "B"}, index=1),
        delta({"content": "A"}, index=0),
        delta({}, index=1, finish="length"),
        delta({}, index=0, finish="stop"),
    ]
    rebuilt = from_stream(chunks)
    assert rebuilt is not None
    assert [
        (c["index"], c["message"]["content"], c["finish_reason"]) for c in rebuilt["choices"]
    ] == [
        (0, "A", "stop"),
        (1, "B", "length"),
    ]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([], id="empty"),
        pytest.param(
            [delta({"role": "assistant"}), delta({"content": "Par"})], id="never-finished"
        ),
        pytest.param(
            [
                delta({"content": "Par"}),
                {"error": {"message": "overloaded"}},
                delta({}, finish="stop"),
            ],
            id="error-chunk",
        ),
        pytest.param(
            [
                delta({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f"}}]}),
                delta({"tool_calls": [{"index": 0, "id": "call_b", "function": {"name": "f"}}]}),
                delta({}, finish="tool_calls"),
            ],
            id="tool-call-id-changes",
        ),
        pytest.param(
            [
                delta({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}),
                delta({}, finish="tool_calls"),
            ],
            id="tool-call-without-id",
        ),
        pytest.param(
            [
                delta({"audio": {"id": "a1"}}),
                delta({"audio": {"data": "AAAA"}}),
                delta({}, finish="stop"),
            ],
            id="object-in-pieces",
        ),
        pytest.param([chunk("nope"), delta({}, finish="stop")], id="choices-not-a-list"),  # type: ignore[arg-type]
    ],
)
def test_from_stream_refuses_what_it_cannot_rebuild(chunks: list[dict[str, Any]]) -> None:
    """A stream that would not rebuild exactly is not cached at all."""
    assert from_stream(chunks) is None


ROUND_TRIPS = {
    "text": completion(
        [{"role": "assistant", "content": "Paris is the capital and largest city of France. " * 3}],
        usage=USAGE,
    ),
    "empty-content": completion([{"role": "assistant", "content": ""}]),
    "tool-calls": completion(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Paris", "unit": "celsius"}',
                        },
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    },
                ],
            }
        ],
        usage=USAGE,
        system_fingerprint="fp_1",
    ),
    "text-and-tool": completion(
        [
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            }
        ]
    ),
    "refusal-and-reasoning": completion(
        [
            {
                "role": "assistant",
                "content": None,
                "refusal": "I can't help with that.",
                "reasoning_content": "Hmm.",
            }
        ]
    ),
    "n-2": completion(
        [{"role": "assistant", "content": "One"}, {"role": "assistant", "content": "Two"}]
    ),
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
@pytest.mark.parametrize("include_usage", [True, False])
def test_replay_round_trips(name: str, include_usage: bool) -> None:
    """from_stream(to_sse(x)) gives x back: choices always, usage when it was replayed."""
    original = ROUND_TRIPS[name]
    rebuilt = from_stream(parse(to_sse(orjson.dumps(original), include_usage)))
    assert rebuilt is not None
    assert rebuilt["choices"] == original["choices"]
    expected = original if include_usage else {k: v for k, v in original.items() if k != "usage"}
    assert rebuilt == expected


def test_replay_with_logprobs_round_trips() -> None:
    """A choice's logprobs travel whole and come back merged."""
    logprobs = {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    }
    original = completion([{"role": "assistant", "content": "Hi"}])
    original["choices"][0]["logprobs"] = logprobs
    rebuilt = from_stream(parse(to_sse(orjson.dumps(original), False)))
    assert rebuilt == original


def test_replay_sends_several_content_chunks_and_usage_only_when_asked() -> None:
    """A long answer arrives in ~16-character chunks; the usage chunk has no choices."""
    text = "x" * 100
    body = orjson.dumps(completion([{"role": "assistant", "content": text}], usage=USAGE))
    chunks = parse(to_sse(body, include_usage=True))
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    pieces = [c for c in contents if c]
    assert len(pieces) == 7 and all(len(p) <= 16 for p in pieces)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    assert chunks[-1] == {**chunk([]), "usage": USAGE}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    without = parse(to_sse(body, include_usage=False))
    assert all(c["choices"] and "usage" not in c for c in without)


def test_replay_of_a_body_that_is_not_a_completion_raises_value_error() -> None:
    """Only chat.completion bodies can be replayed; anything else is a ValueError."""
    with pytest.raises(ValueError, match=r"chat\.completion"):
        to_sse(b'{"object": "list", "data": []}', include_usage=False)


# --- storage encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("cost", [Decimal("0.0000058888876"), None, Decimal(0)])
def test_encode_decode_round_trip(cost: Decimal | None) -> None:
    """The body comes back byte for byte, with usage and cost as they were."""
    original = CachedAnswer(
        b'{"id": "x",\n "choices": []}', Usage(10, 20, 3, 4, 5), cost, 1700000000.25
    )
    assert decode(encode(original)) == original


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json\n{}",
        b'{"v": 99, "usage": {}, "cost": null, "created": 1}\n{}',
        b'{"v": 1, "usage": {"input": 1, "output": 0, "cached_input": 0, "cache_write_input": 0, "reasoning": 0}, "cost_nusd": null, "created": 1}\n{}',
        b'{"v": 2, "usage": {"input": 1}, "cost": null, "created": 1}\n{}',
        b'{"v": 2, "usage": {"input": 1.5, "output": 0, "cached_input": 0, "cache_write_input": 0, "reasoning": 0}, "cost": null, "created": 1}\n{}',
        b'{"v": 2, "usage": {"input": 1, "output": 0, "cached_input": 0, "cache_write_input": 0, "reasoning": 0}, "cost": 1, "created": 1}\n{}',
        b'{"v": 2, "usage": {"input": 1, "output": 0, "cached_input": 0, "cache_write_input": 0, "reasoning": 0}, "cost": "one", "created": 1}\n{}',
        b'{"v": 2, "usage": {"input": 1, "output": 0, "cached_input": 0, "cache_write_input": 0, "reasoning": 0}, "cost": "NaN", "created": 1}\n{}',
        b'{"v": 2, "usage": {"input": 1, "output": 0, "cached_input": 0, "cache_write_input": 0, "reasoning": 0}, "cost": null, "created": 1}',
    ],
)
def test_decode_rejects_what_encode_did_not_write(raw: bytes) -> None:
    """Damaged or foreign values are a ValueError, which the Redis backend treats as a miss."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case fails for its own reason
        decode(raw)


# --- memory backend ------------------------------------------------------------------------------


async def test_memory_cache_evicts_the_least_recently_used() -> None:
    """At capacity the entry read or written longest ago goes first."""
    cache = MemoryCache(max_entries=2)
    await cache.put("a", answer("A"), ttl=60)
    await cache.put("b", answer("B"), ttl=60)
    assert await cache.get("a") is not None  # a is now more recent than b
    await cache.put("c", answer("C"), ttl=60)
    assert await cache.get("b") is None
    assert await cache.get("a") == answer("A")
    assert await cache.get("c") == answer("C")
    assert len(cache) == 2


async def test_memory_cache_expires_entries_by_the_clock() -> None:
    """An entry is served until its ttl has passed on the injected clock."""
    clock = FakeClock()
    cache = MemoryCache(max_entries=10, clock=clock)
    await cache.put("a", answer(), ttl=30)
    clock.now += 29.9
    assert await cache.get("a") == answer()
    clock.now += 0.1
    assert await cache.get("a") is None
    assert len(cache) == 0


async def test_memory_cache_rewrite_renews_the_ttl() -> None:
    """Putting a key again replaces its answer and its expiry."""
    clock = FakeClock()
    cache = MemoryCache(max_entries=10, clock=clock)
    await cache.put("a", answer("old"), ttl=10)
    clock.now += 8
    await cache.put("a", answer("new"), ttl=10)
    clock.now += 8
    assert await cache.get("a") == answer("new")
    assert len(cache) == 1


async def test_memory_cache_bounds_bytes() -> None:
    """With max_bytes, old entries go until the bodies fit; a body too big alone is skipped."""
    small = answer("s")
    cache = MemoryCache(max_entries=100, max_bytes=len(small.body) * 2)
    for key in ("a", "b", "c"):
        await cache.put(key, small, ttl=60)
    assert [await cache.get(k) is not None for k in ("a", "b", "c")] == [False, True, True]
    assert cache.bytes == len(small.body) * 2
    await cache.put("huge", answer("x" * 1000), ttl=60)
    assert await cache.get("huge") is None
    assert len(cache) == 2


def test_memory_cache_needs_room_for_one_entry() -> None:
    """A cache that could hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="max_entries"):
        MemoryCache(max_entries=0)


# --- the contract, over every backend --------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ResponseCache]:
    """The same tests against process memory and against Redis."""
    if request.param == "memory":
        memory = MemoryCache(max_entries=100)
        yield memory
        await memory.aclose()
        return
    need(redis_available(), "Redis is not reachable at 127.0.0.1:6379")
    prefix = f"tollhouse-test-cache-{uuid.uuid4().hex[:8]}:"
    shared = RedisCache(REDIS_URL, prefix)
    try:
        yield shared
        assert shared.errors == 0
    finally:
        await shared.aclose()
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def test_contract_get_of_a_missing_key_is_none(cache: ResponseCache) -> None:
    """Nothing stored, nothing served."""
    assert await cache.get("missing") is None


async def test_contract_put_then_get_returns_the_answer(cache: ResponseCache) -> None:
    """An answer comes back equal, usage, cost and body bytes included."""
    stored = CachedAnswer(b'{"id":"x"}', Usage(5, 7, 1, 0, 2), None, 1700000000.5)
    await cache.put("k", stored, ttl=60)
    assert await cache.get("k") == stored
    await cache.put("k", answer("newer"), ttl=60)
    assert await cache.get("k") == answer("newer")


async def test_contract_entries_expire_after_their_ttl(cache: ResponseCache) -> None:
    """A short ttl really expires, while a long one on another key does not."""
    await cache.put("short", answer(), ttl=0.05)
    await cache.put("long", answer(), ttl=60)
    await asyncio.sleep(0.15)
    assert await cache.get("short") is None
    assert await cache.get("long") == answer()


async def test_contract_nonpositive_ttl_stores_nothing(cache: ResponseCache) -> None:
    """ttl <= 0 means do not cache, not cache forever."""
    await cache.put("zero", answer(), ttl=0)
    await cache.put("negative", answer(), ttl=-1)
    assert await cache.get("zero") is None
    assert await cache.get("negative") is None


# --- Redis failures --------------------------------------------------------------------------------


async def test_redis_down_is_a_miss_and_a_skipped_write(caplog: pytest.LogCaptureFixture) -> None:
    """No exception reaches the request; each failure counts; warnings are rate limited."""
    clock = FakeClock()
    down = RedisCache(DOWN_URL, "tollhouse-test:", clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="tollhouse.cache"):
            assert await down.get("k") is None
            await down.put("k", answer(), ttl=60)
            assert down.errors == 2
            clock.now += 61
            assert await down.get("k") is None
    finally:
        await down.aclose()
    assert down.errors == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "tollhouse.cache"]
    assert len(warnings) == 2
    assert "cache_redis_failed operation=get error=ConnectionError errors=1" in warnings[0]


async def test_redis_value_it_cannot_read_is_a_miss() -> None:
    """A damaged or foreign value under our key is served as a miss and counted."""
    need(redis_available(), "Redis is not reachable at 127.0.0.1:6379")
    prefix = f"tollhouse-test-cache-{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(REDIS_URL)
    shared = RedisCache(REDIS_URL, prefix)
    try:
        await client.set(prefix + "k", b"garbage", px=60_000)
        assert await shared.get("k") is None
        assert shared.errors == 1
    finally:
        await shared.aclose()
        await client.delete(prefix + "k")
        await client.aclose()


def test_public_names_are_pinned() -> None:
    """The package's public surface changes only on purpose."""
    assert sorted(tollhouse.cache.__all__) == sorted(
        [
            "IGNORED",
            "CachedAnswer",
            "MemoryCache",
            "RedisCache",
            "ResponseCache",
            "cache_key",
            "decode",
            "encode",
            "from_stream",
            "opted_out",
            "strip_flag",
            "to_sse",
        ]
    )
