"""The mock upstream speaks the real SDKs' wire formats and its ledger tells the truth.

Everything else (gateway accounting tests, the benchmark) trusts this mock as ground
truth, so these tests drive it with the real ``openai`` and ``anthropic`` SDKs and with
raw aiohttp, and check that what the clients saw is exactly what the ledger says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from bench.mock_upstream import LedgerEntry, MockUpstream, parse_behaviour
from tollhouse.accounting.tokens import estimate_input_tokens, estimate_prompt_tokens
from tollhouse.accounting.usage import Usage

SYSTEM = "You are terse."
QUESTION = "hello there, how are you today?"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": QUESTION},
]
CLAUDE_MESSAGES: list[MessageParam] = [{"role": "user", "content": QUESTION}]
PROMPT_TOKENS = estimate_prompt_tokens(MESSAGES)


@pytest.fixture
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream() as up:
        yield up


@pytest.fixture
def oai(upstream: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.base_url + "/v1", api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(upstream: MockUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=upstream.base_url, api_key="k", max_retries=0) as client:
        yield client


def only_entry(up: MockUpstream) -> LedgerEntry:
    entries = up.ledger()
    assert len(entries) == 1, entries
    return entries[0]


async def wait_for_outcome(up: MockUpstream, outcome: str) -> LedgerEntry:
    """The server notices a disconnect asynchronously; give it a moment."""
    deadline = time.monotonic() + 5
    while True:
        entry = only_entry(up)
        if entry.outcome == outcome or time.monotonic() > deadline:
            return entry
        await asyncio.sleep(0.01)


def test_behaviour_tokens_parse_in_any_order() -> None:
    b = parse_behaviour("gpt-4o-hang-after-3-delay-50-cache")
    assert (b.hang_after, b.delay_ms, b.cache, b.hang, b.fail) == (3, 50, True, False, None)
    b = parse_behaviour("fail-400-ctx-m")
    assert (b.fail, b.ctx) == (400, True)
    assert parse_behaviour("m-hang").hang
    assert parse_behaviour("bench-model") == parse_behaviour("")


def test_openai_non_stream_usage_matches_ledger(upstream: MockUpstream, oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-cache-reason-3", messages=MESSAGES, max_tokens=7
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 "
    usage = reply.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 7)
    assert usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == PROMPT_TOKENS // 2
    assert usage.completion_tokens_details.reasoning_tokens == 3
    entry = only_entry(upstream)
    assert entry.usage == Usage(PROMPT_TOKENS, 7, PROMPT_TOKENS // 2, 0, 3)
    assert (entry.api, entry.stream, entry.status, entry.outcome) == ("chat", False, 200, "ok")
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - PROMPT_TOKENS - 7)
    assert raw.headers["x-request-id"] == entry.request_id


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_stream_one_chunk_per_token_and_include_usage(
    upstream: MockUpstream, oai: openai.OpenAI, include_usage: bool
) -> None:
    stream = oai.chat.completions.create(
        model="gpt",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": include_usage},
        extra_headers={"x-request-id": "caller-id"},
    )
    with stream:
        chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert contents[0] == ""  # the role chunk
    assert contents[1:17] == [f"tok{i} " for i in range(16)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0].choices == []
        assert usage_chunks[0].usage is not None
        assert usage_chunks[0].usage.prompt_tokens == PROMPT_TOKENS
        assert usage_chunks[0].usage.completion_tokens == 16
    else:
        assert usage_chunks == []
    entry = only_entry(upstream)
    assert entry.request_id == "caller-id"
    assert (entry.input, entry.output, entry.stream, entry.outcome) == (
        PROMPT_TOKENS,
        16,
        True,
        "ok",
    )


def test_embeddings_are_deterministic_in_both_encodings(
    upstream: MockUpstream, oai: openai.OpenAI
) -> None:
    texts = ["alpha", "a longer piece of text"]
    as_base64 = oai.embeddings.create(model="emb", input=texts)  # the SDK asks for base64
    as_float = oai.embeddings.create(model="emb", input=texts, encoding_format="float")
    assert [d.embedding for d in as_base64.data] == [d.embedding for d in as_float.data]
    assert len(as_float.data) == 2
    assert len(as_float.data[0].embedding) == 8
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert as_float.usage.prompt_tokens == estimate_input_tokens(texts)
    assert upstream.totals(api="embeddings") == Usage(input=2 * estimate_input_tokens(texts))


def test_fail_429_raises_the_sdks_rate_limit_error(
    upstream: MockUpstream, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.RateLimitError) as oai_error:
        oai.chat.completions.create(model="gpt-fail-429", messages=MESSAGES)
    assert oai_error.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="claude-fail-429", messages=CLAUDE_MESSAGES, max_tokens=4)
    with pytest.raises(openai.BadRequestError) as ctx_error:
        oai.chat.completions.create(model="gpt-fail-400-ctx", messages=MESSAGES)
    assert ctx_error.value.code == "context_length_exceeded"
    assert [(e.status, e.outcome, e.usage) for e in upstream.ledger()] == [
        (429, "error", Usage()),
        (429, "error", Usage()),
        (400, "error", Usage()),
    ]


def test_anthropic_counts_system_as_one_message_and_splits_cache(
    upstream: MockUpstream, claude: anthropic.Anthropic
) -> None:
    message = claude.messages.create(
        model="claude-cache",
        system=SYSTEM,
        messages=CLAUDE_MESSAGES,
        max_tokens=5,
    )
    usage = message.usage
    read, write = PROMPT_TOKENS // 2, PROMPT_TOKENS // 4
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (read, write)
    assert usage.input_tokens + read + write == PROMPT_TOKENS  # same as the OpenAI request
    assert (usage.output_tokens, message.stop_reason) == (5, "end_turn")
    assert only_entry(upstream).usage == Usage(PROMPT_TOKENS, 5, read, write, 0)


def test_anthropic_stream_matches_ledger(
    upstream: MockUpstream, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(
        model="claude-length", messages=CLAUDE_MESSAGES, max_tokens=6
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert (final.usage.output_tokens, final.stop_reason) == (6, "max_tokens")
    entry = only_entry(upstream)
    assert (entry.input, entry.output, entry.outcome) == (final.usage.input_tokens, 6, "ok")


async def test_hang_after_3_is_cancelled_with_output_3_once_the_client_leaves(
    upstream: MockUpstream,
) -> None:
    async with openai.AsyncOpenAI(
        base_url=upstream.base_url + "/v1", api_key="k", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="gpt-hang-after-3", messages=MESSAGES, stream=True
        )
        words = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content)
            if len(words) == 3:
                break
        # Right away, before any disconnect: the tokens are already on the books.
        assert only_entry(upstream).output == 3
        await stream.close()
    entry = await wait_for_outcome(upstream, "cancelled")
    assert (entry.output, entry.outcome, entry.status) == (3, "cancelled", 200)


async def test_drop_after_2_ends_the_stream_early(upstream: MockUpstream) -> None:
    body = {"model": "m-drop-after-2", "messages": MESSAGES, "stream": True}
    url = upstream.base_url + "/v1/chat/completions"
    lines: list[bytes] = []

    async def read_all(resp: aiohttp.ClientResponse) -> None:
        async for line in resp.content:
            lines.append(line)

    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_all(resp)
    data = [line for line in lines if line.startswith(b"data: ")]
    assert len(data) == 3  # role chunk + two words, no finish chunk, no [DONE]
    assert b"tok1 " in data[-1]
    entry = only_entry(upstream)
    assert (entry.output, entry.outcome) == (2, "dropped")


async def test_hang_never_answers_and_is_cancelled_on_timeout(upstream: MockUpstream) -> None:
    body = {"model": "m-hang", "messages": MESSAGES}
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(upstream.base_url + "/v1/chat/completions", json=body)
    entry = await wait_for_outcome(upstream, "cancelled")
    assert (entry.status, entry.output, entry.outcome) == (0, 0, "cancelled")


async def test_delay_and_malformed(upstream: MockUpstream) -> None:
    url = upstream.base_url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(url, json={"model": "m-delay-50", "messages": MESSAGES}) as r:
            assert r.status == 200
            await r.read()
        assert time.monotonic() - started >= 0.05
        async with session.post(url, json={"model": "m-malformed", "messages": MESSAGES}) as r:
            assert (r.status, await r.read()) == (200, b"{not json")
        body = {"model": "m-malformed", "messages": MESSAGES, "stream": True}
        async with session.post(url, json=body) as r:
            assert (await r.read()).startswith(b"data: {not json\n")
    assert [e.outcome for e in upstream.ledger()] == ["ok", "malformed", "malformed"]


def test_models_and_rate_limit_headers_count_down(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    listing = oai.models.with_raw_response.list()
    assert "bench-model" in [model.id for model in listing.parse().data]
    assert listing.headers["x-ratelimit-remaining-requests"] == "10000"  # listing is free
    for served in (1, 2):
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt", messages=MESSAGES, max_tokens=1
        )
        assert raw.headers["x-ratelimit-remaining-requests"] == str(10_000 - served)
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(
            1_000_000 - served * (PROMPT_TOKENS + 1)
        )
    reply = claude.messages.with_raw_response.create(
        model="claude", messages=CLAUDE_MESSAGES, max_tokens=2
    )
    assert reply.headers["anthropic-ratelimit-requests-remaining"] == "9999"
    input_tokens = reply.parse().usage.input_tokens
    assert reply.headers["anthropic-ratelimit-tokens-remaining"] == str(
        1_000_000 - input_tokens - 2
    )
