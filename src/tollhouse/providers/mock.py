"""The ``mock`` provider: an in-process upstream that speaks the OpenAI wire format.

It exists so that ``tollhouse serve`` answers with no API key, and so fault
tests are one-liners: the behaviour is chosen by the upstream model id, a list
of dash-separated tokens in any order:

``fail-NNN``        answer HTTP NNN with an OpenAI error body (429 adds ``retry-after: 1``)
``ctx``             with ``fail-400``: the error is OpenAI's ``context_length_exceeded``
``delay-N``         wait N ms before answering
``chunkdelay-N``    wait N ms between stream chunks
``hang``            never answer: the backend's ``read`` timeout fires
``hang-after-K``    stream K tokens, then go silent: ``stream_idle`` fires
``drop-after-K``    stream K tokens, then the connection breaks
``malformed``       answer 200 with a body that is not JSON
``cache``           report half the prompt as cached input tokens
``reason-N``        report N of the output tokens as reasoning tokens
``length``          finish with ``length`` (the answer was cut at ``max_tokens``), not ``stop``
``embed``           nothing special; any mock model also serves embeddings

Token counts are deterministic: the prompt is counted with the gateway's
documented estimator, and the answer has ``max_tokens`` words (one token per
word, one word per stream chunk), or as many words as the last user message
when ``max_tokens`` is absent. The answer echoes the user's words.

The same grammar drives ``bench/mock_upstream.py``, the HTTP mock the tests and the
benchmark use, so a model name means one thing to both mocks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from tollhouse.accounting.tokens import estimate_input_tokens, estimate_prompt_tokens, text_chars
from tollhouse.config.schema import Timeouts
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers.base import UpstreamRequest

MAX_WORDS = 4096


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What a model id asks a mock to do. ``delay_ms`` is ``None`` when the id names
    no delay, so the HTTP mock can fall back to its own default."""

    fail: int | None = None
    ctx: bool = False
    delay_ms: int | None = None
    chunk_delay_ms: int = 0
    hang: bool = False
    hang_after: int | None = None
    drop_after: int | None = None
    malformed: bool = False
    cache: bool = False
    reasoning: int = 0
    length: bool = False


_NUMERIC = {
    "fail": "fail",
    "delay": "delay_ms",
    "chunkdelay": "chunk_delay_ms",
    "reason": "reasoning",
}
_FLAGS = frozenset(("ctx", "hang", "malformed", "cache", "length"))


@lru_cache(maxsize=4096)
def parse_behaviour(model: str) -> Behaviour:
    """Read the behaviour tokens out of a mock model id (unknown words are ignored).

    Cached: a benchmark or a busy default install sends the same few ids over and over.
    """
    words = model.lower().split("-")
    opts: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
        after = words[i + 2] if i + 2 < len(words) else ""
        if word in _NUMERIC and nxt.isdigit():
            opts[_NUMERIC[word]] = int(nxt)
            i += 2
        elif word in ("hang", "drop") and nxt == "after" and after.isdigit():
            opts["hang_after" if word == "hang" else "drop_after"] = int(after)
            i += 3
        else:
            if word in _FLAGS:
                opts[word] = True
            i += 1
    return Behaviour(**opts)


def _finish_reason(how: Behaviour) -> str:
    return "length" if how.length else "stop"


def answer_words(body: Mapping[str, Any]) -> list[str]:
    """The deterministic answer: the last user message's words, cycled to the wanted length."""
    messages = body.get("messages")
    source: list[str] = []
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                text = content if isinstance(content, str) else " " * text_chars(content)
                source = text.split()
                break
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    count = limit if isinstance(limit, int) and limit > 0 else max(1, len(source))
    count = min(count, MAX_WORDS)
    return list(itertools.islice(itertools.cycle(source or ["ok"]), count))


class MockResponse:
    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes = b"",
        lines: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers
        self._body = body
        self._lines = lines

    async def read(self) -> bytes:
        return self._body

    async def iter_lines(self) -> AsyncIterator[bytes]:
        if self._lines is None:
            for line in self._body.split(b"\n"):
                yield line
            return
        async for line in self._lines:
            yield line

    async def aclose(self) -> None:
        if self._lines is not None and hasattr(self._lines, "aclose"):
            await self._lines.aclose()


class MockTransport:
    """In-process upstream; honours the backend's timeouts like a real one would."""

    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._served = 0
        self._tokens = 0

    async def aclose(self) -> None:
        return None

    def _headers(self) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "x-ratelimit-remaining-requests": str(max(0, 10_000 - self._served)),
            "x-ratelimit-remaining-tokens": str(max(0, 10_000_000 - self._tokens)),
        }

    async def send(self, request: UpstreamRequest) -> MockResponse:
        if request.method == "GET":  # the model list: what health probes ask for
            return MockResponse(200, self._headers(), b'{"object":"list","data":[]}')
        body = orjson.loads(request.body)
        model = str(body.get("model", ""))
        how = parse_behaviour(model)
        if how.hang:
            await asyncio.sleep(self._timeouts.read)
            raise UpstreamError(ErrorType.TIMEOUT, "upstream timed out")
        if how.delay_ms:
            await asyncio.sleep(how.delay_ms / 1000)
        if how.fail:
            return self._failure(how.fail, how.ctx)
        if how.malformed:
            return MockResponse(
                200,
                self._headers(),
                b"data: {this is not json\n" if request.stream else b"{this is not json",
            )
        if request.url.endswith("/embeddings"):
            return self._embeddings(body, model)
        return self._chat(body, model, how, request.stream)

    def _failure(self, status: int, ctx: bool) -> MockResponse:
        headers = self._headers()
        if status == 429:
            headers["retry-after"] = "1"
        kind = code = "rate_limit_exceeded" if status == 429 else "mock_failure"
        message = f"mock upstream failed with {status}"
        if status == 400 and ctx:  # OpenAI's shape for this error
            kind, code = "invalid_request_error", "context_length_exceeded"
            message = "This model's maximum context length is 4096 tokens (mock)."
        error = {"error": {"message": message, "type": kind, "code": code}}
        return MockResponse(status, headers, orjson.dumps(error))

    def _usage(self, body: Mapping[str, Any], how: Behaviour, output: int) -> dict[str, Any]:
        prompt = estimate_prompt_tokens(body.get("messages"))
        self._served += 1
        self._tokens += prompt + output
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": prompt // 2 if how.cache else 0},
            "completion_tokens_details": {"reasoning_tokens": min(how.reasoning, output)},
        }

    def _embeddings(self, body: Mapping[str, Any], model: str) -> MockResponse:
        raw = body.get("input")
        items = raw if isinstance(raw, list) and not all(isinstance(v, int) for v in raw) else [raw]
        prompt = estimate_input_tokens(raw)
        self._served += 1
        self._tokens += prompt
        data = [
            {"object": "embedding", "index": i, "embedding": [((i + j) % 7) / 7 for j in range(8)]}
            for i in range(len(items))
        ]
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return MockResponse(200, self._headers(), orjson.dumps(payload))

    def _chat(
        self, body: Mapping[str, Any], model: str, how: Behaviour, stream: bool
    ) -> MockResponse:
        words = answer_words(body)
        usage = self._usage(body, how, len(words))
        ident = f"chatcmpl-mock{self._served}"
        created = int(time.time())
        if not stream:
            message = {"role": "assistant", "content": " ".join(words)}
            payload = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(how)}],
                "usage": usage,
            }
            return MockResponse(200, self._headers(), orjson.dumps(payload))
        headers = {**self._headers(), "content-type": "text/event-stream"}
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        lines = self._stream(base, words, usage if with_usage else None, how)
        return MockResponse(200, headers, lines=lines)

    async def _stream(
        self, base: dict[str, Any], words: list[str], usage: dict[str, Any] | None, how: Behaviour
    ) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice]})

        yield chunk({"role": "assistant", "content": ""})
        yield b""
        for i, word in enumerate(words):
            if how.hang_after is not None and i >= how.hang_after:
                await asyncio.sleep(self._timeouts.stream_idle)
                raise UpstreamError(ErrorType.TIMEOUT, "upstream stream went idle")
            if how.drop_after is not None and i >= how.drop_after:
                raise UpstreamError(ErrorType.NETWORK, "upstream connection broke mid-response")
            if how.chunk_delay_ms:
                await asyncio.sleep(how.chunk_delay_ms / 1000)
            yield chunk({"content": word if i == 0 else " " + word})
            yield b""
        yield chunk({}, _finish_reason(how))
        yield b""
        if usage is not None:
            yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage})
            yield b""
        yield b"data: [DONE]"
        yield b""
